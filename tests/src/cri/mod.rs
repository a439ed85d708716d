//! Pods through containerd's CRI plugin, as the kubelet drives a runtime.
//!
//! [`CriContainerd`] is a private containerd started with `--cri` (its own
//! CNI bridge and subnet, the local pause image as `sandbox_image`) with a
//! [`CriClient`] on its socket. [`pod`] runs pods and containers and checks
//! what a removed pod leaves behind; [`scenarios`] are the pod scenarios,
//! each taking the runtime handler (`runc`, `hull`) so that the same
//! function gives the answers a test compares between handlers.

pub mod client;
pub mod exec_stream;
pub mod pod;
pub mod port_forward;
pub mod scenarios;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

pub use client::{CriClient, CriError};
pub use exec_stream::{ExecOutcome, ExecSession, StreamError};
pub use pod::{ContainerSpec, Pod, PodFootprint, PodSpec};

use crate::{artifacts, Containerd, HullConfig};

/// The containerd namespace the CRI plugin works in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// runc's CRI runtime handler.
pub const RUNC_HANDLER: &str = "runc";
/// runc with `privileged_without_host_devices = true`, the CRI option VM
/// runtimes use: a privileged container without the host's devices, which
/// is what Hull's privileged containers are compared with.
pub const RUNC_NO_HOST_DEVICES_HANDLER: &str = "runc-nodev";
/// Hull's CRI runtime handler (and RuntimeClass handler).
pub const HULL_HANDLER: &str = "hull";
/// The pod sandbox image, built by `images/pause-image.sh`.
pub const PAUSE_IMAGE: &str = "docker.io/local/pause:hull";

/// The CNI network `private-containerd.sh start --cri` made for one
/// containerd (from DIR/cri.env).
#[derive(Clone, Debug)]
pub struct PodNetwork {
    /// The bridge the pods' veths are on; it holds the gateway address.
    pub bridge: String,
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    /// The host's address on the bridge.
    pub gateway: Ipv4Addr,
    /// host-local's allocations: one file per IP, named after it.
    pub ipam_dir: PathBuf,
    /// The top-level cgroup (in every hierarchy) pods put their
    /// cgroup_parent under; `stop` removes it.
    pub cgroup_root: String,
}

impl PodNetwork {
    fn read(path: &Path) -> Self {
        let env = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let value = |key: &str| {
            env.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{} has no {key}", path.display()))
                .to_string()
        };
        let subnet = value("CRI_SUBNET");
        let (address, prefix_len) = subnet
            .split_once('/')
            .unwrap_or_else(|| panic!("CRI_SUBNET={subnet} is not ADDRESS/PREFIX"));
        let ip = |text: &str| -> Ipv4Addr {
            text.parse()
                .unwrap_or_else(|e| panic!("{text} in {}: {e}", path.display()))
        };
        Self {
            bridge: value("CRI_BRIDGE"),
            subnet: ip(address),
            prefix_len: prefix_len
                .parse()
                .unwrap_or_else(|e| panic!("CRI_SUBNET={subnet}: {e}")),
            gateway: ip(&value("CRI_GATEWAY")),
            ipam_dir: PathBuf::from(value("CRI_IPAM_DIR")),
            cgroup_root: value("CRI_CGROUP_ROOT"),
        }
    }

    /// Whether `ip` is in the pods' subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.subnet) & mask
    }
}

/// A private containerd with the CRI plugin, the pause and busybox images in
/// namespace k8s.io, and a CRI client. Dropping it stops and removes every
/// pod through CRI, then stops containerd and removes everything it started
/// (network, cgroups, mounts), also when the test panicked.
pub struct CriContainerd {
    // Fields drop in this order: the client before containerd goes away.
    client: CriClient,
    network: PodNetwork,
    containerd: Containerd,
}

impl CriContainerd {
    /// For runc only: Hull gets a config without guest assets.
    pub fn start_for_runc() -> Self {
        Self::start_with(HullConfig::default())
    }

    /// One containerd for runc shared by the tests of a test binary while
    /// any of them holds it: the last one to let go stops it (Drop), and the
    /// next test starts a new one. Pods are the tests' own, and every check
    /// of what a pod leaves behind is about that pod only, so tests can run
    /// side by side on it.
    pub fn shared_for_runc() -> Arc<Self> {
        static SHARED: Mutex<Weak<CriContainerd>> = Mutex::new(Weak::new());
        Self::shared(&SHARED, Self::start_for_runc)
    }

    /// The same for tests that run pods under both handlers, with Hull's
    /// guest assets from the environment.
    pub fn shared_for_hull() -> Arc<Self> {
        static SHARED: Mutex<Weak<CriContainerd>> = Mutex::new(Weak::new());
        Self::shared(&SHARED, Self::start)
    }

    fn shared(slot: &Mutex<Weak<CriContainerd>>, start: fn() -> Self) -> Arc<Self> {
        let mut shared = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cri) = shared.upgrade() {
            return cri;
        }
        let cri = Arc::new(start());
        *shared = Arc::downgrade(&cri);
        cri
    }

    /// For Hull, with the guest assets from the environment (`make test`).
    pub fn start() -> Self {
        Self::start_with(HullConfig::from_env())
    }

    pub fn start_with(config: HullConfig) -> Self {
        let containerd = Containerd::start_cri_with(config);
        containerd.import_into(CRI_NAMESPACE, artifacts::pause_image());
        containerd.import_into(CRI_NAMESPACE, artifacts::busybox_image());
        let network = PodNetwork::read(&containerd.dir().join("cri.env"));
        let client = CriClient::connect(&containerd.socket());
        wait_until_ready(&client, Duration::from_secs(20));
        Self {
            client,
            network,
            containerd,
        }
    }

    pub fn client(&self) -> &CriClient {
        &self.client
    }

    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    pub fn network(&self) -> &PodNetwork {
        &self.network
    }

    /// A name unique to this containerd and test run, starting with `name`.
    pub fn unique_name(&self, name: &str) -> String {
        self.containerd.id(name)
    }

    /// The CRI plugin's state dir (network namespaces, sandbox files).
    pub fn cri_state_dir(&self) -> PathBuf {
        self.containerd
            .dir()
            .join("state/io.containerd.grpc.v1.cri")
    }

    /// A host directory for one pod's logs and volumes.
    pub fn pod_dir(&self, pod_name: &str) -> PathBuf {
        self.containerd.dir().join("pods").join(pod_name)
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        // The kubelet's part: pods go through CRI, so CNI DEL runs and IPAM
        // allocations are released. The script's stop removes the rest.
        let pods = match self.client.list_pod_sandboxes() {
            Ok(pods) => pods,
            Err(e) => {
                eprintln!("cleaning up pods: {e}");
                return;
            }
        };
        for pod in pods {
            if let Err(e) = self.client.stop_pod_sandbox(&pod.id) {
                eprintln!("cleaning up pod {}: {e}", pod.id);
            }
            if let Err(e) = self.client.remove_pod_sandbox(&pod.id) {
                eprintln!("cleaning up pod {}: {e}", pod.id);
            }
        }
    }
}

/// Waits until CRI reports RuntimeReady and NetworkReady (the CNI config is
/// loaded).
fn wait_until_ready(client: &CriClient, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let status = client.status();
        let not_ready: Vec<String> = match &status {
            Ok(response) => response
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .filter(|c| !c.status)
                .map(|c| format!("{}: {} {}", c.r#type, c.reason, c.message))
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        let conditions = status
            .as_ref()
            .ok()
            .and_then(|r| r.status.as_ref())
            .map_or(0, |s| s.conditions.len());
        if not_ready.is_empty() && conditions >= 2 {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "CRI at {} not ready after {timeout:?}: {not_ready:?}",
                client.socket().display()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}
