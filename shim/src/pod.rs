//! What a container's spec says about its Kubernetes pod: its role (the
//! CRI sandbox container, a container of a pod, or a plain container), the
//! pod's network namespace, the size its VM should have, and whether it asks
//! for something a VM cannot give it (the host's network, PID or IPC
//! namespace, or host devices).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::config::Config;

/// CRI's annotation telling the pause container from the pod's containers.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// CRI's annotations with the pod's resources (sum of its containers'
/// limits), on the sandbox container's spec.
pub const SANDBOX_CPU_PERIOD_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const SANDBOX_CPU_QUOTA_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_MEMORY_ANNOTATION: &str = "io.kubernetes.cri.sandbox-memory";

/// Devices every container gets from the runtime; anything else in
/// `linux.devices` is a host device, which a VM does not have.
const DEFAULT_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/console",
    "/dev/ptmx",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// CRI's pause container: it starts the pod's VM.
    Sandbox,
    /// An application container of a CRI pod.
    PodContainer,
    /// A container started without CRI (ctr, `hull run`): its own VM.
    Standalone,
}

impl Role {
    pub fn of(spec: &Spec) -> Role {
        match annotation(spec, CONTAINER_TYPE_ANNOTATION) {
            Some("sandbox") => Role::Sandbox,
            Some("container") => Role::PodContainer,
            _ => Role::Standalone,
        }
    }

    pub fn is_pod(self) -> bool {
        self != Role::Standalone
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error(
        "cannot run a pod with hostNetwork: the pod's network is its VM's own; run it with the runc handler"
    )]
    HostNetwork,
    #[error(
        "cannot share the host's {0} namespace (hostPID/hostIPC): the pod runs in its own VM; run it with the runc handler"
    )]
    HostNamespace(&'static str),
    #[error(
        "cannot pass host devices into the pod's VM (privileged containers and device plugins): {0}"
    )]
    HostDevices(String),
    #[error("Invalid pod resource annotation {key}={value}: {reason}")]
    Resources {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn namespace(spec: &Spec, kind: LinuxNamespaceType) -> Option<Option<PathBuf>> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == kind)
        .map(|ns| ns.path().clone())
}

/// The host path of the pod's network namespace, which CNI set up, from the
/// sandbox container's spec.
pub fn network_namespace(spec: &Spec) -> Option<PathBuf> {
    namespace(spec, LinuxNamespaceType::Network).flatten()
}

/// Refuses what a pod in a VM cannot have, before anything is started.
pub fn check_supported(spec: &Spec, role: Role) -> Result<(), PodError> {
    if role.is_pod() {
        if role == Role::Sandbox && namespace(spec, LinuxNamespaceType::Network).is_none() {
            return Err(PodError::HostNetwork);
        }
        if namespace(spec, LinuxNamespaceType::Pid).is_none() {
            return Err(PodError::HostNamespace("PID"));
        }
        if namespace(spec, LinuxNamespaceType::Ipc).is_none() {
            return Err(PodError::HostNamespace("IPC"));
        }
    }
    let host_devices: Vec<String> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
        .map(|d| d.path().display().to_string())
        .filter(|path| !DEFAULT_DEVICES.contains(&path.as_str()))
        .collect();
    if !host_devices.is_empty() {
        let mut shown = host_devices.iter().take(3).cloned().collect::<Vec<_>>();
        if host_devices.len() > 3 {
            shown.push(format!("and {} more", host_devices.len() - 3));
        }
        return Err(PodError::HostDevices(shown.join(", ")));
    }
    Ok(())
}

/// The VM's size: the configured defaults, or, when the sandbox's spec
/// carries the pod's limits, those limits plus the configured overhead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

pub fn vm_size(spec: &Spec, config: &Config) -> Result<VmSize, PodError> {
    let number = |key: &'static str| -> Result<Option<u64>, PodError> {
        match annotation(spec, key) {
            None | Some("") => Ok(None),
            Some(value) => value
                .parse::<i64>()
                .map(Some)
                .map_err(|_| PodError::Resources {
                    key,
                    value: value.to_owned(),
                    reason: "not an integer",
                }),
        }
        .map(|n| n.map(|n| n.max(0) as u64).filter(|n| *n > 0))
    };
    let mut size = VmSize {
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
    };
    if let Some(bytes) = number(SANDBOX_MEMORY_ANNOTATION)? {
        let mib = bytes.div_ceil(1 << 20);
        size.memory_mib =
            u32::try_from(mib + u64::from(config.pod_memory_overhead_mib)).map_err(|_| {
                PodError::Resources {
                    key: SANDBOX_MEMORY_ANNOTATION,
                    value: bytes.to_string(),
                    reason: "too large",
                }
            })?;
    }
    if let (Some(quota), Some(period)) = (
        number(SANDBOX_CPU_QUOTA_ANNOTATION)?,
        number(SANDBOX_CPU_PERIOD_ANNOTATION)?,
    ) {
        let cpus = quota.div_ceil(period) + u64::from(config.pod_vcpus_overhead);
        size.vcpus = cpus.clamp(1, u64::from(crate::config::MAX_VCPUS)) as u32;
    }
    Ok(size)
}

/// Is `path` one of `/proc/<pid>/ns/<kind>`, a namespace of a process the
/// guest knows (CRI names the pod's namespaces by the pause container's pid,
/// which is its pid in the guest)?
pub fn is_process_namespace(path: &Path) -> bool {
    let mut parts = path.components().skip(1);
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(proc_), Some(pid), Some(ns), Some(_), None)
            if proc_.as_os_str() == "proc"
                && ns.as_os_str() == "ns"
                && pid.as_os_str().to_str().is_some_and(|p| p.parse::<u32>().is_ok())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: serde_json::Value) -> Spec {
        serde_json::from_value(value).unwrap()
    }

    fn pod_spec(kind: &str, namespaces: serde_json::Value) -> Spec {
        spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": { CONTAINER_TYPE_ANNOTATION: kind },
            "linux": { "namespaces": namespaces },
        }))
    }

    #[test]
    fn roles_come_from_the_cri_annotation() {
        assert_eq!(
            Role::of(&pod_spec("sandbox", serde_json::json!([]))),
            Role::Sandbox
        );
        assert_eq!(
            Role::of(&pod_spec("container", serde_json::json!([]))),
            Role::PodContainer
        );
        assert_eq!(Role::of(&Spec::default()), Role::Standalone);
    }

    #[test]
    fn host_network_pid_and_ipc_are_refused_for_pods() {
        let all = serde_json::json!([
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
        ]);
        let sandbox = pod_spec("sandbox", all);
        assert_eq!(check_supported(&sandbox, Role::Sandbox), Ok(()));
        assert_eq!(
            network_namespace(&sandbox),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );

        let host_net = pod_spec(
            "sandbox",
            serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]),
        );
        let err = check_supported(&host_net, Role::Sandbox).unwrap_err();
        assert_eq!(err, PodError::HostNetwork);
        assert!(err.to_string().contains("hostNetwork"), "{err}");

        let host_pid = pod_spec(
            "container",
            serde_json::json!([{"type": "network", "path": "/proc/7/ns/net"}, {"type": "ipc"}]),
        );
        assert_eq!(
            check_supported(&host_pid, Role::PodContainer),
            Err(PodError::HostNamespace("PID"))
        );
        // Without CRI, a container without its own namespaces simply runs
        // in the guest's.
        assert_eq!(check_supported(&Spec::default(), Role::Standalone), Ok(()));
    }

    #[test]
    fn host_devices_are_refused_by_name() {
        let privileged = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": { "devices": [
                {"path": "/dev/null", "type": "c", "major": 1, "minor": 3},
                {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0},
                {"path": "/dev/kvm", "type": "c", "major": 10, "minor": 232},
            ]},
        }));
        let err = check_supported(&privileged, Role::Standalone)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/dev/sda, /dev/kvm"), "{err}");
        assert!(!err.contains("/dev/null"), "{err}");
    }

    #[test]
    fn vm_size_is_the_pod_limits_plus_overhead() {
        let config = Config::default();
        let sized = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {
                SANDBOX_MEMORY_ANNOTATION: "268435456",
                SANDBOX_CPU_QUOTA_ANNOTATION: "150000",
                SANDBOX_CPU_PERIOD_ANNOTATION: "100000",
            },
        }));
        assert_eq!(
            vm_size(&sized, &config).unwrap(),
            VmSize {
                vcpus: 2 + config.pod_vcpus_overhead,
                memory_mib: 256 + config.pod_memory_overhead_mib,
            }
        );
        assert_eq!(
            vm_size(&Spec::default(), &config).unwrap(),
            VmSize {
                vcpus: config.vcpus,
                memory_mib: config.memory_mib,
            }
        );
        let bad = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": { SANDBOX_MEMORY_ANNOTATION: "lots" },
        }));
        let err = vm_size(&bad, &config).unwrap_err().to_string();
        assert!(err.contains("sandbox-memory=lots"), "{err}");
    }

    #[test]
    fn process_namespaces_are_recognised() {
        assert!(is_process_namespace(Path::new("/proc/42/ns/net")));
        assert!(!is_process_namespace(Path::new("/var/run/netns/cni-1")));
        assert!(!is_process_namespace(Path::new("/proc/self/ns/net")));
        assert!(!is_process_namespace(Path::new("/proc/42/ns/net/x")));
    }
}
