//! Reading a container's cgroup v2 files: stats, processes and OOM kills.
//! libcontainer creates and removes the cgroup; the agent only makes its
//! parents and reads it.

use std::path::{Path, PathBuf};

use hull_protocols::agent::{CpuStats, MemoryStats, PidsStats, StatsContainerResponse};

/// Where cgroup v2 is mounted, in the guest and in a host-mode test.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The directory of the cgroup at `cgroups_path` (an OCI `linux.cgroupsPath`).
pub fn cgroup_dir(cgroups_path: &Path) -> PathBuf {
    Path::new(CGROUP_ROOT).join(cgroups_path.strip_prefix("/").unwrap_or(cgroups_path))
}

/// Makes the directories above the cgroup `dir`. libcgroups makes each
/// missing directory of a cgroup path with exists() and then create_dir, so
/// two containers created at once under a new parent (`hull`, a pod's) race
/// to make it and the loser fails with "File exists"; create_dir_all takes
/// a directory someone else made as made.
pub fn create_parents(dir: &Path) -> std::io::Result<()> {
    match dir.parent() {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
}

/// Parses a flat-keyed file (`cpu.stat`, `memory.stat`, `memory.events`).
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// Parses a single-value file; "max" (no limit) is 0.
fn single(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

pub fn stats(dir: &Path) -> StatsContainerResponse {
    let cpu = read(dir, "cpu.stat");
    let memory = read(dir, "memory.stat");
    StatsContainerResponse {
        cpu: Some(CpuStats {
            usage_usec: keyed(&cpu, "usage_usec"),
            user_usec: keyed(&cpu, "user_usec"),
            system_usec: keyed(&cpu, "system_usec"),
            nr_periods: keyed(&cpu, "nr_periods"),
            nr_throttled: keyed(&cpu, "nr_throttled"),
            throttled_usec: keyed(&cpu, "throttled_usec"),
            ..Default::default()
        })
        .into(),
        memory: Some(MemoryStats {
            usage_bytes: single(&read(dir, "memory.current")),
            limit_bytes: single(&read(dir, "memory.max")),
            anon_bytes: keyed(&memory, "anon"),
            file_bytes: keyed(&memory, "file"),
            inactive_file_bytes: keyed(&memory, "inactive_file"),
            oom_kills: oom_kills(dir),
            ..Default::default()
        })
        .into(),
        pids: Some(PidsStats {
            current: single(&read(dir, "pids.current")),
            limit: single(&read(dir, "pids.max")),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The number of processes the OOM killer has killed in this cgroup.
pub fn oom_kills(dir: &Path) -> u64 {
    oom_kills_in(&read(dir, "memory.events"))
}

/// The `oom_kill` count of a `memory.events` text.
pub fn oom_kills_in(memory_events: &str) -> u64 {
    keyed(memory_events, "oom_kill")
}

/// Every process in the cgroup and its descendants.
pub fn pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    collect_pids(dir, &mut pids);
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn collect_pids(dir: &Path, pids: &mut Vec<u32>) {
    pids.extend(
        read(dir, "cgroup.procs")
            .lines()
            .filter_map(|line| line.trim().parse::<u32>().ok()),
    );
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&entry.path(), pids);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        write("memory.current", "4096\n");
        write("memory.max", "max\n");
        write("memory.stat", "anon 1024\nfile 2048\ninactive_file 7\n");
        write("memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n");
        write("pids.current", "3\n");
        write("pids.max", "100\n");
        write("cgroup.procs", "12\n7\n");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        write("sub/cgroup.procs", "9\n");

        let stats = stats(dir.path());
        assert_eq!(stats.cpu.usage_usec, 1500);
        assert_eq!(stats.cpu.system_usec, 500);
        assert_eq!(stats.memory.usage_bytes, 4096);
        assert_eq!(stats.memory.limit_bytes, 0);
        assert_eq!(stats.memory.file_bytes, 2048);
        assert_eq!(stats.memory.oom_kills, 1);
        assert_eq!(stats.pids.current, 3);
        assert_eq!(stats.pids.limit, 100);
        assert_eq!(pids(dir.path()), vec![7, 9, 12]);
    }

    #[test]
    fn cgroup_paths_are_under_the_root() {
        assert_eq!(
            cgroup_dir(Path::new("/hull/c1")),
            Path::new("/sys/fs/cgroup/hull/c1")
        );
        assert_eq!(
            cgroup_dir(Path::new("pod/c1")),
            Path::new("/sys/fs/cgroup/pod/c1")
        );
    }
}
