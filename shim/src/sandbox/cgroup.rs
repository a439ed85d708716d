//! A host cgroup per sandbox, holding every host process of the sandbox (the
//! VMM, virtiofsd, the vsock backend) and bounding them together: memory to
//! the VM's size plus the VMM's own overhead, CPU to the VM's vCPUs plus an
//! overhead share. It is also how the sandbox's processes are found and
//! killed, whatever they forked (virtiofsd's sandbox forks a child in a PID
//! namespace of its own).
//!
//! Hosts mount cgroups three ways: only cgroup v2 (`/sys/fs/cgroup`), only
//! v1, or both ("hybrid": v1 controllers, and a v2 tree at
//! `/sys/fs/cgroup/unified` with none). The sandbox gets a directory
//! `<parent>/<sandbox-id>` in the v2 tree, if there is one, and in each v1
//! hierarchy of a controller it sets a limit with (memory, cpu); limits go
//! wherever their controller is.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sys::mount::MountEntry;

/// The period CPU limits are expressed in.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "No cgroup hierarchy is mounted (looked for cgroup2 and cgroup v1 in /proc/self/mountinfo)"
    )]
    NoHierarchy,
    #[error("Reading the mount table: {0}")]
    MountTable(#[source] io::Error),
    #[error("Creating the cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
}

/// What a sandbox's host processes may use together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    /// CPU time per [`CPU_PERIOD_US`], in microseconds (100000 = one CPU).
    pub cpu_quota_us: u64,
}

impl CgroupLimits {
    /// `memory_mib` MiB and `millicpus` thousandths of a CPU.
    pub fn new(memory_mib: u64, millicpus: u64) -> Self {
        CgroupLimits {
            memory_bytes: memory_mib << 20,
            cpu_quota_us: millicpus * CPU_PERIOD_US / 1000,
        }
    }
}

/// Where each kind of cgroup lives on this host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hierarchies {
    /// The cgroup2 mount, with the controllers it has.
    pub unified: Option<(PathBuf, Vec<String>)>,
    /// v1 mounts of the memory and cpu controllers.
    pub memory_v1: Option<PathBuf>,
    pub cpu_v1: Option<PathBuf>,
}

impl Hierarchies {
    pub fn detect() -> Result<Self, CgroupError> {
        let table = crate::sys::mount::mount_table().map_err(CgroupError::MountTable)?;
        let mut found = Self::from_mounts(&table, |path| {
            std::fs::read_to_string(path.join("cgroup.controllers")).unwrap_or_default()
        });
        if found.unified.is_none() && found.memory_v1.is_none() && found.cpu_v1.is_none() {
            return Err(CgroupError::NoHierarchy);
        }
        found.memory_v1 = found.memory_v1.filter(|p| p.exists());
        Ok(found)
    }

    /// The hierarchies in a mount table; `controllers` reads a cgroup2
    /// mount's `cgroup.controllers`. v1 mounts are told apart by their
    /// super options, which name their controllers (the mount table's last
    /// field).
    fn from_mounts(table: &[MountEntry], controllers: impl Fn(&Path) -> String) -> Self {
        let mut found = Hierarchies::default();
        for mount in table {
            match mount.fstype.as_str() {
                "cgroup2" if found.unified.is_none() => {
                    let list = controllers(&mount.mount_point)
                        .split_whitespace()
                        .map(String::from)
                        .collect();
                    found.unified = Some((mount.mount_point.clone(), list));
                }
                "cgroup" => {
                    let options: Vec<&str> = mount.super_options.split(',').collect();
                    if options.contains(&"memory") && found.memory_v1.is_none() {
                        found.memory_v1 = Some(mount.mount_point.clone());
                    }
                    if options.contains(&"cpu") && found.cpu_v1.is_none() {
                        found.cpu_v1 = Some(mount.mount_point.clone());
                    }
                }
                _ => {}
            }
        }
        found
    }
}

/// The cgroup directories of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxCgroup {
    /// In the cgroup2 tree (membership, `cgroup.kill`, and limits of the
    /// controllers it has).
    unified: Option<PathBuf>,
    memory_v1: Option<PathBuf>,
    cpu_v1: Option<PathBuf>,
}

impl SandboxCgroup {
    /// The sandbox `id`'s cgroup under `parent` in `hierarchies`, whether
    /// or not it exists.
    pub fn at(hierarchies: &Hierarchies, parent: &str, id: &str) -> Self {
        let dir = |root: &Path| root.join(parent).join(id);
        SandboxCgroup {
            unified: hierarchies.unified.as_ref().map(|(root, _)| dir(root)),
            memory_v1: hierarchies.memory_v1.as_deref().map(dir),
            cpu_v1: hierarchies.cpu_v1.as_deref().map(dir),
        }
    }

    /// Creates the sandbox's cgroups with `limits`. On an error, what was
    /// created is removed again.
    pub fn create(
        hierarchies: &Hierarchies,
        parent: &str,
        id: &str,
        limits: CgroupLimits,
    ) -> Result<Self, CgroupError> {
        let cgroup = Self::at(hierarchies, parent, id);
        match cgroup.make(hierarchies, limits) {
            Ok(()) => Ok(cgroup),
            Err(err) => {
                cgroup.remove_dirs();
                Err(err)
            }
        }
    }

    fn make(&self, hierarchies: &Hierarchies, limits: CgroupLimits) -> Result<(), CgroupError> {
        if let (Some(dir), Some((root, controllers))) = (&self.unified, &hierarchies.unified) {
            let wanted: Vec<&str> = ["memory", "cpu"]
                .into_iter()
                .filter(|c| controllers.iter().any(|have| have == c))
                .collect();
            // Enable them for the children of the root and of the parent.
            let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
            let parent = dir.parent().expect("a sandbox cgroup has a parent");
            make_dir(parent)?;
            if !wanted.is_empty() {
                for at in [root.as_path(), parent] {
                    write(&at.join("cgroup.subtree_control"), enable.trim())?;
                }
            }
            make_dir(dir)?;
            if wanted.contains(&"memory") {
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                write(&dir.join("memory.swap.max"), "0").ok();
            }
            if wanted.contains(&"cpu") {
                let max = format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us);
                write(&dir.join("cpu.max"), &max)?;
            }
        }
        if let Some(dir) = &self.memory_v1 {
            make_dir(dir.parent().expect("a sandbox cgroup has a parent"))?;
            make_dir(dir)?;
            write(
                &dir.join("memory.limit_in_bytes"),
                &limits.memory_bytes.to_string(),
            )?;
        }
        if let Some(dir) = &self.cpu_v1 {
            make_dir(dir.parent().expect("a sandbox cgroup has a parent"))?;
            make_dir(dir)?;
            write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(
                &dir.join("cpu.cfs_quota_us"),
                &limits.cpu_quota_us.to_string(),
            )?;
        }
        Ok(())
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.unified, &self.memory_v1, &self.cpu_v1]
            .into_iter()
            .flatten()
    }

    /// `cgroup.procs` of each of the sandbox's cgroups: a child opens each
    /// for writing and writes "0" to it before it execs
    /// (`sys::process::join_cgroups`).
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs().map(|dir| dir.join("cgroup.procs")).collect()
    }

    /// [`Self::procs_paths`], open for writing.
    pub fn procs_files(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.procs_paths()
            .into_iter()
            .map(|path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| CgroupError::Write {
                        path,
                        value: "0".into(),
                        source,
                    })
            })
            .collect()
    }

    /// The processes in the sandbox's cgroups.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs()
            .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The cgroup directories that exist.
    pub fn existing_dirs(&self) -> Vec<PathBuf> {
        self.dirs().filter(|d| d.exists()).cloned().collect()
    }

    /// Kills every process in the sandbox's cgroups, then removes them,
    /// waiting (a bounded time) for the kernel to let go of each.
    pub async fn destroy(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            self.kill_all();
            self.remove_dirs();
            let left = self.existing_dirs();
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(cgroups = ?left, pids = ?self.pids(), "sandbox cgroups stayed");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill_all(&self) {
        if let Some(dir) = &self.unified {
            if write(&dir.join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    fn remove_dirs(&self) {
        for dir in self.dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: path.to_owned(),
            source: err,
        }),
        _ => Ok(()),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(point: &str, fstype: &str, options: &str) -> MountEntry {
        MountEntry {
            id: 1,
            mount_point: point.into(),
            read_only: false,
            fstype: fstype.into(),
            super_options: options.into(),
        }
    }

    #[test]
    fn hybrid_hosts_limit_through_v1_and_group_through_v2() {
        let table = vec![
            mount("/sys/fs/cgroup/cpu", "cgroup", "rw,cpu"),
            mount("/sys/fs/cgroup/cpuacct", "cgroup", "rw,cpuacct"),
            mount("/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
            mount("/sys/fs/cgroup/unified", "cgroup2", "rw"),
        ];
        let found = Hierarchies::from_mounts(&table, |_| "hugetlb".into());
        assert_eq!(
            found,
            Hierarchies {
                unified: Some(("/sys/fs/cgroup/unified".into(), vec!["hugetlb".into()])),
                memory_v1: Some("/sys/fs/cgroup/memory".into()),
                cpu_v1: Some("/sys/fs/cgroup/cpu".into()),
            }
        );
        let cgroup = SandboxCgroup::at(&found, "hull", "pod1");
        assert_eq!(
            cgroup.dirs().cloned().collect::<Vec<_>>(),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified/hull/pod1"),
                "/sys/fs/cgroup/memory/hull/pod1".into(),
                "/sys/fs/cgroup/cpu/hull/pod1".into(),
            ]
        );
        // cpu and cpuacct mounted together on most v1 hosts.
        let joint = vec![mount(
            "/sys/fs/cgroup/cpu,cpuacct",
            "cgroup",
            "rw,cpu,cpuacct",
        )];
        let found = Hierarchies::from_mounts(&joint, |_| String::new());
        assert_eq!(found.cpu_v1, Some("/sys/fs/cgroup/cpu,cpuacct".into()));
    }

    #[test]
    fn limits_are_in_bytes_and_a_quota_per_period() {
        assert_eq!(
            CgroupLimits::new(384, 1250),
            CgroupLimits {
                memory_bytes: 384 << 20,
                cpu_quota_us: 125_000,
            }
        );
    }

    // Needs root and the host's cgroups, as the suite does.
    #[tokio::test]
    async fn a_sandbox_cgroup_holds_limits_and_its_processes_die_with_it() {
        let hierarchies = Hierarchies::detect().unwrap();
        let id = format!("test-{}", std::process::id());
        let limits = CgroupLimits::new(300, 1500);
        let cgroup = SandboxCgroup::create(&hierarchies, "hull-test", &id, limits).unwrap();
        let mut command = tokio::process::Command::new("sleep");
        command.arg("60");
        crate::sys::process::join_cgroups(&mut command, cgroup.procs_files().unwrap());
        let mut child = command.spawn().unwrap();
        let pid = child.id().unwrap();
        assert_eq!(cgroup.pids(), vec![pid]);
        let procs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(procs.contains(&format!("/hull-test/{id}")), "{procs}");
        if let Some(memory) = &cgroup.memory_v1 {
            let limit = std::fs::read_to_string(memory.join("memory.limit_in_bytes")).unwrap();
            assert_eq!(limit.trim(), (300u64 << 20).to_string());
        }
        if let Some(cpu) = &cgroup.cpu_v1 {
            let quota = std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap();
            assert_eq!(quota.trim(), "150000");
        }
        cgroup.destroy().await;
        let status = child.wait().await.unwrap();
        assert!(!status.success());
        assert!(cgroup.existing_dirs().is_empty());
        for dir in SandboxCgroup::at(&hierarchies, "hull-test", "x").dirs() {
            let _ = std::fs::remove_dir(dir.parent().unwrap());
        }
    }
}
