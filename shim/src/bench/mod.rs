//! `hull bench`: start-up time and host memory of Hull's sandboxes, measured
//! side by side with runc on the same rootfs in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::manager::{ContainerRequest, Manager, StdioPaths, StdioWiring, VmLauncher};
use crate::pod::VmSize;
use crate::rootfs::RootfsMountSpec;
use crate::run::{run_with, RunOptions};
use crate::sandbox::{
    remove_state, Milestone, Progress, SandboxError, SandboxOptions, SandboxPaths, SandboxVm,
};
use crate::spec::{container_spec, ProcessOptions};

pub mod containerd;
mod cpu;
mod density;
use containerd::ContainerdReport;
use density::{idle, stdout_ratio, IDLE_WINDOW};
pub use density::{Idle, StdoutRatio};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("hull run failed: {0}")]
    Run(String),
    #[error("runc: {0}")]
    Runc(String),
    #[error("{0}")]
    Sandbox(String),
    #[error("containerd: {0}")]
    Containerd(String),
}

/// Several timings of one quantity.
#[derive(Debug, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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
    /// The same kernel and initrd booted with the same VMM flags to a PID 1
    /// that powers off at once: VMM start to VMM exit.
    pub raw_boot: Samples,
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
    /// `ctr` against a containerd, hull beside runc.
    pub containerd: Option<ContainerdReport>,
}

#[derive(Debug)]
pub struct Burst {
    pub count: usize,
    pub admitted: usize,
    pub hull: Duration,
    pub hull_unadmitted: Duration,
    pub runc: Duration,
}

/// What `hull bench` measures, and on what.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The containers' root filesystem (busybox).
    pub rootfs: PathBuf,
    /// Runs of each timed start-up.
    pub iterations: usize,
    /// Sandboxes started at once through the lifecycle manager (0: none).
    pub burst: usize,
    /// Idle sandboxes whose CPU and memory are measured (0: none).
    pub idle_pods: usize,
    /// Bytes the stdout measurement writes (0: none).
    pub stdout_bytes: u64,
    /// A containerd to run `ctr` against under both runtimes, and how many
    /// detached containers to start there at once.
    pub containerd: Option<(containerd::Target, usize)>,
}

pub async fn bench(config: &Config, options: &BenchOptions) -> Result<Report, BenchError> {
    let (rootfs, iterations, burst) = (options.rootfs.as_path(), options.iterations, options.burst);
    let mut report = Report {
        iterations,
        guest_memory_mib: config.memory_mib,
        ..Default::default()
    };
    for _ in 0..iterations {
        report.raw_boot.push(raw_boot(config).await?);
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
    if let Some((target, pods)) = &options.containerd {
        let (target, pods) = (target.clone(), *pods);
        let report_ctr =
            tokio::task::spawn_blocking(move || containerd::bench(&target, iterations, pods))
                .await
                .map_err(|e| BenchError::Containerd(e.to_string()))??;
        report.containerd = Some(report_ctr);
    }
    if options.idle_pods > 0 {
        report.idle = Some(idle(config, rootfs, options.idle_pods, IDLE_WINDOW).await?);
    }
    if options.stdout_bytes > 0 {
        report.stdout = Some(stdout_ratio(config, rootfs, options.stdout_bytes).await?);
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

/// The kernel parameter that has the agent, as PID 1, power the VM off
/// before anything else (`hull_raw_boot` in agent/src/init.rs).
const RAW_BOOT_PARAM: &str = "hull_raw_boot=1";

/// Boots a sandbox VM whose PID 1 powers off at once, everything else as
/// `hull run` boots it, and times its VMM from start to exit.
async fn raw_boot(config: &Config) -> Result<Duration, BenchError> {
    let config = Config {
        kernel_params: format!("{} {RAW_BOOT_PARAM}", config.kernel_params)
            .trim()
            .to_owned(),
        ..config.clone()
    };
    let options = SandboxOptions {
        size: VmSize {
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
        },
        netns: None,
        hostname: String::new(),
    };
    static BOOTS: AtomicUsize = AtomicUsize::new(0);
    let id = format!(
        "raw-boot-{}-{}",
        std::process::id(),
        BOOTS.fetch_add(1, Ordering::Relaxed)
    );
    let progress = Progress::new(false);
    let booted =
        SandboxVm::start_unless(&config, &id, &options, &progress, std::future::pending()).await;
    match booted {
        // A failed start keeps its logs; this one did what it was asked.
        Err(SandboxError::VmDied { .. }) => {
            remove_state(&SandboxPaths::new(&config.state_dir, &id), false)
        }
        Err(err) => return Err(BenchError::Sandbox(format!("raw boot: {err}"))),
        Ok(vm) => {
            vm.shutdown().await;
            return Err(BenchError::Sandbox(
                "raw boot: the agent answered instead of powering off; is the initrd older than this hull?"
                    .into(),
            ));
        }
    }
    let at = |m| progress.time_of(m).unwrap_or_default();
    Ok(at(Milestone::VmEnded).saturating_sub(at(Milestone::VmStarted)))
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
        out += &row(
            "raw boot: the same kernel, initrd and VMM flags, PID 1 powers off at once (VMM start → exit)",
            &self.raw_boot,
        );
        out += &row("hull: VMM start → agent answers", &self.boot_to_agent);
        out += &row("hull run -- true: start → container exited", &self.to_exit);
        out += &row(
            "hull run -- true: whole run incl. tear-down",
            &self.hull_total,
        );
        out += &row("runc run true (same rootfs)", &self.runc_total);
        out += &format!(
            "| hull run -- true (whole run) ÷ raw boot, medians | {:.2}× | | |\n",
            ratio(self.hull_total.median(), self.raw_boot.median())
        );
        if let Some(containerd) = &self.containerd {
            out += &containerd.markdown();
        }
        if let Some(idle) = &self.idle {
            let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
            out += &format!(
                "\n| {n} idle sandboxes (a container of `sleep` each), per sandbox | |\n|---|---|\n| host CPU of the VMM, virtiofsd and the vsock backend, over {w:.0} s | {cpu:.2}% of one CPU |\n| VMM PSS | {vmm} |\n| of which the guest's RAM it touched (shared memory) | {shmem} |\n| of which its own anonymous memory | {anon} |\n| virtiofsd and the vsock backend, PSS | {helpers} |\n",
                n = idle.pods,
                w = idle.window.as_secs_f64(),
                cpu = idle.cpu_percent,
                vmm = mib(idle.vmm_pss_kib),
                anon = mib(idle.vmm_pss_anon_kib),
                shmem = mib(idle.vmm_pss_shmem_kib),
                helpers = mib(idle.helpers_pss_kib),
            );
        }
        if let Some(stdout) = &self.stdout {
            let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
            out += &format!(
                "\n| {mb} MB of `head -c` in the guest | time | pipe ÷ stdout |\n|---|---|---|\n| to the container's stdout (read from a FIFO and dropped on the host) | {} | {:.0}% |\n| through a pipe inside the guest | {} | |\n",
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

/// `a ÷ b`, 0 where `b` is nothing.
fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        0.0
    } else {
        a.as_secs_f64() / b.as_secs_f64()
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
}
