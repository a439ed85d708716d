//! Where the machine's CPU time went while something ran: the busy time of
//! all CPUs (`/proc/stat`), and each process's own CPU time
//! (`/proc/PID/stat`) summed by process name, for the processes alive when
//! it ended. Processes that ended in between count only in the busy time.

use std::collections::HashMap;
use std::time::Duration;

/// The CPU counters at one moment.
#[derive(Debug)]
pub struct CpuSnapshot {
    /// Ticks all CPUs spent in anything but idle and I/O wait.
    busy_ticks: u64,
    /// Each process, by pid.
    processes: HashMap<u32, Process>,
}

#[derive(Debug, Clone, PartialEq)]
struct Process {
    /// Its name, kernel threads' without what follows a `/` (a kworker's
    /// changes with the work it runs).
    name: String,
    /// When it started, in ticks after boot: a reused pid has another.
    start: u64,
    /// Its own user and system time, in ticks.
    ticks: u64,
}

/// CPU time between two snapshots.
#[derive(Debug)]
pub struct CpuUsage {
    /// What all CPUs were busy for.
    pub busy: Duration,
    /// Process names with the CPU time their processes took, most first.
    pub by_name: Vec<(String, Duration)>,
}

impl CpuSnapshot {
    pub fn take() -> Self {
        let busy_ticks = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| busy_ticks_in(&stat))
            .unwrap_or(0);
        let processes = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                Some((pid, process_in(&stat)?))
            })
            .collect();
        CpuSnapshot {
            busy_ticks,
            processes,
        }
    }

    /// The CPU time from `before` to this snapshot. A process that started
    /// in between (also on a reused pid) counts from its start.
    pub fn since(&self, before: &CpuSnapshot) -> CpuUsage {
        let ticks = |n: u64| Duration::from_secs_f64(n as f64 / ticks_per_second());
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        for (pid, now) in &self.processes {
            let then = match before.processes.get(pid) {
                Some(then) if then.start == now.start => then.ticks.min(now.ticks),
                _ => 0,
            };
            *by_name.entry(&now.name).or_default() += now.ticks - then;
        }
        let mut by_name: Vec<(String, Duration)> = by_name
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(|(name, n)| (name.to_owned(), ticks(n)))
            .collect();
        by_name.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        CpuUsage {
            busy: ticks(self.busy_ticks.saturating_sub(before.busy_ticks)),
            by_name,
        }
    }
}

impl CpuUsage {
    /// The `count` names that took most, as `26.3 s qemu-system-x86, ...`.
    pub fn top(&self, count: usize) -> String {
        let names: Vec<String> = self
            .by_name
            .iter()
            .take(count)
            .map(|(name, time)| format!("{:.1} s {name}", time.as_secs_f64()))
            .collect();
        names.join(", ")
    }
}

pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf takes a constant and has no side effects.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// The `cpu` line of `/proc/stat`: user, nice, system, irq, softirq and
/// steal (fields 1-3 and 6-8); idle and iowait are not busy.
fn busy_ticks_in(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some(
        [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&i| fields.get(i))
            .sum(),
    )
}

/// `/proc/PID/stat` split: the process's name, and its numeric field `n`
/// (counted as proc(5) does, from 1) for `n` from 3 on.
fn stat_fields(stat: &str) -> Option<(&str, impl Fn(usize) -> Option<u64> + '_)> {
    // The name, in parentheses, may hold spaces and parentheses: fields
    // count from after the last closing one (field 3 is the first there).
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, name) = head.split_once('(')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((name, move |n: usize| {
        fields.get(n.checked_sub(3)?)?.parse().ok()
    }))
}

/// A process's name, start and own user and system ticks, without its
/// reaped children's (`/proc/PID/stat` fields 2, 22, 14 and 15).
fn process_in(stat: &str) -> Option<Process> {
    let (name, field) = stat_fields(stat)?;
    let kernel_thread = field(9)? & KERNEL_THREAD != 0;
    let name = match name.split_once('/') {
        Some((base, _)) if kernel_thread => base,
        _ => name,
    };
    Some(Process {
        name: name.to_owned(),
        start: field(22)?,
        ticks: field(14)? + field(15)?,
    })
}

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags (field 9).
const KERNEL_THREAD: u64 = 0x0020_0000;

/// A process's user and system CPU time and its reaped children's, in clock
/// ticks (`/proc/PID/stat` fields 14 to 17).
pub fn cpu_ticks(pid: u32) -> u64 {
    cpu_ticks_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

fn cpu_ticks_in(stat: &str) -> u64 {
    stat_fields(stat).map_or(0, |(_, field)| (14..=17).filter_map(field).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A command name with a space and a parenthesis does not shift fields.
    const STAT: &str = "42 (a) b/1) S 1 2 3 4 5 6 7 8 9 10 100 20 3 4 20 0 1 0 777 1 2";

    #[test]
    fn process_and_machine_fields_are_found() {
        assert_eq!(cpu_ticks_in(STAT), 127);
        let process = |name: &str, ticks| Process {
            name: name.to_owned(),
            start: 777,
            ticks,
        };
        assert_eq!(process_in(STAT), Some(process("a) b/1", 120)));
        // A kernel thread (flags 0x208040) is named without its work.
        let kworker =
            "7 (kworker/u8:2-flush-254:0) I 2 0 0 0 -1 2129984 0 0 0 0 3 4 0 0 20 0 1 0 777 0 0";
        assert_eq!(process_in(kworker), Some(process("kworker", 7)));
        let stat = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 5 0 2 500 3 1 1 2 0 0\nintr 1\n";
        assert_eq!(busy_ticks_in(stat), Some(10 + 1 + 5 + 2 + 3 + 4));
    }

    #[test]
    fn usage_counts_new_processes_whole_and_sums_by_name() {
        let snapshot = |busy, processes: &[(u32, &str, u64, u64)]| CpuSnapshot {
            busy_ticks: busy,
            processes: processes
                .iter()
                .map(|&(pid, name, start, ticks)| {
                    let name = name.to_owned();
                    (pid, Process { name, start, ticks })
                })
                .collect(),
        };
        let second = ticks_per_second() as u64;
        let before = snapshot(
            100,
            &[(1, "qemu", 1, 50), (2, "shim", 1, 10), (3, "old", 1, 5)],
        );
        let after = snapshot(
            100 + 4 * second,
            &[
                (1, "qemu", 1, 50 + second),
                (2, "shim", 1, 10),
                (4, "qemu", 9, 2 * second),
                // A reused pid counts from the new process's start.
                (3, "new", 9, second),
            ],
        );
        let usage = after.since(&before);
        assert_eq!(usage.busy, Duration::from_secs(4));
        assert_eq!(
            usage.by_name,
            vec![
                ("qemu".to_owned(), Duration::from_secs(3)),
                ("new".to_owned(), Duration::from_secs(1)),
            ]
        );
        assert_eq!(usage.top(1), "3.0 s qemu");
    }

    #[test]
    fn this_process_is_in_a_snapshot() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0);
        }
        let snapshot = CpuSnapshot::take();
        assert!(snapshot.busy_ticks > 0);
        assert!(snapshot.processes[&std::process::id()].ticks > 0);
        assert!(cpu_ticks(std::process::id()) > 0);
    }
}
