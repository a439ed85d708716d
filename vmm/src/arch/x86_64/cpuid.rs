//! CPUID as the guest sees it: what KVM supports, narrowed to what a microVM offers and made
//! to describe the VM's own topology.
//!
//! Topology: one socket, one core per vCPU, one thread per core; vCPU n has APIC id n.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1: family/model, APIC id and the basic feature flags.
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 4: deterministic cache parameters (one subleaf per cache).
const LEAF_CACHE_PARAMS: u32 = 0x4;
/// Leaf 5: MONITOR/MWAIT.
const LEAF_MONITOR: u32 = 0x5;
/// Leaf 6: thermal and power management.
const LEAF_THERMAL_POWER: u32 = 0x6;
/// Leaf 0xa: architectural performance monitoring.
const LEAF_PMU: u32 = 0xa;
/// Leaf 0xb: extended topology.
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
/// Leaf 0x1f: extended topology v2.
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
/// AMD leaf 0x8000_0008: address sizes and core count.
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
/// AMD leaf 0x8000_001e: extended APIC id, compute unit and node ids.
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// Leaf 1 ECX: MONITOR/MWAIT.
const ECX_MONITOR: u32 = 1 << 3;
/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: the LAPIC timer has TSC-deadline mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX: the APIC id and logical processor count fields are valid.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 6 EAX: the APIC timer keeps running in deep C-states (true of KVM's APIC).
const EAX_ARAT: u32 = 1 << 2;

/// Leaf 0xb/0x1f level types (ECX[15:8]).
const LEVEL_TYPE_INVALID: u32 = 0;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// APIC ids are 8 bits in leaf 1 and 0xff is the broadcast id.
pub const MAX_VCPUS: u8 = 254;

/// Errors while normalising CPUID.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    /// The vCPU count is outside 1..=254.
    #[error("A VM needs 1 to {MAX_VCPUS} vCPUs, not {0}")]
    InvalidVcpuCount(u8),
    /// The vCPU index is not below the count.
    #[error("vCPU {id} does not exist in a VM of {count} vCPUs")]
    VcpuOutOfRange { id: u8, count: u8 },
    /// The normalised list is longer than KVM accepts.
    #[error("CPUID has more entries than KVM accepts")]
    TooManyEntries,
}

/// Returns `value` with the `width`-bit field at bit `lo` replaced by `field`.
fn with_field(value: u32, lo: u32, width: u32, field: u32) -> u32 {
    let mask = ((1u64 << width) - 1) as u32;
    (value & !(mask << lo)) | ((field & mask) << lo)
}

/// Bits needed to number `count` items (ceil(log2(count))).
fn id_bits(count: u8) -> u32 {
    u32::from(count).next_power_of_two().trailing_zeros()
}

/// Sets leaf 1's TSC-deadline bit (for KVM_CAP_TSC_DEADLINE_TIMER).
pub fn offer_tsc_deadline(entries: &mut [kvm_cpuid_entry2]) {
    for entry in entries.iter_mut().filter(|e| e.function == LEAF_FEATURES) {
        entry.ecx |= ECX_TSC_DEADLINE;
    }
}

/// Normalises `cpuid` (as from KVM_GET_SUPPORTED_CPUID) for vCPU `vcpu_id` of `vcpu_count`.
pub fn normalize_cpuid(cpuid: &CpuId, vcpu_id: u8, vcpu_count: u8) -> Result<CpuId, CpuidError> {
    let mut entries = cpuid.as_slice().to_vec();
    normalize_entries(&mut entries, vcpu_id, vcpu_count)?;
    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries)
}

/// Normalises the CPUID entry list for vCPU `vcpu_id` of `vcpu_count`: APIC ids and counts,
/// the hypervisor bit, no MONITOR/MWAIT, thermal/power or PMU, and topology leaves that match.
pub fn normalize_entries(
    entries: &mut Vec<kvm_cpuid_entry2>,
    vcpu_id: u8,
    vcpu_count: u8,
) -> Result<(), CpuidError> {
    if vcpu_count == 0 || vcpu_count > MAX_VCPUS {
        return Err(CpuidError::InvalidVcpuCount(vcpu_count));
    }
    if vcpu_id >= vcpu_count {
        return Err(CpuidError::VcpuOutOfRange {
            id: vcpu_id,
            count: vcpu_count,
        });
    }
    let id = u32::from(vcpu_id);
    let count = u32::from(vcpu_count);
    // The cache leaf has 6-bit "minus one" fields.
    let count_minus_one_6bit = (count - 1).min(0x3f);

    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = with_field(entry.ebx, 24, 8, id);
                entry.ebx = with_field(entry.ebx, 16, 8, count);
                entry.ecx = (entry.ecx | ECX_HYPERVISOR) & !ECX_MONITOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                let cache_type = entry.eax & 0x1f;
                if cache_type != 0 {
                    let level = (entry.eax >> 5) & 0x7;
                    // L1 and L2 belong to one core (one thread); L3 is shared by all.
                    let sharing = if level >= 3 {
                        (count - 1).min(0xfff)
                    } else {
                        0
                    };
                    entry.eax = with_field(entry.eax, 14, 12, sharing);
                    entry.eax = with_field(entry.eax, 26, 6, count_minus_one_6bit);
                }
            }
            LEAF_MONITOR | LEAF_PMU => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_THERMAL_POWER => {
                entry.eax &= EAX_ARAT;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_AMD_SIZES => {
                entry.ecx = with_field(entry.ecx, 0, 8, count - 1);
                entry.ecx = with_field(entry.ecx, 12, 4, id_bits(vcpu_count));
            }
            LEAF_AMD_TOPOLOGY => {
                entry.eax = id;
                // Compute unit id = the vCPU, one thread per compute unit.
                entry.ebx = id;
                // Node 0, one node per processor.
                entry.ecx = 0;
            }
            _ => {}
        }
    }

    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_EXT_TOPOLOGY_V2] {
        if entries.iter().any(|e| e.function == leaf) {
            entries.retain(|e| e.function != leaf);
            entries.extend(topology_leaf(leaf, vcpu_id, vcpu_count));
        }
    }
    Ok(())
}

/// The subleaves of leaf 0xb or 0x1f: an SMT level of one thread, a core level of
/// `vcpu_count` cores, then the invalid level that ends the list.
fn topology_leaf(function: u32, vcpu_id: u8, vcpu_count: u8) -> [kvm_cpuid_entry2; 3] {
    let subleaf = |index: u32, shift: u32, processors: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: processors,
        ecx: level_type << 8 | index,
        edx: u32::from(vcpu_id),
        ..Default::default()
    };
    [
        subleaf(0, 0, 1, LEVEL_TYPE_SMT),
        subleaf(
            1,
            id_bits(vcpu_count),
            u32::from(vcpu_count),
            LEVEL_TYPE_CORE,
        ),
        subleaf(2, 0, 0, LEVEL_TYPE_INVALID),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// Roughly what KVM_GET_SUPPORTED_CPUID says on an 8-thread Intel host.
    fn host_like() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0x0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            // APIC id 7, 16 logical processors, CLFLUSH 8; MONITOR, no hypervisor bit; HTT.
            leaf(0x1, 0, [0x906ea, 0x0710_0800, 0x7ffa_320b, 0x1fab_fbff]),
            // L1d (type 1, level 1), L1i (type 2, level 1), L2 (type 3, level 2),
            // L3 (type 3, level 3) shared by 16, 8 cores; then the end marker.
            leaf(0x4, 0, [0x1c00_4121, 0x01c0_003f, 0x3f, 0]),
            leaf(0x4, 1, [0x1c00_4122, 0x01c0_003f, 0x3f, 0]),
            leaf(0x4, 2, [0x1c00_4143, 0x00c0_003f, 0x3ff, 0]),
            leaf(0x4, 3, [0x1c03_c163, 0x03c0_003f, 0x2fff, 6]),
            leaf(0x4, 4, [0, 0, 0, 0]),
            leaf(0x5, 0, [0x40, 0x40, 0x3, 0x11142120]),
            leaf(0x6, 0, [0x27f7, 0x2, 0x9, 0]),
            leaf(0x7, 0, [0, 0x029c_67af, 0x4000_0000, 0xbc00_0400]),
            leaf(0xa, 0, [0x0760_3004, 0, 0, 0x603]),
            leaf(0xb, 0, [1, 2, 0x100, 7]),
            leaf(0xb, 1, [4, 8, 0x201, 7]),
            leaf(0x8000_0008, 0, [0x3027, 0, 0, 0]),
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    #[test]
    fn leaf_1_gets_apic_id_count_and_hypervisor_bit() {
        let mut entries = host_like();
        normalize_entries(&mut entries, 2, 4).unwrap();
        let l1 = find(&entries, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size must stay");
        assert_ne!(l1.ecx & (1 << 31), 0);
        assert_eq!(l1.ecx & (1 << 3), 0, "MONITOR must be hidden");
        assert_eq!(l1.ecx & !(1 << 31 | 1 << 3), 0x7ffa_320b & !(1 << 3));
        assert_ne!(l1.edx & (1 << 28), 0);
        assert_eq!(l1.eax, 0x906ea);

        let mut entries = host_like();
        normalize_entries(&mut entries, 0, 1).unwrap();
        let l1 = find(&entries, 1, 0);
        assert_eq!(l1.ebx >> 16, 0x0001);
        assert_eq!(l1.edx & (1 << 28), 0, "HTT off for a single vCPU");
    }

    #[test]
    fn tsc_deadline_is_offered_in_leaf_1() {
        let mut entries = host_like();
        for entry in entries.iter_mut().filter(|e| e.function == 1) {
            entry.ecx &= !(1 << 24);
        }
        offer_tsc_deadline(&mut entries);
        assert_ne!(find(&entries, 1, 0).ecx & (1 << 24), 0);
        normalize_entries(&mut entries, 0, 2).unwrap();
        assert_ne!(
            find(&entries, 1, 0).ecx & (1 << 24),
            0,
            "normalizing keeps it"
        );
    }

    #[test]
    fn cache_leaf_describes_the_vm() {
        let mut entries = host_like();
        normalize_entries(&mut entries, 0, 3).unwrap();
        for index in 0..3 {
            let cache = find(&entries, 4, index);
            assert_eq!((cache.eax >> 14) & 0xfff, 0, "L1/L2 are per core");
            assert_eq!(cache.eax >> 26, 2, "3 cores - 1");
        }
        let l3 = find(&entries, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 2);
        assert_eq!(l3.eax >> 26, 2);
        assert_eq!(l3.eax & 0x3fff, 0x0163, "type, level and flags stay");
        assert_eq!(l3.ebx, 0x03c0_003f);
        assert_eq!(find(&entries, 4, 4).eax, 0, "end marker stays empty");
    }

    #[test]
    fn power_pmu_and_monitor_are_hidden() {
        let mut entries = host_like();
        normalize_entries(&mut entries, 0, 1).unwrap();
        let l5 = find(&entries, 5, 0);
        assert_eq!([l5.eax, l5.ebx, l5.ecx, l5.edx], [0; 4]);
        let l6 = find(&entries, 6, 0);
        assert_eq!([l6.eax, l6.ebx, l6.ecx, l6.edx], [0x4, 0, 0, 0]);
        let la = find(&entries, 0xa, 0);
        assert_eq!([la.eax, la.ebx, la.ecx, la.edx], [0; 4]);
        // Unrelated leaves are untouched.
        assert_eq!(find(&entries, 7, 0), host_like()[9]);
        assert_eq!(find(&entries, 0, 0), host_like()[0]);
    }

    #[test]
    fn extended_topology_is_rebuilt() {
        let mut entries = host_like();
        normalize_entries(&mut entries, 5, 6).unwrap();
        let topo: Vec<_> = entries.iter().filter(|e| e.function == 0xb).collect();
        assert_eq!(topo.len(), 3);
        let smt = find(&entries, 0xb, 0);
        assert_eq!([smt.eax, smt.ebx, smt.ecx, smt.edx], [0, 1, 0x100, 5]);
        let core = find(&entries, 0xb, 1);
        assert_eq!([core.eax, core.ebx, core.ecx, core.edx], [3, 6, 0x201, 5]);
        let end = find(&entries, 0xb, 2);
        assert_eq!([end.eax, end.ebx, end.ecx, end.edx], [0, 0, 2, 5]);
        assert!(topo
            .iter()
            .all(|e| e.flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX));
        // No 0x1f leaf appears when KVM had none.
        assert!(entries.iter().all(|e| e.function != 0x1f));
    }

    #[test]
    fn topology_v2_is_rebuilt_when_present() {
        let mut entries = host_like();
        entries.push(leaf(0x1f, 0, [1, 2, 0x100, 9]));
        normalize_entries(&mut entries, 1, 2).unwrap();
        let core = find(&entries, 0x1f, 1);
        assert_eq!([core.eax, core.ebx, core.ecx, core.edx], [1, 2, 0x201, 1]);
        assert_eq!(find(&entries, 0x1f, 0).edx, 1);
    }

    #[test]
    fn amd_core_count() {
        let mut entries = host_like();
        entries.push(leaf(0x8000_001e, 0, [9, 0x100, 0x3, 0]));
        normalize_entries(&mut entries, 3, 5).unwrap();
        let sizes = find(&entries, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xff, 4);
        assert_eq!((sizes.ecx >> 12) & 0xf, 3);
        assert_eq!(sizes.eax, 0x3027);
        let topo = find(&entries, 0x8000_001e, 0);
        assert_eq!([topo.eax, topo.ebx, topo.ecx], [3, 3, 0]);
    }

    #[test]
    fn invalid_topology_is_refused() {
        let mut entries = host_like();
        assert_eq!(
            normalize_entries(&mut entries, 0, 0),
            Err(CpuidError::InvalidVcpuCount(0))
        );
        assert_eq!(
            normalize_entries(&mut entries, 0, 255),
            Err(CpuidError::InvalidVcpuCount(255))
        );
        assert_eq!(
            normalize_entries(&mut entries, 4, 4),
            Err(CpuidError::VcpuOutOfRange { id: 4, count: 4 })
        );
        assert_eq!(entries, host_like(), "a refused call changes nothing");
    }

    #[test]
    fn large_counts_saturate_the_cache_fields() {
        let mut entries = host_like();
        normalize_entries(&mut entries, 200, 254).unwrap();
        let l3 = find(&entries, 4, 3);
        assert_eq!(l3.eax >> 26, 0x3f);
        assert_eq!((l3.eax >> 14) & 0xfff, 253);
        assert_eq!(find(&entries, 1, 0).ebx >> 24, 200);
        assert_eq!(find(&entries, 0xb, 1).eax, 8);
    }

    #[test]
    fn normalize_kvm_cpuid() {
        let cpuid = CpuId::from_entries(&host_like()).unwrap();
        let out = normalize_cpuid(&cpuid, 1, 2).unwrap();
        // 0xb had two subleaves and now has three.
        assert_eq!(out.as_slice().len(), host_like().len() + 1);
        assert_eq!(find(out.as_slice(), 1, 0).ebx >> 24, 1);
        // The input is left alone.
        assert_eq!(cpuid.as_slice(), host_like().as_slice());
    }
}
