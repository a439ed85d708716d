//! x86_64 boot support.
//!
//! - `layout`: every guest physical address the boot path uses.
//! - `boot`: the E820 map, the Linux zero page and the PVH start info.
//! - `regs`: GDT, IDT, page tables and the initial register values.
//! - `msr`: boot MSR values.
//! - `cpuid`: CPUID normalised for one vCPU of the VM.
//! - `mptable`: the Intel MP table, where a guest without ACPI finds its processors.
//! - `lapic`: the local interrupt pins of every vCPU's local APIC.

pub mod boot;
pub mod cpuid;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Xen PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity paging, RSI = zero page.
    Linux64,
}
