//! What a sandbox is started with, found before anything starts: the
//! backend for this host, the programs it needs, the VMM's jail and the
//! guest's kernel command line.

use std::path::{Path, PathBuf};

use super::{SandboxError, SandboxOptions, SandboxPaths};
use crate::config::Config;
use crate::host::Virtualization;
use crate::hypervisor::builtin::{Builtin, VmmJail};
use crate::hypervisor::qemu::{Qemu, QemuJail};
use crate::hypervisor::{Backend, Hypervisor, ResolvedAccelerator};
use crate::sys::process::find_program;

/// Hull's part of the guest kernel command line.
pub(super) const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1 pci=off";

/// What a sandbox is started with, found before anything is started.
pub(super) struct Launch {
    pub(super) backend: Backend,
    pub(super) hypervisor: Box<dyn Hypervisor>,
    pub(super) virtiofsd: PathBuf,
    /// hull-vmm, which jails virtiofsd (and QEMU).
    pub(super) jailer: PathBuf,
    /// The uid and gid the VMM (and QEMU's vsock backend) run as.
    pub(super) vmm_ids: (u32, u32),
}

/// The programs a sandbox runs, found on this host.
pub(super) struct Programs {
    backend: Backend,
    vmm: PathBuf,
    /// QEMU, for the QEMU backend.
    qemu: Option<PathBuf>,
    virtiofsd: PathBuf,
}

impl Programs {
    /// Picks the backend for this host and finds what it needs.
    pub(super) fn find(
        config: &Config,
        options: &SandboxOptions,
        host: Virtualization,
    ) -> Result<Self, SandboxError> {
        let backend = Backend::select(config, host)?;
        if backend == Backend::Builtin {
            Builtin::check_vcpus(options.size.vcpus)?;
        }
        let vmm =
            find_vmm(&config.vmm).ok_or_else(|| SandboxError::MissingVmm(config.vmm.clone()))?;
        let qemu = match backend {
            Backend::Builtin => None,
            Backend::Qemu(_) => Some(
                find_program(&config.qemu)
                    .ok_or_else(|| SandboxError::MissingQemu(config.qemu.clone()))?,
            ),
        };
        let virtiofsd = find_program(&config.virtiofsd)
            .ok_or_else(|| SandboxError::MissingVirtiofsd(config.virtiofsd.clone()))?;
        Ok(Programs {
            backend,
            vmm,
            qemu,
            virtiofsd,
        })
    }
}

impl Launch {
    /// Picks the backend for this host and finds the programs it needs;
    /// touches nothing.
    pub(super) fn prepare(
        config: &Config,
        paths: &SandboxPaths,
        options: &SandboxOptions,
        host: Virtualization,
        vmm_ids: (u32, u32),
    ) -> Result<Launch, SandboxError> {
        let Programs {
            backend,
            vmm,
            qemu,
            virtiofsd,
        } = Programs::find(config, options, host)?;
        let jail = builtin_jail(paths, vmm_ids);
        let hypervisor: Box<dyn Hypervisor> = match (backend, qemu) {
            (Backend::Qemu(accelerator), Some(qemu)) => {
                let jail = QemuJail {
                    jailer: vmm.clone(),
                    root: jail.root,
                    uid: jail.uid,
                    gid: jail.gid,
                };
                Box::new(Qemu::new(qemu, accelerator, &paths.vhost_vsock, jail))
            }
            _ => Box::new(Builtin::new(vmm.clone(), &paths.vmm_config, jail)),
        };
        Ok(Launch {
            backend,
            hypervisor,
            virtiofsd,
            jailer: vmm,
            vmm_ids,
        })
    }
}

/// hull-vmm: as configured, and for a bare name first next to this
/// program (where `hull install` and cargo put both).
fn find_vmm(configured: &Path) -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(configured))
        .filter(|p| configured.components().count() == 1 && p.is_file());
    beside.or_else(|| find_program(configured))
}

/// The VMM's jail: the sandbox directory, the sandbox's VMM uid/gid.
pub(super) fn builtin_jail(paths: &SandboxPaths, (uid, gid): (u32, u32)) -> VmmJail {
    VmmJail {
        // hull-vmm wants it absolute; a relative `state_dir` is the shim's.
        root: std::path::absolute(&paths.dir).unwrap_or_else(|_| paths.dir.clone()),
        uid,
        gid,
    }
}

/// Hull's kernel command line for `backend`.
pub(super) fn kernel_cmdline(config: &Config, backend: Backend, tsc_khz: Option<u64>) -> String {
    let mut cmdline = BASE_CMDLINE.to_owned();
    if backend == Backend::Builtin {
        // The agent ends the VM with a restart; hull-vmm has no ACPI, so the
        // kernel resets through the i8042, which hull-vmm ends the VM on.
        cmdline.push_str(" reboot=k");
    }
    if backend == Backend::Qemu(ResolvedAccelerator::Tcg) {
        if let Some(khz) = tsc_khz {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        // QEMU/TCG derives the guest's TSC from the host's monotonic clock,
        // so the kernel's check of it against the HPET (every 0.5 s, an
        // emulated device read each time) only keeps an idle guest awake:
        // `hull bench --idle 10` measured 0.83% and 1.38% of a CPU per idle
        // sandbox with it, 0.31% and 0.34% without.
        cmdline.push_str(" tsc=reliable");
    }
    if !config.kernel_params.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&config.kernel_params);
    }
    cmdline
}
