//! Hull beside runc through a running containerd, driven with `ctr` as a
//! user would: `ctr run --rm ... true` under each runtime in turn, then
//! under Hull with a pool of VMs booted ahead (`hull pool`), and a number
//! of detached containers (each its own sandbox under Hull) started at
//! once.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cpu::{CpuSnapshot, CpuUsage};
use super::{BenchError, Samples};

/// The containerd namespace the benchmark's containers live in; the image
/// must be imported there.
pub const NAMESPACE: &str = "hull-bench";
pub const HULL_RUNTIME: &str = "io.containerd.hull.v2";
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// How long one `ctr` command may take; twenty pods started at once took
/// 14 to 18 s in all here (docs/benchmarks.md).
const CTR_DEADLINE: Duration = Duration::from_secs(120);

/// How long the pool may take to boot its VM ahead before a run.
const POOL_DEADLINE: Duration = Duration::from_secs(180);

/// Where and what to run.
#[derive(Debug, Clone)]
pub struct Target {
    /// containerd's socket.
    pub address: PathBuf,
    /// An image in [`NAMESPACE`] with `true` and `sleep` on its PATH.
    pub image: String,
    /// Hull's configuration file as `hull --config` named it, for the pool
    /// the bench starts (containerd's shims must read the same).
    pub hull_config: Option<PathBuf>,
}

#[derive(Debug)]
pub struct ContainerdReport {
    pub address: PathBuf,
    pub hull_run: Samples,
    pub runc_run: Samples,
    /// `ctr run --rm` under hull, each sandbox taking a VM `hull pool`
    /// booted ahead.
    pub pooled_run: Samples,
    pub burst: Option<CtrBurst>,
}

/// Detached containers started at once under each runtime.
#[derive(Debug)]
pub struct CtrBurst {
    pub count: usize,
    pub hull: BurstResult,
    pub runc: BurstResult,
}

#[derive(Debug)]
pub struct BurstResult {
    /// Until the last `ctr run -d` returned (its task started, or failed).
    pub elapsed: Duration,
    pub started: usize,
    /// The machine's CPU time over the same span.
    pub cpu: CpuUsage,
}

/// `iterations` runs of `ctr run --rm` of `true`, hull and runc alternating,
/// then `burst` detached `sleep` containers at once under each.
pub fn bench(
    target: &Target,
    iterations: usize,
    burst: usize,
) -> Result<ContainerdReport, BenchError> {
    target.check()?;
    let mut report = ContainerdReport {
        address: target.address.clone(),
        hull_run: Samples::default(),
        runc_run: Samples::default(),
        pooled_run: Samples::default(),
        burst: None,
    };
    let tag = std::process::id();
    for i in 0..iterations {
        report
            .hull_run
            .push(target.run_true(HULL_RUNTIME, &format!("bench-hull-{tag}-{i}"))?);
        report
            .runc_run
            .push(target.run_true(RUNC_RUNTIME, &format!("bench-runc-{tag}-{i}"))?);
    }
    if iterations > 0 {
        report.pooled_run = target.pooled_runs(iterations)?;
    }
    if burst > 0 {
        report.burst = Some(CtrBurst {
            count: burst,
            hull: target.burst(HULL_RUNTIME, "hull", burst),
            runc: target.burst(RUNC_RUNTIME, "runc", burst),
        });
    }
    Ok(report)
}

impl Target {
    /// `ctr` on this containerd, each command bounded by [`CTR_DEADLINE`]:
    /// a runtime that hangs fails the bench instead of stopping it.
    fn ctr(&self) -> Command {
        let mut ctr = Command::new("ctr");
        ctr.arg("--address")
            .arg(&self.address)
            .args(["--namespace", NAMESPACE])
            .arg("--timeout")
            .arg(format!("{}s", CTR_DEADLINE.as_secs()));
        ctr
    }

    /// The socket answers and the image is there, before anything is timed.
    fn check(&self) -> Result<(), BenchError> {
        let output = self
            .ctr()
            .args(["images", "check", &format!("name=={}", self.image)])
            .output()
            .map_err(|e| BenchError::Containerd(format!("cannot run ctr: {e}")))?;
        if !output.status.success() {
            return Err(BenchError::Containerd(format!(
                "containerd at {}: {}",
                self.address.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        if !String::from_utf8_lossy(&output.stdout).contains(&self.image) {
            return Err(BenchError::Containerd(format!(
                "image {} is not in containerd namespace {NAMESPACE} (ctr -n {NAMESPACE} images import ...)",
                self.image
            )));
        }
        Ok(())
    }

    fn run_true(&self, runtime: &str, id: &str) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let output = self
            .ctr()
            .args(["run", "--rm", "--runtime", runtime, &self.image, id, "true"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BenchError::Containerd(format!("cannot run ctr: {e}")))?;
        let elapsed = start.elapsed();
        if !output.status.success() {
            self.remove(id);
            return Err(BenchError::Containerd(format!(
                "ctr run --runtime {runtime} {} true: {}",
                self.image,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(elapsed)
    }

    /// `iterations` runs of `ctr run --rm ... true` under hull with `hull
    /// pool --count 1` serving this containerd, each once the pool has its
    /// VM booted ahead, each checked to have taken it. The pool is stopped
    /// after, however the runs end.
    fn pooled_runs(&self, iterations: usize) -> Result<Samples, BenchError> {
        let failed = |what: String| BenchError::Containerd(format!("hull pool: {what}"));
        let mut pool = Command::new(std::env::current_exe().map_err(|e| failed(e.to_string()))?);
        if let Some(config) = &self.hull_config {
            pool.arg("--config").arg(config);
        }
        let mut pool = pool
            .args(["pool", "--count", "1", "--containerd"])
            .arg(&self.address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| failed(format!("cannot start it: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let address = self.address.to_string_lossy().into_owned();
        let status = || runtime.block_on(crate::pool::status(&address));
        let runs = (|| {
            let mut samples = Samples::default();
            for i in 0..iterations {
                let deadline = Instant::now() + POOL_DEADLINE;
                let before = loop {
                    if let Some(exit) = pool.try_wait().map_err(|e| failed(e.to_string()))? {
                        return Err(failed(format!("it exited ({exit})")));
                    }
                    match status() {
                        Ok(status) if status.waiting > 0 => break status,
                        _ if Instant::now() >= deadline => {
                            return Err(failed(format!("no VM booted ahead in {POOL_DEADLINE:?}")))
                        }
                        _ => std::thread::sleep(Duration::from_millis(100)),
                    }
                };
                let id = format!("bench-pool-{}-{i}", std::process::id());
                samples.push(self.run_true(HULL_RUNTIME, &id)?);
                let after = status().map_err(|e| failed(e.to_string()))?;
                if after.served != before.served + 1 {
                    return Err(failed(format!(
                        "it did not serve {id}: the sandbox booted its own VM (see the pool's log)"
                    )));
                }
            }
            Ok(samples)
        })();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pool.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let stop = Instant::now() + Duration::from_secs(60);
        while pool.try_wait().ok().flatten().is_none() && Instant::now() < stop {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = pool.kill();
        let _ = pool.wait();
        runs
    }

    /// Starts `count` detached containers of `sleep` at once and times them
    /// until the last `ctr run -d` returns; then removes them all.
    fn burst(&self, runtime: &str, name: &str, count: usize) -> BurstResult {
        let ids: Vec<String> = (0..count)
            .map(|i| format!("burst-{name}-{}-{i}", std::process::id()))
            .collect();
        let cpu_before = CpuSnapshot::take();
        let start = Instant::now();
        let started = std::thread::scope(|scope| {
            let runs: Vec<_> = ids
                .iter()
                .map(|id| {
                    scope.spawn(move || {
                        self.ctr()
                            .args(["run", "-d", "--runtime", runtime, &self.image, id])
                            .args(["sleep", "600"])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .is_ok_and(|status| status.success())
                    })
                })
                .collect();
            runs.into_iter()
                .map(|run| run.join())
                .filter(|ran| matches!(ran, Ok(true)))
                .count()
        });
        let elapsed = start.elapsed();
        let cpu = CpuSnapshot::take().since(&cpu_before);
        for id in &ids {
            self.remove(id);
        }
        BurstResult {
            elapsed,
            started,
            cpu,
        }
    }

    /// Removes a container and its task, whatever state they are in.
    fn remove(&self, id: &str) {
        let quiet = |mut command: Command| {
            let _ = command.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        let mut task = self.ctr();
        task.args(["task", "rm", "--force", id]);
        quiet(task);
        let mut container = self.ctr();
        container.args(["containers", "rm", id]);
        quiet(container);
    }
}

impl ContainerdReport {
    pub fn markdown(&self) -> String {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        let mut out = format!(
            "\n| through containerd ({}), `ctr run --rm IMAGE ID true`, alternating | median | min | max |\n|---|---|---|---|\n",
            self.address.display()
        );
        for (name, samples) in [("hull", &self.hull_run), ("runc", &self.runc_run)] {
            out += &format!(
                "| {name} | {} | {} | {} |\n",
                ms(samples.median()),
                ms(samples.min()),
                ms(samples.max())
            );
        }
        out += &format!(
            "| hull ÷ runc, medians | {:.1}× | | |\n",
            super::ratio(self.hull_run.median(), self.runc_run.median())
        );
        if !self.pooled_run.is_empty() {
            let pooled = &self.pooled_run;
            out += &format!(
                "| hull, each sandbox taking a VM `hull pool --count 1` booted ahead | {} | {} | {} |\n",
                ms(pooled.median()),
                ms(pooled.min()),
                ms(pooled.max())
            );
            out += &format!(
                "| hull from the pool ÷ runc, medians | {:.1}× | | |\n",
                super::ratio(pooled.median(), self.runc_run.median())
            );
        }
        if let Some(burst) = &self.burst {
            out += &format!(
                "\n| {n} `ctr run -d ... sleep` at once, until the last returned | time | started |\n|---|---|---|\n",
                n = burst.count
            );
            for (name, result) in [("hull", &burst.hull), ("runc", &burst.runc)] {
                out += &format!(
                    "| {name} | {} | {} of {} |\n",
                    ms(result.elapsed),
                    result.started,
                    burst.count
                );
            }
            // What bounds the burst: the CPUs' time, and who took it.
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            out += &format!(
                "\n| CPU time during the {n} at once ({cpus} CPUs) | busy, of what the CPUs had | per container | most, by process name (alive at the end) |\n|---|---|---|---|\n",
                n = burst.count
            );
            for (name, result) in [("hull", &burst.hull), ("runc", &burst.runc)] {
                let seconds = |d: Duration| format!("{:.1} s", d.as_secs_f64());
                out += &format!(
                    "| {name} | {} of {} | {} | {} |\n",
                    seconds(result.cpu.busy),
                    seconds(result.elapsed * cpus as u32),
                    seconds(result.cpu.busy / burst.count.max(1) as u32),
                    result.cpu.top(3)
                );
            }
        }
        out
    }
}
