//! The KVM VM: created with an in-kernel irqchip and PIT, guest memory
//! registered slot by slot.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Where KVM may put the TSS (three pages just below the 4 GiB boundary of
/// the firmware area, unused by Hull's layout).
const TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not 12")]
    ApiVersion(i32),
    #[error("Creating the VM: {0}")]
    Create(#[source] kvm_ioctls::Error),
    #[error("Setting the TSS address: {0}")]
    Tss(#[source] kvm_ioctls::Error),
    #[error("Creating the in-kernel irqchip: {0}")]
    IrqChip(#[source] kvm_ioctls::Error),
    #[error("Creating the in-kernel PIT: {0}")]
    Pit(#[source] kvm_ioctls::Error),
    #[error("Registering guest memory slot {slot}: {source}")]
    Memory {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Registering an irqfd for GSI {gsi}: {source}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Reading the supported CPUID: {0}")]
    Cpuid(#[source] kvm_ioctls::Error),
}

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(VmError::ApiVersion(version));
        }
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(TSS_ADDRESS).map_err(VmError::Tss)?;
        fd.create_irq_chip().map_err(VmError::IrqChip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Vm { kvm, fd })
    }

    /// Hands every region of `memory` to KVM, one slot each.
    pub fn register_memory(&self, memory: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in memory.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .expect("an mmap'ed region has a host address");
            let descriptor = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is an mmap owned by `memory`, which outlives
            // the VM (the builder keeps both until the VM is torn down), and
            // the slot does not overlap another: regions of a GuestMemoryMmap
            // never overlap.
            unsafe { self.fd.set_user_memory_region(descriptor) }
                .map_err(|source| VmError::Memory { slot, source })?;
        }
        Ok(())
    }

    /// Routes `event` to interrupt line `gsi` of the in-kernel irqchip.
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// What KVM can give a vCPU, the TSC-deadline timer included: the
    /// in-kernel LAPIC emulates it, but KVM reports it only as a capability.
    /// With it the guest arms its timer by TSC value and skips calibrating
    /// the LAPIC timer, a busy-wait of its boot.
    pub fn supported_cpuid(&self) -> Result<kvm_bindings::CpuId, VmError> {
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::Cpuid)?;
        if self.kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
            crate::arch::x86_64::cpuid::offer_tsc_deadline(cpuid.as_mut_slice());
        }
        Ok(cpuid)
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
