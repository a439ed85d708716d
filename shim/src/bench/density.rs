//! What idle sandboxes cost the host (CPU time and memory, per sandbox),
//! and a container's stdout throughput beside a pipe inside its guest.

use std::path::Path;
use std::time::{Duration, Instant};

use super::cpu::{cpu_ticks, ticks_per_second};
use super::{sandbox_with_container, sandbox_with_container_writing, BenchError};
use crate::config::Config;
use crate::manager::StdioPaths;

/// What idle sandboxes cost the host, per sandbox: the mean over `pods`.
#[derive(Debug, Default)]
pub struct Idle {
    pub pods: usize,
    /// How long CPU time was counted.
    pub window: Duration,
    /// CPU time of the sandbox's host processes (VMM, virtiofsd, the vsock
    /// backend) in the window, as a share of one CPU.
    pub cpu_percent: f64,
    /// Proportional set size (shared pages split among their users), KiB.
    pub vmm_pss_kib: u64,
    /// The VMM's shared memory: the guest's RAM (a memfd) it touched.
    pub vmm_pss_shmem_kib: u64,
    /// The VMM's own anonymous memory (under QEMU/TCG, most of it the
    /// translation cache; then its heap and device buffers).
    pub vmm_pss_anon_kib: u64,
    pub helpers_pss_kib: u64,
}

/// The same bytes to the host through a container's stdout, and through a
/// pipe inside the guest.
#[derive(Debug)]
pub struct StdoutRatio {
    pub bytes: u64,
    pub to_host: Duration,
    pub in_guest: Duration,
}

/// A container's stdout throughput beside a pipe inside its guest: the
/// guest times `head -c BYTES /dev/zero` written to the container's stdout
/// (which the host reads from a FIFO, as containerd would, and drops) and
/// through a pipe to `cat` in the guest, from /proc/uptime (10 ms steps)
/// on stderr.
pub(super) async fn stdout_ratio(
    config: &Config,
    rootfs: &Path,
    bytes: u64,
) -> Result<StdoutRatio, BenchError> {
    use tokio::io::AsyncReadExt;
    let failed = |what: &str, e: std::io::Error| BenchError::Sandbox(format!("{what}: {e}"));
    // FIFOs, as containerd gives a container's stdio; this process reads
    // them as containerd would.
    let dir = std::env::temp_dir().join(format!("hull-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| failed("creating a FIFO directory", e))?;
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    for fifo in [&out, &err] {
        nix::unistd::mkfifo(
            fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(|e| failed("making a FIFO", e.into()))?;
    }
    // Opened read-write, so that no writer is needed yet.
    let receiver = |path: &Path| {
        tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(path)
            .map_err(|e| failed("opening a FIFO", e))
    };
    let mut out_rx = receiver(&out)?;
    let mut err_rx = receiver(&err)?;
    let drain =
        tokio::spawn(async move { tokio::io::copy(&mut out_rx, &mut tokio::io::sink()).await });
    let script = format!(
        "t() {{ read up _ < /proc/uptime; echo $up >&2; }}; \
         t; head -c {bytes} /dev/zero; t; head -c {bytes} /dev/zero | cat > /dev/null; t"
    );
    let id = format!("stdout-{}", std::process::id());
    let stdio = StdioPaths {
        stdout: out.display().to_string(),
        stderr: err.display().to_string(),
        ..Default::default()
    };
    let started =
        sandbox_with_container_writing(config, &id, rootfs, &["sh", "-c", &script], stdio).await;
    let marks = match started {
        Ok(manager) => {
            let exited = manager.wait(&id, "").await;
            // The three lines are in the FIFO once the process has ended.
            let mut text = String::new();
            let mut buf = [0u8; 256];
            while text.lines().count() < 3 {
                match tokio::time::timeout(Duration::from_secs(10), err_rx.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => text.push_str(&String::from_utf8_lossy(&buf[..n])),
                    _ => break,
                }
            }
            manager.destroy().await;
            exited
                .map(|_| text)
                .map_err(|e| BenchError::Sandbox(e.to_string()))
        }
        Err(err) => Err(err),
    };
    drain.abort();
    let _ = std::fs::remove_dir_all(&dir);
    let text = marks?;
    let marks: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let [start, written, piped] = marks[..] else {
        return Err(BenchError::Sandbox(format!(
            "the stdout measurement printed {text:?}, not three times"
        )));
    };
    Ok(StdoutRatio {
        bytes,
        to_host: Duration::from_secs_f64((written - start).max(0.0)),
        in_guest: Duration::from_secs_f64((piped - written).max(0.0)),
    })
}

/// How long idle sandboxes settle before their CPU time is counted, and
/// how long it is counted.
const IDLE_SETTLE: Duration = Duration::from_secs(5);
pub(super) const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// Boots `pods` sandboxes with an idle container each, lets them settle,
/// then counts their host processes' CPU time over `window` and reads
/// their memory (PSS).
pub(super) async fn idle(
    config: &Config,
    rootfs: &Path,
    pods: usize,
    window: Duration,
) -> Result<Idle, BenchError> {
    let mut managers = Vec::new();
    let mut failure = None;
    for i in 0..pods {
        let id = format!("idle-{}-{i}", std::process::id());
        match sandbox_with_container(config, &id, rootfs, &["sleep", "3600"]).await {
            Ok(manager) => managers.push(manager),
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    let measured = match failure {
        Some(err) => Err(err),
        None => {
            tokio::time::sleep(IDLE_SETTLE).await;
            let processes: Vec<(Option<u32>, Vec<u32>)> = managers
                .iter()
                .map(|m| m.host_processes().unwrap_or_default())
                .collect();
            let all: Vec<u32> = processes.iter().flat_map(|(_, p)| p.clone()).collect();
            let before: u64 = all.iter().map(|&pid| cpu_ticks(pid)).sum();
            let started = Instant::now();
            tokio::time::sleep(window).await;
            let after: u64 = all.iter().map(|&pid| cpu_ticks(pid)).sum();
            let elapsed = started.elapsed();
            let cpu = after.saturating_sub(before) as f64 / ticks_per_second();
            let mut idle = Idle {
                pods,
                window: elapsed,
                cpu_percent: 100.0 * cpu / elapsed.as_secs_f64() / pods as f64,
                ..Default::default()
            };
            for (vmm, pids) in &processes {
                for &pid in pids {
                    let pss = Pss::of(pid);
                    if Some(pid) == *vmm {
                        idle.vmm_pss_kib += pss.total_kib;
                        idle.vmm_pss_anon_kib += pss.anon_kib;
                        idle.vmm_pss_shmem_kib += pss.shmem_kib;
                    } else {
                        idle.helpers_pss_kib += pss.total_kib;
                    }
                }
            }
            let per_pod = |kib: u64| kib / pods as u64;
            idle.vmm_pss_kib = per_pod(idle.vmm_pss_kib);
            idle.vmm_pss_anon_kib = per_pod(idle.vmm_pss_anon_kib);
            idle.vmm_pss_shmem_kib = per_pod(idle.vmm_pss_shmem_kib);
            idle.helpers_pss_kib = per_pod(idle.helpers_pss_kib);
            Ok(idle)
        }
    };
    for manager in managers {
        manager.destroy().await;
    }
    measured
}

/// A process's proportional set size, from `/proc/PID/smaps_rollup`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pss {
    total_kib: u64,
    anon_kib: u64,
    shmem_kib: u64,
}

impl Pss {
    fn of(pid: u32) -> Self {
        Self::parse(
            &std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default(),
        )
    }

    fn parse(rollup: &str) -> Self {
        let field = |name: &str| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Pss {
            total_kib: field("Pss:"),
            anon_kib: field("Pss_Anon:"),
            shmem_kib: field("Pss_Shmem:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_of_this_process_is_read() {
        assert!(Pss::of(std::process::id()).total_kib > 0);
    }

    #[test]
    fn smaps_rollup_fields_are_found() {
        assert_eq!(
            Pss::parse(
                "Rss: 10 kB\nPss:                 812 kB\nPss_Anon:  300 kB\nPss_Shmem: 500 kB\n"
            ),
            Pss {
                total_kib: 812,
                anon_kib: 300,
                shmem_kib: 500,
            }
        );
    }
}
