//! `hull bench`: start-up time and host memory of Hull's sandboxes, measured
//! side by side with runc on the same rootfs in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::config::Config;
use crate::manager::{ContainerRequest, Manager, StdioPaths, StdioWiring, VmLauncher};
use crate::rootfs::RootfsMountSpec;
use crate::run::{run_with, RunOptions};
use crate::sandbox::{Milestone, Progress};
use crate::spec::{container_spec, ProcessOptions};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("hull run failed: {0}")]
    Run(String),
    #[error("runc: {0}")]
    Runc(String),
    #[error("{0}")]
    Sandbox(String),
}

/// Several timings of one quantity.
#[derive(Debug, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    pub fn median(&self) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }

    pub fn min(&self) -> Duration {
        self.0.iter().min().copied().unwrap_or_default()
    }

    pub fn max(&self) -> Duration {
        self.0.iter().max().copied().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub iterations: usize,
    /// The hypervisor backend: hull-vmm, QEMU/KVM or QEMU/TCG.
    pub backend: String,
    /// `hull run -- true`: VMM start to agent answering.
    pub boot_to_agent: Samples,
    /// `hull run -- true`: command start to container exit.
    pub to_exit: Samples,
    /// `hull run -- true`, all of it including tear-down.
    pub hull_total: Samples,
    /// `runc run` of the same command on the same rootfs.
    pub runc_total: Samples,
    pub guest_memory_mib: u32,
    /// Idle sandboxes, each with a container of `sleep`, side by side.
    pub idle: Option<Idle>,
    pub stdout: Option<StdoutRatio>,
    /// Sandboxes (each with a started container) started at once, until
    /// the last container runs: with boot admission as configured, with
    /// every boot admitted at once, and runc containers beside.
    pub burst: Option<Burst>,
}

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
    /// The VMM's anonymous part of it (the guest's RAM it touched, and its
    /// own heap and buffers).
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

#[derive(Debug)]
pub struct Burst {
    pub count: usize,
    pub admitted: usize,
    pub hull: Duration,
    pub hull_unadmitted: Duration,
    pub runc: Duration,
}

pub async fn bench(
    config: &Config,
    rootfs: &Path,
    iterations: usize,
    burst: usize,
    idle_pods: usize,
    stdout_bytes: u64,
) -> Result<Report, BenchError> {
    let mut report = Report {
        iterations,
        guest_memory_mib: config.memory_mib,
        ..Default::default()
    };
    for _ in 0..iterations {
        let progress = Arc::new(Progress::new(false));
        let options = RunOptions {
            rootfs: rootfs.to_owned(),
            process: ProcessOptions {
                args: vec!["true".into()],
                ..Default::default()
            },
            verbose: false,
        };
        let status = run_with(config, options, &progress)
            .await
            .map_err(|e| BenchError::Run(e.message))?;
        if status != 0 {
            return Err(BenchError::Run(format!("`true` exited with {status}")));
        }
        let at = |m| progress.time_of(m).unwrap_or_default();
        report
            .boot_to_agent
            .push(at(Milestone::AgentReady).saturating_sub(at(Milestone::VmStarted)));
        report.to_exit.push(at(Milestone::ContainerExited));
        report.hull_total.push(at(Milestone::SandboxRemoved));
    }
    for _ in 0..iterations {
        report.runc_total.push(runc_true(rootfs)?);
    }
    if idle_pods > 0 {
        report.idle = Some(idle(config, rootfs, idle_pods, IDLE_WINDOW).await?);
    }
    if stdout_bytes > 0 {
        report.stdout = Some(stdout_ratio(config, rootfs, stdout_bytes).await?);
    }
    if burst > 0 {
        let unadmitted = Config {
            max_parallel_boots: u32::try_from(burst).unwrap_or(u32::MAX),
            ..config.clone()
        };
        report.burst = Some(Burst {
            count: burst,
            admitted: crate::sandbox::admission::parallel_boots(config.max_parallel_boots),
            hull: hull_burst(config, rootfs, burst).await?,
            hull_unadmitted: hull_burst(&unadmitted, rootfs, burst).await?,
            runc: runc_burst(rootfs, burst)?,
        });
    }
    report.backend =
        crate::hypervisor::Backend::select(config, crate::host::Virtualization::detect())
            .map_err(|e| BenchError::Sandbox(e.to_string()))?
            .to_string();
    Ok(report)
}

/// A runc bundle in a temporary directory running `args` on `rootfs` with
/// runc's default spec.
fn runc_bundle(rootfs: &Path, name: &str, args: &[&str]) -> Result<PathBuf, BenchError> {
    let bundle = std::env::temp_dir().join(format!("hull-bench-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&bundle).map_err(|e| BenchError::Runc(e.to_string()))?;
    // runc refuses a relative rootfs path or one through a symlink.
    let rootfs = std::fs::canonicalize(rootfs)
        .map_err(|e| BenchError::Runc(format!("rootfs {}: {e}", rootfs.display())))?;
    let spec = container_spec(
        &rootfs,
        &ProcessOptions {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
    );
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&spec).expect("spec serializes"),
    )
    .map_err(|e| BenchError::Runc(e.to_string()))?;
    Ok(bundle)
}

/// Times `runc run` of `true` on `rootfs` with runc's default spec.
fn runc_true(rootfs: &Path) -> Result<Duration, BenchError> {
    let bundle = runc_bundle(rootfs, "true", &["true"])?;
    let id = format!("hull-bench-{}", std::process::id());
    let start = Instant::now();
    let output = Command::new("runc")
        .arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg(&id)
        .output()
        .map_err(|e| BenchError::Runc(format!("cannot run runc: {e}")))?;
    let elapsed = start.elapsed();
    let _ = std::fs::remove_dir_all(&bundle);
    if !output.status.success() {
        return Err(BenchError::Runc(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(elapsed)
}

/// Times `count` runc containers of `sleep` started at once (`runc run
/// --detach`), until the last one runs; then removes them.
fn runc_burst(rootfs: &Path, count: usize) -> Result<Duration, BenchError> {
    let bundle = runc_bundle(rootfs, "burst", &["sleep", "600"])?;
    let ids: Vec<String> = (0..count)
        .map(|i| format!("hull-bench-{}-{i}", std::process::id()))
        .collect();
    let start = Instant::now();
    let results: Vec<Result<(), BenchError>> = std::thread::scope(|scope| {
        let runs: Vec<_> = ids
            .iter()
            .map(|id| {
                let bundle = &bundle;
                scope.spawn(move || {
                    // The detached container keeps runc's stderr: a file,
                    // not a pipe whose end would wait for the container.
                    let log = bundle.join(format!("{id}.stderr"));
                    let stderr = std::fs::File::create(&log)
                        .map_err(|e| BenchError::Runc(format!("{}: {e}", log.display())))?;
                    let status = Command::new("runc")
                        .args(["run", "--detach", "--bundle"])
                        .arg(bundle)
                        .arg(id)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(stderr)
                        .status()
                        .map_err(|e| BenchError::Runc(format!("cannot run runc: {e}")))?;
                    if status.success() {
                        Ok(())
                    } else {
                        Err(BenchError::Runc(
                            std::fs::read_to_string(&log).unwrap_or_default(),
                        ))
                    }
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("a runc thread panicked"))
            .collect()
    });
    let elapsed = start.elapsed();
    for id in &ids {
        let _ = Command::new("runc")
            .args(["delete", "--force", id])
            .output();
    }
    let _ = std::fs::remove_dir_all(&bundle);
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(elapsed)
}

/// A sandbox with one started container running `args`, through the same
/// lifecycle manager as containerd's.
async fn sandbox_with_container(
    config: &Config,
    id: &str,
    rootfs: &Path,
    args: &[&str],
) -> Result<Manager, BenchError> {
    sandbox_with_container_writing(config, id, rootfs, args, StdioPaths::default()).await
}

/// [`sandbox_with_container`] with the container's stdio at `stdio`.
async fn sandbox_with_container_writing(
    config: &Config,
    id: &str,
    rootfs: &Path,
    args: &[&str],
    stdio: StdioPaths,
) -> Result<Manager, BenchError> {
    let (manager, _events) = Manager::new(Arc::new(VmLauncher), Arc::new(Progress::new(false)));
    let request = ContainerRequest {
        id: id.to_owned(),
        bundle: String::new(),
        spec: container_spec(
            Path::new("rootfs"),
            &ProcessOptions {
                args: args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
        ),
        rootfs: vec![RootfsMountSpec::bind(rootfs)],
        stdio: StdioWiring::Fifos(stdio),
        config: config.clone(),
    };
    let started = async {
        manager.create(request).await?;
        manager.start(id, "").await
    }
    .await;
    match started {
        Ok(_) => Ok(manager),
        Err(err) => {
            manager.destroy().await;
            Err(BenchError::Sandbox(err.to_string()))
        }
    }
}

/// Times `count` sandboxes, each with a container of `sleep`, started at
/// once until the last container runs; then removes them.
async fn hull_burst(config: &Config, rootfs: &Path, count: usize) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let started = futures::future::join_all((0..count).map(|i| {
        let id = format!("burst-{}-{i}", std::process::id());
        async move { sandbox_with_container(config, &id, rootfs, &["sleep", "600"]).await }
    }))
    .await;
    let elapsed = start.elapsed();
    let mut failure = None;
    for result in started {
        match result {
            Ok(manager) => manager.destroy().await,
            Err(err) => failure = Some(err),
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(elapsed),
    }
}

/// A container's stdout throughput beside a pipe inside its guest: the
/// guest times `head -c BYTES /dev/zero` written to the container's stdout
/// (which the host copies to /dev/null) and through a pipe to `cat` in the
/// guest, from /proc/uptime (10 ms steps) on stderr.
async fn stdout_ratio(
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
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// Boots `pods` sandboxes with an idle container each, lets them settle,
/// then counts their host processes' CPU time over `window` and reads
/// their memory (PSS).
async fn idle(
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
            // SAFETY: sysconf takes a constant and has no side effects.
            let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            let cpu = after.saturating_sub(before) as f64 / ticks_per_second;
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
                    } else {
                        idle.helpers_pss_kib += pss.total_kib;
                    }
                }
            }
            let per_pod = |kib: u64| kib / pods as u64;
            idle.vmm_pss_kib = per_pod(idle.vmm_pss_kib);
            idle.vmm_pss_anon_kib = per_pod(idle.vmm_pss_anon_kib);
            idle.helpers_pss_kib = per_pod(idle.helpers_pss_kib);
            Ok(idle)
        }
    };
    for manager in managers {
        manager.destroy().await;
    }
    measured
}

/// User and system CPU time of a process and its reaped children, in clock
/// ticks (`/proc/PID/stat` fields 14 to 17).
fn cpu_ticks(pid: u32) -> u64 {
    cpu_ticks_in(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

fn cpu_ticks_in(stat: &str) -> u64 {
    // The command name, in parentheses, may hold spaces: fields count from
    // after its closing parenthesis (field 3 is the first there).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    rest.split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum()
}

/// A process's proportional set size, from `/proc/PID/smaps_rollup`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pss {
    total_kib: u64,
    anon_kib: u64,
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
        }
    }
}

impl Report {
    /// The report as a Markdown table, as docs/benchmarks.md shows it.
    pub fn markdown(&self) -> String {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        let row = |name: &str, s: &Samples| {
            format!(
                "| {name} | {} | {} | {} |\n",
                ms(s.median()),
                ms(s.min()),
                ms(s.max())
            )
        };
        let mut out = format!(
            "{} iterations, {}, guest memory {} MiB\n\n| measure | median | min | max |\n|---|---|---|---|\n",
            self.iterations, self.backend, self.guest_memory_mib
        );
        out += &row("hull: VMM start → agent answers", &self.boot_to_agent);
        out += &row("hull run -- true: start → container exited", &self.to_exit);
        out += &row(
            "hull run -- true: whole run incl. tear-down",
            &self.hull_total,
        );
        out += &row("runc run true (same rootfs)", &self.runc_total);
        if let Some(idle) = &self.idle {
            let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
            out += &format!(
                "\n| {n} idle sandboxes (a container of `sleep` each), per sandbox | |\n|---|---|\n| host CPU of the VMM, virtiofsd and the vsock backend, over {w:.0} s | {cpu:.2}% of one CPU |\n| VMM PSS (guest RAM it touched, and its own) | {vmm} |\n| of which anonymous | {anon} |\n| virtiofsd and the vsock backend, PSS | {helpers} |\n",
                n = idle.pods,
                w = idle.window.as_secs_f64(),
                cpu = idle.cpu_percent,
                vmm = mib(idle.vmm_pss_kib),
                anon = mib(idle.vmm_pss_anon_kib),
                helpers = mib(idle.helpers_pss_kib),
            );
        }
        if let Some(stdout) = &self.stdout {
            let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
            out += &format!(
                "\n| {mb} MB of `head -c` in the guest | time | pipe ÷ stdout |\n|---|---|---|\n| to the container's stdout (to /dev/null on the host) | {} | {:.0}% |\n| through a pipe inside the guest | {} | |\n",
                secs(stdout.to_host),
                100.0 * stdout.in_guest.as_secs_f64() / stdout.to_host.as_secs_f64().max(0.001),
                secs(stdout.in_guest),
                mb = stdout.bytes / 1_000_000,
            );
        }
        if let Some(burst) = &self.burst {
            out += &format!(
                "\n| {n} started at once, until the last container runs | time |\n|---|---|\n| hull, {a} boots at a time (max_parallel_boots) | {} |\n| hull, all {n} boots at once | {} |\n| runc | {} |\n",
                ms(burst.hull),
                ms(burst.hull_unadmitted),
                ms(burst.runc),
                n = burst.count,
                a = burst.admitted,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_summarise() {
        let mut samples = Samples::default();
        for ms in [30, 10, 20] {
            samples.push(Duration::from_millis(ms));
        }
        assert_eq!(samples.median(), Duration::from_millis(20));
        assert_eq!(samples.min(), Duration::from_millis(10));
        assert_eq!(samples.max(), Duration::from_millis(30));
    }

    #[test]
    fn cpu_time_and_pss_of_this_process_are_read() {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0);
        }
        assert!(cpu_ticks(std::process::id()) > 0);
        assert!(Pss::of(std::process::id()).total_kib > 0);
    }

    #[test]
    fn stat_and_smaps_rollup_fields_are_found() {
        // A command name with a space and a parenthesis does not shift them.
        let stat = "42 (a) b) S 1 2 3 4 5 6 7 8 9 10 100 20 3 4 20 0 1 0";
        assert_eq!(cpu_ticks_in(stat), 127);
        assert_eq!(
            Pss::parse("Rss: 10 kB\nPss:                 812 kB\nPss_Anon:  300 kB\n"),
            Pss {
                total_kib: 812,
                anon_kib: 300
            }
        );
    }
}
