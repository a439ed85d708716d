//! The jailer step (see docs/vmm.md, "Jail"). hull-vmm opens every host
//! resource it needs first, then, while it still has a single thread, it
//! confines itself:
//!
//! 1. its own mount namespace, with `/` made recursively private so nothing
//!    it mounts or unmounts reaches the host;
//! 2. the jail directory bind-mounted onto itself and made the root with
//!    `pivot_root`; the old root is detached, so only the jail directory is
//!    left to see;
//! 3. an empty bounding set, then no supplementary groups and the given
//!    non-root gid and uid, which also empties the permitted and effective
//!    capability sets; the parent-death signal, which the kernel clears on
//!    that change, is set again.
//!
//! The cgroup is joined earlier, before the VM is built, so that guest
//! memory and KVM's own allocations are charged to it.
//!
//! Every thread hull-vmm starts afterwards inherits all of this, then drops
//! what is left of its capabilities and installs its seccomp filter
//! (`crate::seccomp`). A thread started before the jail would stay outside
//! it: the mount namespace, root and credentials are per thread.
//!
//! Paths: hull-vmm works from the jail directory from the start, and names
//! the sockets it keeps using (the hybrid-vsock socket and its
//! `<uds>_<port>` siblings, the API socket) relative to it, so the same name
//! reaches the same file before and after the pivot. Every other path is
//! made absolute and opened before the jail; that includes virtio-fs's
//! vhost-user sockets, which are connected while the VM is built and never
//! reconnected.

use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
use nix::unistd::{chdir, fchdir, pivot_root, setgroups, setresgid, setresuid, Gid, Uid};

use crate::config::{JailConfig, VmConfig};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("Jail directory {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Jail directory {0} is not a directory")]
    RootNotDirectory(PathBuf),
    #[error("Jail cgroup {path} (the caller creates it): {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Jail cgroup {0} is not a cgroup v2 directory")]
    NotCgroup2(PathBuf),
    #[error("Moving hull-vmm into the cgroup {path}: {source}")]
    JoinCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "The {what} {path} is not inside the jail directory {root}: hull-vmm uses it after entering the jail"
    )]
    OutsideJail {
        what: &'static str,
        path: PathBuf,
        root: PathBuf,
    },
    #[error("The {what} {path}: {source}")]
    Path {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Entering the jail {root}: {threads} threads are running, and a thread started before the jail would stay outside it")]
    Threads { root: PathBuf, threads: usize },
    #[error("Entering the jail {root}: {step}")]
    Enter {
        root: PathBuf,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A jail checked against the host, ready to be entered.
#[derive(Debug, Clone)]
pub struct Jail {
    /// Canonical: no symbolic links, so paths can be compared with it.
    root: PathBuf,
    uid: Uid,
    gid: Gid,
    cgroup: Option<PathBuf>,
}

impl Jail {
    /// Checks that the root is a directory and the cgroup, if any, a cgroup
    /// v2 directory that exists.
    pub fn new(config: &JailConfig) -> Result<Jail, JailError> {
        let root = config
            .root
            .canonicalize()
            .map_err(|source| JailError::Root {
                path: config.root.clone(),
                source,
            })?;
        if !root.is_dir() {
            return Err(JailError::RootNotDirectory(config.root.clone()));
        }
        let cgroup = match &config.cgroup {
            Some(path) => Some(check_cgroup(path)?),
            None => None,
        };
        Ok(Jail {
            root,
            uid: Uid::from_raw(config.uid),
            gid: Gid::from_raw(config.gid),
            cgroup,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Rewrites the paths of `config` for a VMM that works from the jail
    /// directory: the vsock socket relative to it (it must be inside),
    /// everything opened before the jail absolute. Every path of
    /// `VmConfig` is listed here: a device that brings one adds it.
    pub fn relocate(&self, config: &mut VmConfig) -> Result<(), JailError> {
        let absolute = |what, path: &mut PathBuf| -> Result<(), JailError> {
            *path = std::path::absolute(&*path).map_err(|source| JailError::Path {
                what,
                path: path.clone(),
                source,
            })?;
            Ok(())
        };
        absolute("kernel", &mut config.boot.kernel)?;
        if let Some(initrd) = &mut config.boot.initrd {
            absolute("initrd", initrd)?;
        }
        if let Some(log) = &mut config.serial.log {
            absolute("serial log", log)?;
        }
        for block in &mut config.block {
            absolute("block image", &mut block.path)?;
        }
        // Connected while the VM is built and never again: a session with virtiofsd that
        // ends stays closed (the device then needs a reset it cannot get), so after the
        // jail the path only names the socket in messages.
        for fs in &mut config.fs {
            absolute("virtio-fs socket", &mut fs.socket)?;
        }
        if let Some(vsock) = &mut config.vsock {
            vsock.uds_path = self.inside("vsock socket", &vsock.uds_path)?;
        }
        Ok(())
    }

    /// `path`, which must be inside the jail directory, relative to it.
    /// Its directory must exist; the file itself need not.
    pub fn inside(&self, what: &'static str, path: &Path) -> Result<PathBuf, JailError> {
        let outside = || JailError::OutsideJail {
            what,
            path: path.to_owned(),
            root: self.root.clone(),
        };
        let absolute = std::path::absolute(path).map_err(|source| JailError::Path {
            what,
            path: path.to_owned(),
            source,
        })?;
        let name = match absolute.components().next_back() {
            Some(Component::Normal(name)) => name,
            _ => return Err(outside()),
        };
        let parent = absolute.parent().ok_or_else(outside)?;
        let parent = parent.canonicalize().map_err(|source| JailError::Path {
            what,
            path: path.to_owned(),
            source,
        })?;
        let relative = parent.strip_prefix(&self.root).map_err(|_| outside())?;
        Ok(relative.join(name))
    }

    /// Moves this process into the jail's cgroup, if it has one.
    pub fn join_cgroup(&self) -> Result<(), JailError> {
        let Some(cgroup) = &self.cgroup else {
            return Ok(());
        };
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string()).map_err(
            |source| JailError::JoinCgroup {
                path: cgroup.clone(),
                source,
            },
        )
    }

    /// Makes the jail directory the working directory, which the relocated
    /// socket paths are relative to.
    pub fn work_from_root(&self) -> Result<(), JailError> {
        chdir(&self.root).map_err(|e| self.failed("chdir", e.into()))
    }

    /// Enters the jail: own mount namespace, the jail directory as root,
    /// the non-root uid and gid. Must run before any thread is started.
    pub fn enter(&self) -> Result<(), JailError> {
        let threads = thread_count().map_err(|e| self.failed("counting threads", e))?;
        if threads != 1 {
            return Err(JailError::Threads {
                root: self.root.clone(),
                threads,
            });
        }
        self.pivot().map_err(|(step, e)| self.failed(step, e))?;
        crate::seccomp::drop_bounding_set()
            .map_err(|e| self.failed("dropping the bounding set", e))?;
        let parent_death =
            ParentDeathSignal::get().map_err(|e| self.failed("PR_GET_PDEATHSIG", e))?;
        setgroups(&[]).map_err(|e| self.failed("setgroups", e.into()))?;
        setresgid(self.gid, self.gid, self.gid).map_err(|e| self.failed("setgid", e.into()))?;
        setresuid(self.uid, self.uid, self.uid).map_err(|e| self.failed("setuid", e.into()))?;
        parent_death
            .restore()
            .map_err(|e| self.failed("PR_SET_PDEATHSIG", e))?;
        Ok(())
    }

    fn pivot(&self) -> Result<(), (&'static str, std::io::Error)> {
        let step = |step| move |e: nix::Error| (step, std::io::Error::from(e));
        unshare(CloneFlags::CLONE_NEWNS).map_err(step("unshare(CLONE_NEWNS)"))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(step("making / private"))?;
        // pivot_root wants the new root to be a mount point.
        mount(
            Some(&self.root),
            &self.root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(step("bind-mounting the jail directory"))?;
        let old_root = std::fs::File::open("/").map_err(|e| ("opening /", e))?;
        chdir(&self.root).map_err(step("chdir into the bind mount"))?;
        // The old root ends up stacked on the new one, so no directory for
        // it is needed inside the jail; it is detached from there.
        pivot_root(".", ".").map_err(step("pivot_root"))?;
        fchdir(old_root.as_raw_fd()).map_err(step("fchdir to the old root"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the old root"))?;
        drop(old_root);
        chdir("/").map_err(step("chdir /"))?;
        Ok(())
    }

    fn failed(&self, step: &'static str, source: std::io::Error) -> JailError {
        JailError::Enter {
            root: self.root.clone(),
            step,
            source,
        }
    }
}

/// The signal the caller asked for when its parent dies (`PR_SET_PDEATHSIG`, as Hull's shim
/// sets it so that a killed shim cannot leak its VMs). The kernel clears it when the
/// process's credentials change, so the jail reads it before `setresuid` and sets it again
/// after.
struct ParentDeathSignal {
    signal: libc::c_int,
    parent: nix::unistd::Pid,
}

impl ParentDeathSignal {
    fn get() -> std::io::Result<Self> {
        let mut signal: libc::c_int = 0;
        // SAFETY: PR_GET_PDEATHSIG writes one int, which outlives the call.
        if unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut signal as *mut libc::c_int) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ParentDeathSignal {
            signal,
            parent: nix::unistd::getppid(),
        })
    }

    /// Sets the signal again; if the parent died meanwhile, delivers it now, as the kernel
    /// would have.
    fn restore(&self) -> std::io::Result<()> {
        if self.signal == 0 {
            return Ok(());
        }
        // SAFETY: PR_SET_PDEATHSIG takes the signal number by value.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, self.signal as libc::c_ulong) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if nix::unistd::getppid() != self.parent {
            // SAFETY: raise() with the signal the caller chose.
            unsafe { libc::raise(self.signal) };
        }
        Ok(())
    }
}

/// The canonical path of the cgroup v2 directory `path`.
fn check_cgroup(path: &Path) -> Result<PathBuf, JailError> {
    let error = |source| JailError::Cgroup {
        path: path.to_owned(),
        source,
    };
    let canonical = path.canonicalize().map_err(error)?;
    let fs = statfs(&canonical).map_err(|e| error(e.into()))?;
    if fs.filesystem_type() != CGROUP2_SUPER_MAGIC || !canonical.join("cgroup.procs").is_file() {
        return Err(JailError::NotCgroup2(path.to_owned()));
    }
    Ok(canonical)
}

/// Threads of this process that run hull-vmm's code. KVM's own workers
/// (`kvm-nx-lpage-recovery` on recent kernels) are tasks of the process
/// too, but they never return to user space.
fn thread_count() -> std::io::Result<usize> {
    let mut count = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path().join("stat");
        let stat = std::fs::read_to_string(&path)?;
        let user = is_user_thread(&stat)
            .ok_or_else(|| std::io::Error::other(format!("unreadable {}", path.display())))?;
        count += usize::from(user);
    }
    Ok(count)
}

/// Whether the task whose `/proc/<pid>/task/<tid>/stat` line is `stat` is a
/// thread of the program rather than a kernel worker; `None` when the line
/// cannot be read.
fn is_user_thread(stat: &str) -> Option<bool> {
    // Field 9, after the parenthesised name, holds the task's flags.
    let (_, rest) = stat.rsplit_once(')')?;
    let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
    Some(flags & PF_USER_WORKER == 0)
}

/// A kernel worker living in a user process (`include/linux/sched.h`).
const PF_USER_WORKER: u64 = 0x0000_4000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootConfig, SerialConfig, VsockDeviceConfig};

    fn jail(root: &Path) -> Jail {
        Jail::new(&JailConfig {
            root: root.to_owned(),
            uid: 65534,
            gid: 65534,
            cgroup: None,
        })
        .unwrap()
    }

    #[test]
    fn a_missing_or_non_directory_root_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = |root: PathBuf| JailConfig {
            root,
            uid: 1,
            gid: 1,
            cgroup: None,
        };
        let missing = dir.path().join("missing");
        let err = Jail::new(&config(missing.clone())).unwrap_err().to_string();
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = Jail::new(&config(file.clone())).unwrap_err().to_string();
        assert!(
            err.contains(file.to_str().unwrap()) && err.contains("not a directory"),
            "{err}"
        );
    }

    #[test]
    fn a_cgroup_must_exist_on_cgroup2() {
        let dir = tempfile::tempdir().unwrap();
        let config = |cgroup: PathBuf| JailConfig {
            root: dir.path().to_owned(),
            uid: 1,
            gid: 1,
            cgroup: Some(cgroup),
        };
        let missing = dir.path().join("no-such-cgroup");
        let err = Jail::new(&config(missing.clone())).unwrap_err().to_string();
        assert!(
            err.contains(missing.to_str().unwrap()) && err.contains("caller creates"),
            "{err}"
        );
        // A plain directory, even with a file named like the cgroup's.
        std::fs::write(dir.path().join("cgroup.procs"), b"").unwrap();
        let err = Jail::new(&config(dir.path().to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a cgroup v2 directory"), "{err}");
    }

    #[test]
    fn sockets_become_relative_to_the_jail_and_must_be_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sandbox");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let jail = jail(&root);
        assert_eq!(
            jail.inside("vsock socket", &root.join("v.sock")).unwrap(),
            PathBuf::from("v.sock")
        );
        assert_eq!(
            jail.inside("API socket", &root.join("sub/../sub/api.sock"))
                .unwrap(),
            PathBuf::from("sub/api.sock")
        );
        // Through a symbolic link that leads inside.
        std::os::unix::fs::symlink(&root, dir.path().join("link")).unwrap();
        assert_eq!(
            jail.inside("vsock socket", &dir.path().join("link/v.sock"))
                .unwrap(),
            PathBuf::from("v.sock")
        );
        for outside in [
            dir.path().join("v.sock"),
            root.join("../v.sock"),
            root.clone(),
            PathBuf::from("/"),
        ] {
            let err = jail.inside("vsock socket", &outside).unwrap_err();
            assert!(
                matches!(err, JailError::OutsideJail { .. }),
                "{}: {err}",
                outside.display()
            );
            let message = err.to_string();
            assert!(
                message.contains("vsock socket") && message.contains(root.to_str().unwrap()),
                "{message}"
            );
        }
        let err = jail
            .inside("API socket", &root.join("missing/api.sock"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing/api.sock"), "{err}");
    }

    #[test]
    fn relocation_keeps_host_files_absolute_and_moves_the_socket_in() {
        let dir = tempfile::tempdir().unwrap();
        let jail = jail(dir.path());
        let mut config = VmConfig {
            machine: Default::default(),
            boot: BootConfig {
                kernel: "vmlinux".into(),
                initrd: Some("/boot/initrd".into()),
                cmdline: String::new(),
            },
            serial: SerialConfig {
                log: Some("console.log".into()),
            },
            vsock: Some(VsockDeviceConfig {
                guest_cid: 3,
                uds_path: dir.path().join("v.sock"),
            }),
            block: vec![crate::config::BlockDeviceConfig {
                path: "disk.raw".into(),
                read_only: false,
            }],
            fs: vec![crate::config::FsDeviceConfig {
                socket: "virtiofsd.sock".into(),
                tag: "share".into(),
                queue_size: crate::config::DEFAULT_FS_QUEUE_SIZE,
            }],
            net: Vec::new(),
            jail: None,
        };
        jail.relocate(&mut config).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(config.boot.kernel, cwd.join("vmlinux"));
        assert_eq!(config.boot.initrd, Some("/boot/initrd".into()));
        assert_eq!(config.serial.log, Some(cwd.join("console.log")));
        assert_eq!(config.block[0].path, cwd.join("disk.raw"));
        assert_eq!(config.fs[0].socket, cwd.join("virtiofsd.sock"));
        assert_eq!(config.vsock.unwrap().uds_path, PathBuf::from("v.sock"));
    }

    #[test]
    fn kvm_workers_are_not_threads_of_the_vmm() {
        // A vCPU thread (flags of a user thread) and KVM's NX huge page
        // worker (PF_USER_WORKER); names may hold spaces and parentheses.
        let vcpu = "41 (vcpu 0 (x)) S 1 41 41 0 -1 4194368 92 0 0 0";
        let worker = "42 (kvm-nx-lpage-re) S 1 41 41 0 -1 2113600 0 0 0 0";
        assert_eq!(is_user_thread(vcpu), Some(true));
        assert_eq!(is_user_thread(worker), Some(false));
        assert_eq!(is_user_thread("43 (cut"), None);
        assert!(thread_count().unwrap() >= 1);
    }
}
