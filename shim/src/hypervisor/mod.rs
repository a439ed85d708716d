//! The `Hypervisor` trait: what the sandbox needs from a VMM, and nothing of
//! how it talks to KVM. QEMU is the only backend so far.

pub mod process;
pub mod qemu;

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::config::Accelerator;
use crate::host::Virtualization;

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub accelerator: ResolvedAccelerator,
    /// vhost-user socket of the vsock device backend.
    pub vsock_socket: PathBuf,
    pub guest_cid: u64,
    /// vhost-user socket of virtiofsd and the tag the guest mounts.
    pub fs_socket: PathBuf,
    pub fs_tag: String,
    /// The guest's serial console (kernel and agent log).
    pub console_log: PathBuf,
    /// The pod's NIC, if it has a network.
    pub net: Option<NetDevice>,
}

/// A virtio-net device backed by an open tap.
#[derive(Debug, Clone)]
pub struct NetDevice {
    /// Stays open in the caller for as long as the VM runs.
    pub tap_fd: RawFd,
    pub mac: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccelerator {
    Kvm,
    Tcg,
}

impl ResolvedAccelerator {
    /// Picks the accelerator for `wanted` on a host with `host`
    /// virtualization. KVM is only chosen where it can boot a Linux guest.
    pub fn resolve(wanted: Accelerator, host: Virtualization) -> Result<Self, Error> {
        match (wanted, host) {
            (Accelerator::Tcg, _) => Ok(ResolvedAccelerator::Tcg),
            (Accelerator::Auto, Virtualization::Hardware)
            | (Accelerator::Kvm, Virtualization::Hardware) => Ok(ResolvedAccelerator::Kvm),
            (Accelerator::Auto, _) => Ok(ResolvedAccelerator::Tcg),
            (Accelerator::Kvm, host) => Err(Error::NoKvm(host.describe())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("accelerator = \"kvm\" cannot work here: {0}; use \"tcg\" or \"auto\"")]
    NoKvm(&'static str),
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
    /// We had to kill it.
    Killed,
}

#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Starts the VM; returns once the VMM process runs.
    async fn start(&mut self, config: &VmConfig) -> Result<(), Error>;
    /// Waits up to `grace` for the VM to end by itself (after the agent was
    /// told to power off), then kills it.
    async fn stop(&mut self, grace: Duration) -> Result<VmExit, Error>;
    /// Watches the VMM's exit: `None` while it runs.
    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>>;
    /// The VMM's pid, for accounting and clean-up.
    fn pid(&self) -> Option<u32>;
}

#[cfg(test)]
mod tests {
    use super::*;

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
