//! Pods and containers as the kubelet asks for them, and what a removed pod
//! must not leave behind.
//!
//! A [`Pod`] is a guard: dropping it stops and removes the sandbox (and so
//! its containers), also when a test panicked. [`Pod::teardown`] does the
//! same on purpose and reports the pod's [`PodFootprint`] on the host
//! (processes, the network namespace, the host's veth, mounts, the CNI IP
//! allocation and cgroups) before and after the removal.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use k8s_cri::v1 as api;

use super::{CriContainerd, CriError};
use crate::{cgroup_dirs, processes_in, processes_mentioning, BUSYBOX, LEFTOVER_KINDS};

/// What a test asks of a pod.
#[derive(Clone, Debug)]
pub struct PodSpec {
    name: String,
    hostname: String,
    dns: Option<api::DnsConfig>,
    host_network: bool,
    share_process_namespace: bool,
    resources: Option<api::LinuxContainerResources>,
    privileged: bool,
}

impl PodSpec {
    /// A pod with its own network, PID per container, shared IPC and UTS;
    /// the hostname is the name.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            hostname: name.to_string(),
            dns: None,
            host_network: false,
            share_process_namespace: false,
            resources: None,
            privileged: false,
        }
    }

    /// A privileged pod, which privileged containers need.
    pub fn privileged(mut self) -> Self {
        self.privileged = true;
        self
    }

    /// `shareProcessNamespace: true`: one PID namespace for the pod.
    pub fn share_process_namespace(mut self) -> Self {
        self.share_process_namespace = true;
        self
    }

    /// The pod's resources (the sum of its containers' limits, as the
    /// kubelet passes them): `cpus` whole CPUs and `memory` bytes.
    pub fn resources(mut self, cpus: i64, memory: i64) -> Self {
        self.resources = Some(api::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: cpus * 100_000,
            memory_limit_in_bytes: memory,
            ..Default::default()
        });
        self
    }

    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = hostname.to_string();
        self
    }

    pub fn dns(mut self, servers: &[&str], searches: &[&str], options: &[&str]) -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        self.dns = Some(api::DnsConfig {
            servers: strings(servers),
            searches: strings(searches),
            options: strings(options),
        });
        self
    }

    /// `hostNetwork: true`: the pod shares the node's network namespace.
    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self.hostname = String::new();
        self
    }

    fn namespace_options(&self) -> api::NamespaceOption {
        let network = if self.host_network {
            api::NamespaceMode::Node
        } else {
            api::NamespaceMode::Pod
        };
        let pid = if self.share_process_namespace {
            api::NamespaceMode::Pod
        } else {
            api::NamespaceMode::Container
        };
        api::NamespaceOption {
            network: network as i32,
            pid: pid as i32,
            ipc: api::NamespaceMode::Pod as i32,
            ..Default::default()
        }
    }
}

/// What a test asks of a container (busybox).
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    name: String,
    command: Vec<String>,
    mounts: Vec<api::Mount>,
    memory_limit: Option<i64>,
    privileged: bool,
    seccomp: Option<api::SecurityProfile>,
    no_new_privs: bool,
    run_as_user: Option<i64>,
    devices: Vec<api::Device>,
}

impl ContainerSpec {
    pub fn new(name: &str, command: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            command: command.iter().map(|s| s.to_string()).collect(),
            mounts: Vec::new(),
            memory_limit: None,
            privileged: false,
            seccomp: None,
            no_new_privs: false,
            run_as_user: None,
            devices: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `securityContext.seccompProfile.type: RuntimeDefault`.
    pub fn seccomp_runtime_default(mut self) -> Self {
        self.seccomp = Some(api::SecurityProfile {
            profile_type: api::security_profile::ProfileType::RuntimeDefault as i32,
            ..Default::default()
        });
        self
    }

    /// A `Localhost` seccomp profile: the JSON file at `path` on the host.
    pub fn seccomp_localhost(mut self, path: &Path) -> Self {
        self.seccomp = Some(api::SecurityProfile {
            profile_type: api::security_profile::ProfileType::Localhost as i32,
            localhost_ref: path.to_string_lossy().into_owned(),
        });
        self
    }

    /// `allowPrivilegeEscalation: false`.
    pub fn no_new_privs(mut self) -> Self {
        self.no_new_privs = true;
        self
    }

    /// `runAsUser`.
    pub fn run_as_user(mut self, uid: i64) -> Self {
        self.run_as_user = Some(uid);
        self
    }

    /// `securityContext.privileged: true` (all capabilities, the host's
    /// devices).
    pub fn privileged(mut self) -> Self {
        self.privileged = true;
        self
    }

    /// A host device, as a device plugin asks for one.
    pub fn device(mut self, host: &str, container: &str) -> Self {
        self.devices.push(api::Device {
            host_path: host.to_string(),
            container_path: container.to_string(),
            permissions: "rw".to_string(),
        });
        self
    }

    /// A read-write bind mount of a host directory with the propagation of
    /// `mountPropagation` (`None`, `HostToContainer`, `Bidirectional`).
    pub fn mount_propagating(
        mut self,
        host: &Path,
        container: &str,
        propagation: api::MountPropagation,
    ) -> Self {
        self.mounts.push(api::Mount {
            host_path: host.to_string_lossy().into_owned(),
            container_path: container.to_string(),
            propagation: propagation as i32,
            ..Default::default()
        });
        self
    }

    /// A bind mount of a host file or directory.
    pub fn mount(mut self, host: &Path, container: &str, readonly: bool) -> Self {
        self.mounts.push(api::Mount {
            host_path: host.to_string_lossy().into_owned(),
            container_path: container.to_string(),
            readonly,
            ..Default::default()
        });
        self
    }

    /// A memory limit, swap included (as the kubelet sets it).
    pub fn memory_limit(mut self, bytes: i64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The container's log file, relative to the pod's log directory.
    pub fn log_path(&self) -> String {
        format!("{}.log", self.name)
    }
}

/// A running pod sandbox; dropping it removes it.
pub struct Pod<'a> {
    cri: &'a CriContainerd,
    id: String,
    name: String,
    config: api::PodSandboxConfig,
    namespaces: api::NamespaceOption,
    containers: Vec<String>,
    /// Under Hull, CRI's pids are the guest's and mean nothing on the host.
    host_pids: bool,
    removed: bool,
}

impl<'a> Pod<'a> {
    /// RunPodSandbox under `handler`; the error is CRI's answer.
    pub fn run(cri: &'a CriContainerd, handler: &str, spec: PodSpec) -> Result<Self, CriError> {
        let name = cri.unique_name(&spec.name);
        let dir = cri.pod_dir(&name);
        let log_directory = dir.join("logs");
        std::fs::create_dir_all(&log_directory)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log_directory.display()));
        let namespaces = spec.namespace_options();
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.clone(),
                uid: format!("uid-{name}"),
                namespace: "hull-test".to_string(),
                attempt: 0,
            }),
            hostname: spec.hostname.clone(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            dns_config: spec.dns.clone(),
            linux: Some(api::LinuxPodSandboxConfig {
                // The kubelet's cgroupfs layout: a cgroup per pod, the
                // containers' cgroups in it.
                cgroup_parent: format!("/{}/pod-{name}", cri.network().cgroup_root),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces.clone()),
                    privileged: spec.privileged,
                    ..Default::default()
                }),
                resources: spec.resources.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = cri.client().run_pod_sandbox(config.clone(), handler)?;
        Ok(Self {
            cri,
            id,
            name,
            config,
            namespaces,
            containers: Vec::new(),
            host_pids: handler != super::HULL_HANDLER,
            removed: false,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host directory for this pod's logs and volumes.
    pub fn dir(&self) -> PathBuf {
        self.cri.pod_dir(&self.name)
    }

    /// The pod's LogDirectory.
    pub fn log_dir(&self) -> PathBuf {
        self.dir().join("logs")
    }

    /// The pod's cgroup_parent, relative to a hierarchy's root.
    pub fn cgroup_parent(&self) -> String {
        self.config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default()
    }

    pub fn status(&self) -> api::PodSandboxStatus {
        self.cri
            .client()
            .pod_sandbox_status(&self.id, false)
            .unwrap_or_else(|e| panic!("pod {}: {e}", self.name))
            .status
            .unwrap_or_else(|| panic!("PodSandboxStatus of {} has no status", self.name))
    }

    /// The pod's IP from PodSandboxStatus (what CNI gave it), if any.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        let ip = self.status().network.map(|n| n.ip).unwrap_or_default();
        if ip.is_empty() {
            return None;
        }
        Some(
            ip.parse()
                .unwrap_or_else(|e| panic!("pod {} has IP {ip:?}: {e}", self.name)),
        )
    }

    /// CreateContainer; returns its id.
    pub fn create_container(&mut self, spec: &ContainerSpec) -> Result<String, CriError> {
        let resources = spec.memory_limit.map(|bytes| api::LinuxContainerResources {
            memory_limit_in_bytes: bytes,
            memory_swap_limit_in_bytes: bytes,
            ..Default::default()
        });
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: BUSYBOX.to_string(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            mounts: spec.mounts.clone(),
            devices: spec.devices.clone(),
            log_path: spec.log_path(),
            linux: Some(api::LinuxContainerConfig {
                resources,
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(self.namespaces.clone()),
                    privileged: spec.privileged,
                    seccomp: spec.seccomp.clone(),
                    no_new_privs: spec.no_new_privs,
                    run_as_user: spec.run_as_user.map(|value| api::Int64Value { value }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let id = self
            .cri
            .client()
            .create_container(&self.id, config, self.config.clone())?;
        self.containers.push(id.clone());
        Ok(id)
    }

    /// CreateContainer and StartContainer; panics naming the container if
    /// either fails.
    pub fn start_container(&mut self, spec: &ContainerSpec) -> String {
        let id = self
            .create_container(spec)
            .unwrap_or_else(|e| panic!("container {} in pod {}: {e}", spec.name, self.name));
        self.cri
            .client()
            .start_container(&id)
            .unwrap_or_else(|e| panic!("container {} in pod {}: {e}", spec.name, self.name));
        id
    }

    /// ExecSync that must reach the container: exit code, stdout, stderr.
    pub fn exec(&self, container: &str, cmd: &[&str]) -> (i32, String, String) {
        let response = self
            .cri
            .client()
            .exec_sync(container, cmd, 30)
            .unwrap_or_else(|e| panic!("exec {cmd:?} in pod {}: {e}", self.name));
        (
            response.exit_code,
            String::from_utf8_lossy(&response.stdout).into_owned(),
            String::from_utf8_lossy(&response.stderr).into_owned(),
        )
    }

    /// ExecSync that must succeed; its stdout.
    pub fn exec_ok(&self, container: &str, cmd: &[&str]) -> String {
        let (code, stdout, stderr) = self.exec(container, cmd);
        assert_eq!(
            code, 0,
            "exec {cmd:?} in pod {} failed\nstdout: {stdout}\nstderr: {stderr}",
            self.name
        );
        stdout
    }

    pub fn container_status(&self, container: &str) -> api::ContainerStatus {
        self.cri
            .client()
            .container_status(container, false)
            .unwrap_or_else(|e| panic!("pod {}: {e}", self.name))
            .status
            .unwrap_or_else(|| panic!("ContainerStatus of {container} has no status"))
    }

    /// Waits until the container has exited; its status.
    pub fn wait_exited(&self, container: &str, timeout: Duration) -> api::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(container);
            if status.state == api::ContainerState::ContainerExited as i32 {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "container {} in pod {} still in state {} after {timeout:?}",
                    status.metadata.map(|m| m.name).unwrap_or_default(),
                    self.name,
                    status.state
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pod's resources on the host now.
    pub fn footprint(&self) -> PodFootprint {
        self.traces().footprint()
    }

    /// StopPodSandbox and RemovePodSandbox. Returns the pod's footprint
    /// before, and what is left of it after, waiting a little for what is
    /// on its way out (a shim exits shortly after its last container).
    /// Removes the pod's cgroup as the kubelet does.
    pub fn teardown(mut self) -> (PodFootprint, PodFootprint) {
        let traces = self.traces();
        let before = traces.footprint();
        let client = self.cri.client();
        client
            .stop_pod_sandbox(&self.id)
            .unwrap_or_else(|e| panic!("pod {}: {e}", self.name));
        client
            .remove_pod_sandbox(&self.id)
            .unwrap_or_else(|e| panic!("pod {}: {e}", self.name));
        self.removed = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let after = traces.footprint();
            if after.is_empty() || Instant::now() >= deadline {
                break after;
            }
            thread::sleep(Duration::from_millis(100));
        };
        if after.cgroups.is_empty() {
            for dir in cgroup_dirs(&self.cgroup_parent()) {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        (before, after)
    }

    /// What the pod holds now, to be checked for after it is removed.
    fn traces(&self) -> Traces {
        let client = self.cri.client();
        let sandbox = client
            .pod_sandbox_status(&self.id, true)
            .unwrap_or_else(|e| panic!("pod {}: {e}", self.name));
        let info = verbose_info(&sandbox.info);
        let host_pid = |info: &serde_json::Value| {
            info["pid"]
                .as_u64()
                .filter(|_| self.host_pids)
                .map(|p| p as u32)
        };
        let mut pids: Vec<u32> = host_pid(&info).into_iter().collect();
        let mut ids = vec![self.id.clone()];
        for container in &self.containers {
            if let Ok(status) = client.container_status(container, true) {
                pids.extend(host_pid(&verbose_info(&status.info)));
            }
            ids.push(container.clone());
        }
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        // The host end of the pod's veth: the CNI result's interface that
        // is not in the pod's namespace and is not the bridge.
        let network = self.cri.network();
        let veths = info["cniResult"]["Interfaces"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, config)| {
                config["Sandbox"].as_str().unwrap_or_default().is_empty()
                    && **name != network.bridge
            })
            .map(|(name, _)| name.clone())
            .collect();
        // A VM from `hull pool` keeps the name it was booted under; Hull's
        // state dir names it by the sandbox id through a symlink.
        let containerd = self.cri.containerd();
        let vm_name = std::fs::read_link(containerd.hull_state_dir().join(&self.id))
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|_| self.id.clone());
        Traces {
            ids,
            pids,
            netns,
            veths,
            ipam_dir: network.ipam_dir.clone(),
            cgroup_parent: self.cgroup_parent(),
            sandbox_cgroup: format!("{}/{vm_name}", containerd.hull_cgroup_parent()),
        }
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let client = self.cri.client();
        if let Err(e) = client.stop_pod_sandbox(&self.id) {
            eprintln!("removing pod {}: {e}", self.name);
        }
        if let Err(e) = client.remove_pod_sandbox(&self.id) {
            eprintln!("removing pod {}: {e}", self.name);
        }
    }
}

/// containerd's verbose `info` map carries one JSON document under "info".
fn verbose_info(info: &HashMap<String, String>) -> serde_json::Value {
    info.get("info")
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// What identifies a pod's resources on the host.
struct Traces {
    /// The sandbox's and its containers' ids.
    ids: Vec<String>,
    /// The sandbox's and its containers' processes.
    pids: Vec<u32>,
    netns: Option<PathBuf>,
    veths: Vec<String>,
    ipam_dir: PathBuf,
    cgroup_parent: String,
    /// Hull's host cgroup of the pod's sandbox (under a runc pod: none).
    sandbox_cgroup: String,
}

impl Traces {
    fn footprint(&self) -> PodFootprint {
        let mut processes: Vec<(u32, String)> = self
            .pids
            .iter()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .map(|&pid| (pid, cmdline(pid)))
            .collect();
        // Shims and VMMs name the sandbox (or a container) on their command
        // line.
        for id in &self.ids {
            processes.extend(processes_mentioning(Path::new(id), LEFTOVER_KINDS));
        }
        // Hull's VMM, virtiofsd and vsock backend, by their cgroup.
        let sandbox_cgroups = cgroup_dirs(&self.sandbox_cgroup);
        processes.extend(processes_in(&sandbox_cgroups));
        processes.sort();
        processes.dedup();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts = mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| {
                self.ids.iter().any(|id| point.contains(id.as_str()))
                    || self.netns.as_ref().is_some_and(|ns| Path::new(point) == ns)
            })
            .map(PathBuf::from)
            .collect();
        let netns = self
            .netns
            .iter()
            .filter(|ns| ns.exists())
            .cloned()
            .collect();
        let interfaces = self
            .veths
            .iter()
            .filter(|name| Path::new("/sys/class/net").join(name).exists())
            .cloned()
            .collect();
        // host-local keeps a file per allocated IP holding the container id.
        let ip_allocations = std::fs::read_dir(&self.ipam_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                std::fs::read_to_string(entry.path())
                    .is_ok_and(|owner| self.ids.iter().any(|id| owner.contains(id.as_str())))
            })
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        // The runtime removes the containers' cgroups; the pod's own (the
        // kubelet's) is removed by teardown afterwards.
        let cgroups = cgroup_dirs(&self.cgroup_parent)
            .into_iter()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .map(|entry| entry.path())
            .chain(sandbox_cgroups)
            .collect();
        PodFootprint {
            processes,
            netns,
            interfaces,
            mounts,
            ip_allocations,
            cgroups,
        }
    }
}

/// A pod's resources on the host; what a removed pod left is empty when
/// it cleaned up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodFootprint {
    /// Pid and command line of the pod's processes, shims and VMMs.
    pub processes: Vec<(u32, String)>,
    /// The pod's network namespace file.
    pub netns: Vec<PathBuf>,
    /// The host end of the pod's veth.
    pub interfaces: Vec<String>,
    /// Mount points naming the pod or its containers, or the netns.
    pub mounts: Vec<PathBuf>,
    /// host-local IP allocations held by the pod.
    pub ip_allocations: Vec<String>,
    /// Cgroups left in the pod's cgroup.
    pub cgroups: Vec<PathBuf>,
}

impl PodFootprint {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}
