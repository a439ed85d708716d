//! The soak: pod lifecycles through CRI under the `hull` handler, several at
//! once, a fraction of them with a fault injected into the pod's sandbox
//! while its container runs. Every lifecycle must end with the pod removed
//! and nothing of it left (processes, mounts, network namespace, veth,
//! IP allocation, cgroups, Hull's state dir), and at the end the host's
//! available memory must be back near where it started.
//!
//! `make soak` runs the `hull-soak` binary (any size); `tests/tests/soak.rs`
//! runs a CI-sized one in `make test`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cri::{ContainerSpec, CriContainerd, Pod, PodSpec, HULL_HANDLER};
use crate::HullConfig;

/// What can go wrong in a running pod's sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    VirtiofsdKilled,
    VirtiofsdStopped,
    VsockBackendKilled,
    VsockBackendStopped,
    VmmKilled,
    VmmStopped,
    ShimKilled,
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::VirtiofsdKilled,
        Fault::VirtiofsdStopped,
        Fault::VsockBackendKilled,
        Fault::VsockBackendStopped,
        Fault::VmmKilled,
        Fault::VmmStopped,
        Fault::ShimKilled,
    ];

    /// Injects the fault into sandbox `sandbox` of `cri`.
    fn inject(self, cri: &CriContainerd, sandbox: &str) {
        let c = cri.containerd();
        let matching = |needle: &str| -> Vec<u32> {
            c.processes_of_sandbox(sandbox)
                .into_iter()
                .filter(|(_, cmdline)| cmdline.contains(needle))
                .map(|(pid, _)| pid)
                .collect()
        };
        let (pids, signal) = match self {
            Fault::VirtiofsdKilled => (matching("virtiofsd"), Signal::SIGKILL),
            Fault::VirtiofsdStopped => (matching("virtiofsd"), Signal::SIGSTOP),
            Fault::VsockBackendKilled => (matching(" vsock "), Signal::SIGKILL),
            Fault::VsockBackendStopped => (matching(" vsock "), Signal::SIGSTOP),
            Fault::VmmKilled => (vec![c.vmm_pid(sandbox)], Signal::SIGKILL),
            Fault::VmmStopped => (vec![c.vmm_pid(sandbox)], Signal::SIGSTOP),
            Fault::ShimKilled => (vec![c.shim_pid(sandbox)], Signal::SIGKILL),
        };
        assert!(!pids.is_empty(), "{self:?}: nothing to signal in {sandbox}");
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }
}

/// How big a soak is.
#[derive(Debug, Clone, Copy)]
pub struct SoakOptions {
    /// Pod lifecycles in all.
    pub lifecycles: usize,
    /// How many run at once.
    pub parallel: usize,
    /// The share of lifecycles (0..=1) that get a fault.
    pub fault_share: f64,
    pub seed: u64,
}

/// What a soak did.
#[derive(Debug)]
pub struct SoakReport {
    pub lifecycles: usize,
    /// Each fault injected, with how often.
    pub faults: Vec<(Fault, usize)>,
    pub elapsed: Duration,
    /// Available host memory after, minus before, in KiB.
    pub memory_delta_kib: i64,
}

/// How long a container may take to be seen exited after a fault: the
/// health checks below run every second with a 5 s deadline.
const FAULT_ENDS_WITHIN: Duration = Duration::from_secs(30);

/// Hull's configuration for a soak: the guest assets from the environment
/// and quick health checks, so that hangs end within seconds.
pub fn soak_config() -> HullConfig {
    let mut config = HullConfig::from_env();
    config.extra = "health_check_interval_secs = 1\nhealth_check_timeout_secs = 5\n".into();
    config
}

/// Runs the soak on `cri` (a CRI containerd for Hull); panics naming the
/// lifecycle at the first one that fails or leaves something behind.
pub fn soak(cri: &CriContainerd, options: SoakOptions) -> SoakReport {
    // The first pod pays for what stays: containerd's caches, the image's
    // snapshot, the guest kernel in the page cache. The baseline is after it.
    lifecycle(cri, usize::MAX, None);
    std::thread::sleep(Duration::from_secs(2));
    let before = mem_available_kib();
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let rng = AtomicU64::new(options.seed.max(1));
    let faults = Mutex::new(std::collections::BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..options.parallel.max(1) {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= options.lifecycles {
                    return;
                }
                let draw = next_random(&rng);
                let fault = (unit(draw) < options.fault_share)
                    .then(|| Fault::ALL[(draw >> 33) as usize % Fault::ALL.len()]);
                lifecycle(cri, n, fault);
                if let Some(fault) = fault {
                    *faults.lock().unwrap().entry(fault).or_insert(0) += 1;
                }
            });
        }
    });
    let elapsed = started.elapsed();
    // What the removed VMs gave back reaches MemAvailable within moments.
    std::thread::sleep(Duration::from_secs(2));
    SoakReport {
        lifecycles: options.lifecycles,
        faults: faults.into_inner().unwrap().into_iter().collect(),
        elapsed,
        memory_delta_kib: mem_available_kib() - before,
    }
}

/// One pod: run it, start a container, exec in it, maybe break its
/// sandbox, then stop and remove it and check that nothing is left.
fn lifecycle(cri: &CriContainerd, n: usize, fault: Option<Fault>) {
    let name = match n {
        usize::MAX => "soakwarmup".to_owned(),
        n => format!("soak{n}"),
    };
    let mut pod = Pod::run(cri, HULL_HANDLER, PodSpec::new(&name))
        .unwrap_or_else(|e| panic!("{name}: RunPodSandbox: {e}"));
    let app = pod.start_container(&ContainerSpec::new("app", &["sleep", "100000"]));
    assert_eq!(pod.exec_ok(&app, &["echo", "up"]), "up\n", "{name}");
    eprintln!(
        "soak: {name}: {}",
        fault.map_or("no fault".to_owned(), |f| format!("{f:?}"))
    );
    if let Some(fault) = fault {
        fault.inject(cri, pod.id());
        let deadline = Instant::now() + FAULT_ENDS_WITHIN;
        let status = loop {
            let status = pod.container_status(&app);
            if status.state == k8s_cri::v1::ContainerState::ContainerExited as i32 {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{name} ({fault:?}): the container still runs {FAULT_ENDS_WITHIN:?} after the fault\n{}",
                cri.containerd().log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_ne!(status.exit_code, 0, "{name} ({fault:?}) exited 0");
    }
    let sandbox = pod.id().to_owned();
    let (_, left) = pod.teardown();
    assert!(left.is_empty(), "{name} ({fault:?}) left {left:#?}");
    let state = cri.containerd().hull_state_dir().join(&sandbox);
    assert!(
        !state.exists(),
        "{name} ({fault:?}) left Hull's state dir {}",
        state.display()
    );
}

/// xorshift64: enough to pick faults, and repeatable from a seed.
fn next_random(state: &AtomicU64) -> u64 {
    let mut x = state.load(Ordering::SeqCst);
    loop {
        let mut y = x;
        y ^= y << 13;
        y ^= y >> 7;
        y ^= y << 17;
        match state.compare_exchange(x, y, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return y,
            Err(current) => x = current,
        }
    }
}

fn unit(draw: u64) -> f64 {
    (draw >> 11) as f64 / (1u64 << 53) as f64
}

/// MemAvailable from /proc/meminfo, in KiB.
pub fn mem_available_kib() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemAvailable:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .expect("MemAvailable in /proc/meminfo")
}
