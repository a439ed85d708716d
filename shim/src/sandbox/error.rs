//! What can go wrong starting a sandbox, each naming what to look at or do.

use std::path::PathBuf;
use std::time::Duration;

use super::cgroup::CgroupError;
use crate::{agent_client, hypervisor, network, rootfs};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what} not found at {path}: {hint}")]
    MissingAsset {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("{0} not found: install QEMU with `make deps` (Debian package qemu-system-x86)")]
    MissingQemu(PathBuf),
    #[error("{0} not found: install it with `make deps` (cargo install virtiofsd)")]
    MissingVirtiofsd(PathBuf),
    #[error("{0} not found: hull-vmm runs the VM (hypervisor = \"builtin\") and, with QEMU, jails QEMU and virtiofsd and serves vsock; install it with `make install` (`hull install` puts it next to the shim) or set `vmm` in Hull's configuration to its path")]
    MissingVmm(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot start {program} ({hint}): {source}")]
    Spawn {
        program: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} exited ({status}); see {log}", log = log.display())]
    Exited {
        program: String,
        status: String,
        log: PathBuf,
    },
    #[error("{program} did not get ready; see {log}", log = log.display())]
    NotReady { program: String, log: PathBuf },
    #[error("{0}")]
    Cancelled(String),
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::HypervisorError),
    #[error("The VM did not boot: {source}{queued}; guest console log: {log}", log = log.display(), queued = queued_note(*queued))]
    Boot {
        #[source]
        source: agent_client::AgentClientError,
        /// How long the boot waited for a boot slot before it started.
        queued: Duration,
        log: PathBuf,
    },
    #[error("The VM stopped while booting ({exit}); guest console log: {log}", log = log.display())]
    VmDied {
        exit: hypervisor::VmExit,
        log: PathBuf,
    },
    #[error("Setting up the sandbox in the guest: {message}; guest console log: {log}", log = log.display())]
    Agent { message: String, log: PathBuf },
    #[error(transparent)]
    Share(#[from] rootfs::ShareError),
    #[error("The sandbox's host cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("virtiofsd_user_namespace = \"on\", but this kernel cannot serve the share to an unprivileged virtiofsd ({0}); set it to \"auto\" or \"off\"")]
    NoIdMapping(String),
    #[error(transparent)]
    InvalidId(#[from] crate::ids::InvalidId),
    #[error(transparent)]
    Network(#[from] network::PodNetworkError),
}

/// The part of a boot error that says the boot queued first.
fn queued_note(queued: Duration) -> String {
    if queued < Duration::from_millis(100) {
        String::new()
    } else {
        format!(" (after waiting {queued:.1?} for a boot slot)")
    }
}
