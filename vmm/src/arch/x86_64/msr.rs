//! Model-specific registers every vCPU gets before it first runs.
//!
//! KVM leaves the syscall MSRs as they were after reset; Linux expects them zeroed until it
//! programs them itself. Fast strings are enabled (as firmware does), and the MTRRs default to
//! write-back so the guest does not treat its RAM as uncacheable.

use kvm_bindings::kvm_msr_entry;

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE: fast-string operations (`rep movs`/`stos`) enabled.
pub const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled.
pub const MTRR_ENABLE: u64 = 1 << 11;
/// IA32_MTRR_DEF_TYPE: default memory type write-back.
pub const MTRR_MEM_TYPE_WB: u64 = 0x6;

fn msr(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// The MSR values to set on every vCPU at boot (KVM_SET_MSRS input).
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn boot_msrs() {
        let entries = boot_msr_entries();
        let by_index: HashMap<u32, u64> = entries.iter().map(|e| (e.index, e.data)).collect();
        assert_eq!(by_index.len(), entries.len(), "an MSR is listed twice");
        for index in [
            0x174,
            0x175,
            0x176,
            0xc000_0081,
            0xc000_0082,
            0xc000_0083,
            0xc000_0084,
            0xc000_0102,
            0x10,
        ] {
            assert_eq!(by_index.get(&index), Some(&0), "MSR {index:#x}");
        }
        assert_eq!(by_index.get(&0x1a0), Some(&1));
        assert_eq!(by_index.get(&0x2ff), Some(&0x806));
        assert!(entries.iter().all(|e| e.reserved == 0));
    }
}
