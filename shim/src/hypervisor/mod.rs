//! The `Hypervisor` trait: what the sandbox needs from a VMM, and nothing of
//! how it talks to KVM. Two backends: `builtin` (hull-vmm, Hull's own KVM
//! VMM) and `qemu`; [`Backend::select`] picks one for the host.

pub mod builtin;
pub mod process;
pub mod qemu;

use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

pub use self::process::VmmKiller;
use crate::config::{Accelerator, Config, HypervisorKind};
use crate::host::Virtualization;

/// Everything a backend needs to start one VM, whichever backend it is.
#[derive(Debug, Clone)]
pub struct VmParams {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The hybrid-vsock socket the shim reaches the agent through.
    pub vsock_uds: PathBuf,
    pub guest_cid: u64,
    /// vhost-user socket of virtiofsd and the tag the guest mounts.
    pub fs_socket: PathBuf,
    pub fs_tag: String,
    /// The guest's serial console log (kernel and agent), named in errors;
    /// the VMM writes to the pipe in [`VmmHost::console`].
    pub console_log: PathBuf,
    /// The pod's NIC, if it has a network.
    pub net: Option<NetDevice>,
}

/// Host resources a VMM's processes start with, besides its configuration.
#[derive(Debug)]
pub struct VmmHost {
    /// Their stdout and stderr: the pipe of the capped console log.
    pub console: OwnedFd,
    /// `cgroup.procs` of the sandbox's cgroups, which each process the
    /// backend starts joins before it execs.
    pub cgroup_procs: Vec<PathBuf>,
}

impl VmmHost {
    /// The cgroup files, open for one process to join them.
    pub fn open_cgroup_procs(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.cgroup_procs
            .iter()
            .map(|path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map(OwnedFd::from)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
            })
            .collect()
    }
}

/// A virtio-net device backed by an open tap.
#[derive(Debug, Clone)]
pub struct NetDevice {
    /// Stays open in the caller for as long as the VM runs.
    pub tap_fd: RawFd,
    pub mac: String,
}

/// The backend that runs a sandbox's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// hull-vmm, on KVM with hardware virtualization.
    Builtin,
    Qemu(ResolvedAccelerator),
}

impl Backend {
    /// Picks the backend the configuration asks for on a host with `host`
    /// virtualization: `auto` is the built-in VMM where KVM has VT-x/AMD-V,
    /// else QEMU. The built-in VMM is refused where it cannot boot Linux.
    pub fn select(config: &Config, host: Virtualization) -> Result<Self, HypervisorError> {
        match (config.hypervisor, host) {
            (HypervisorKind::Builtin | HypervisorKind::Auto, Virtualization::Hardware) => {
                Ok(Backend::Builtin)
            }
            (HypervisorKind::Builtin, host) => {
                Err(HypervisorError::BuiltinNeedsHardware(host.describe()))
            }
            (HypervisorKind::Qemu | HypervisorKind::Auto, host) => Ok(Backend::Qemu(
                ResolvedAccelerator::resolve(config.accelerator, host)?,
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Builtin => write!(f, "hull-vmm"),
            Backend::Qemu(ResolvedAccelerator::Kvm) => write!(f, "QEMU/KVM"),
            Backend::Qemu(ResolvedAccelerator::Tcg) => write!(f, "QEMU/TCG"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccelerator {
    Kvm,
    Tcg,
}

impl ResolvedAccelerator {
    /// Picks the accelerator for `wanted` on a host with `host`
    /// virtualization. KVM is only chosen where it can boot a Linux guest.
    pub fn resolve(wanted: Accelerator, host: Virtualization) -> Result<Self, HypervisorError> {
        match (wanted, host) {
            (Accelerator::Tcg, _) => Ok(ResolvedAccelerator::Tcg),
            (Accelerator::Auto, Virtualization::Hardware)
            | (Accelerator::Kvm, Virtualization::Hardware) => Ok(ResolvedAccelerator::Kvm),
            (Accelerator::Auto, _) => Ok(ResolvedAccelerator::Tcg),
            (Accelerator::Kvm, host) => Err(HypervisorError::NoKvm(host.describe())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("accelerator = \"kvm\" cannot work here: {0}; use \"tcg\" or \"auto\"")]
    NoKvm(&'static str),
    #[error(
        "hypervisor = \"builtin\" cannot run here ({0}). The built-in VMM (hull-vmm) needs KVM with hardware virtualization (VT-x/AMD-V) to boot Hull's Linux guest, which KVM without it, PVM included, cannot. Set hypervisor = \"qemu\" (or \"auto\", which uses QEMU on this host)"
    )]
    BuiltinNeedsHardware(&'static str),
    #[error("The built-in VMM runs at most {max} vCPUs and this VM needs {vcpus}: lower the pod's CPU limit or pod_vcpus_overhead, or set hypervisor = \"qemu\"")]
    TooManyVcpus { vcpus: u32, max: u8 },
    #[error("Writing hull-vmm's configuration {path}: {message}")]
    VmmConfig { path: PathBuf, message: String },
    #[error("Cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Waiting for the VMM: {0}")]
    Wait(#[source] std::io::Error),
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The VMM exited by itself (guest power-off, or a crash) with this
    /// status (None when a signal ended it).
    Exited(Option<i32>),
    /// We had to kill it while stopping the sandbox.
    Killed,
    /// We killed it because another part of the sandbox failed.
    Failed(Fault),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Exited(Some(status)) => write!(f, "the VMM exited with status {status}"),
            VmExit::Exited(None) => write!(f, "the VMM was killed by a signal"),
            VmExit::Killed => write!(f, "Hull stopped the VMM"),
            VmExit::Failed(fault) => write!(f, "{fault}"),
        }
    }
}

/// A part of a running sandbox that failed, which ends its VM: a guest
/// whose share or agent is gone cannot run its containers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("{helper} ended ({})", match status {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    })]
    HelperEnded {
        helper: Helper,
        /// None when a signal ended it.
        status: Option<i32>,
    },
    /// The guest agent did not answer a health check in time: a hung guest
    /// kernel, agent, VMM or vsock backend.
    #[error("the guest agent did not answer its health check within {0:?}")]
    AgentSilent(Duration),
    /// The guest's share did not answer the agent: virtiofsd hangs.
    #[error("the sandbox's share (virtiofsd) did not answer the guest")]
    ShareSilent,
    /// The connection to the guest agent broke.
    #[error("the connection to the guest agent broke: {0}")]
    AgentLost(&'static str),
}

/// A helper process of the sandbox, besides the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helper {
    Virtiofsd,
    /// `hull-vmm vsock`, QEMU's vsock device.
    VsockBackend,
}

impl std::fmt::Display for Helper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Helper::Virtiofsd => write!(f, "virtiofsd"),
            Helper::VsockBackend => write!(f, "the vsock backend"),
        }
    }
}

#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Starts the VM; returns once the VMM process runs.
    async fn start(&mut self, config: &VmParams, host: VmmHost) -> Result<(), HypervisorError>;
    /// Waits up to `grace` for the VM to end by itself (after the agent was
    /// told to power off), then kills it.
    async fn stop(&mut self, grace: Duration) -> Result<VmExit, HypervisorError>;
    /// Watches the VMM's exit: `None` while it runs.
    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>>;
    /// The VMM's pid, for accounting and clean-up.
    fn pid(&self) -> Option<u32>;
    /// Kills the running VMM for a fault; `None` before it started.
    fn killer(&self) -> Option<VmmKiller>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(hypervisor: HypervisorKind, host: Virtualization) -> Result<Backend, String> {
        let config = Config {
            hypervisor,
            ..Config::default()
        };
        Backend::select(&config, host).map_err(|e| e.to_string())
    }

    #[test]
    fn auto_is_builtin_only_with_hardware_virtualization() {
        use HypervisorKind::Auto;
        use ResolvedAccelerator::{Kvm, Tcg};
        assert_eq!(select(Auto, Virtualization::Hardware), Ok(Backend::Builtin));
        assert_eq!(select(Auto, Virtualization::Pvm), Ok(Backend::Qemu(Tcg)));
        assert_eq!(select(Auto, Virtualization::None), Ok(Backend::Qemu(Tcg)));
        let config = Config {
            accelerator: Accelerator::Kvm,
            ..Config::default()
        };
        // `accelerator` is QEMU's: auto on hardware still takes hull-vmm.
        assert_eq!(
            Backend::select(&config, Virtualization::Hardware).unwrap(),
            Backend::Builtin
        );
        assert_eq!(
            select(HypervisorKind::Qemu, Virtualization::Hardware),
            Ok(Backend::Qemu(Kvm))
        );
        assert_eq!(
            select(HypervisorKind::Qemu, Virtualization::Pvm),
            Ok(Backend::Qemu(Tcg))
        );
    }

    #[test]
    fn builtin_is_refused_where_kvm_cannot_boot_linux_saying_why_and_what_instead() {
        assert_eq!(
            select(HypervisorKind::Builtin, Virtualization::Hardware),
            Ok(Backend::Builtin)
        );
        for host in [Virtualization::Pvm, Virtualization::None] {
            let err = select(HypervisorKind::Builtin, host).unwrap_err();
            assert!(err.contains(host.describe()), "{err}");
            for part in [
                "hypervisor = \"builtin\"",
                "VT-x/AMD-V",
                "PVM",
                "hypervisor = \"qemu\"",
            ] {
                assert!(err.contains(part), "{part:?} not in {err}");
            }
        }
    }

    #[test]
    fn a_vms_end_says_which_part_failed() {
        let killed = Fault::HelperEnded {
            helper: Helper::Virtiofsd,
            status: None,
        };
        assert_eq!(
            VmExit::Failed(killed).to_string(),
            "virtiofsd ended (killed by a signal)"
        );
        let exited = Fault::HelperEnded {
            helper: Helper::VsockBackend,
            status: Some(1),
        };
        assert_eq!(
            exited.to_string(),
            "the vsock backend ended (exit status 1)"
        );
        assert_eq!(
            VmExit::Exited(Some(0)).to_string(),
            "the VMM exited with status 0"
        );
    }

    #[test]
    fn auto_uses_kvm_only_with_hardware_virtualization() {
        use Accelerator::*;
        use Virtualization::*;
        assert_eq!(
            ResolvedAccelerator::resolve(Auto, Hardware).unwrap(),
            ResolvedAccelerator::Kvm
        );
        assert_eq!(
            ResolvedAccelerator::resolve(Auto, Pvm).unwrap(),
            ResolvedAccelerator::Tcg
        );
        assert_eq!(
            ResolvedAccelerator::resolve(Tcg, Hardware).unwrap(),
            ResolvedAccelerator::Tcg
        );
        let err = ResolvedAccelerator::resolve(Kvm, Pvm)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PVM"), "{err}");
    }
}
