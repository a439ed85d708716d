//! The Intel MultiProcessor table (MP specification 1.4, chapter 4): how a guest without
//! ACPI finds its application processors, its I/O APIC and the routing of the ISA
//! interrupts.
//!
//! - The MP floating pointer (16 bytes, `_MP_`) at `MPTABLE_START`: 16-byte aligned in the
//!   last KiB of base memory, one of the places Linux scans for it.
//! - Right after it, the configuration table (`PCMP`): a 44-byte header, then its entries
//!   in ascending type order, as the specification asks: a processor per vCPU (APIC id =
//!   vCPU index, the first is the bootstrap processor), the ISA bus, the I/O APIC, an I/O
//!   interrupt entry per I/O APIC pin (ISA IRQ n on pin n, as KVM's default GSI routing
//!   has it), and ExtINT on LINT0 and NMI on LINT1 of every local APIC.
//!
//! Each of the two structures has a checksum byte that makes all its bytes add up to 0.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{APIC_START, HIGH_MEMORY_START, IOAPIC_START, IRQ_MAX, MPTABLE_START};

/// Most vCPUs the table can describe: APIC ids have 8 bits, 0xff means "all", and the I/O
/// APIC takes the id after the last processor.
pub const MAX_VCPUS: u8 = 0xfe;

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
/// Every entry other than a processor.
const ENTRY_SIZE: usize = 8;
/// I/O APIC pins, each with an I/O interrupt entry.
const IOAPIC_PINS: usize = IRQ_MAX as usize + 1;

const SPEC_REVISION_1_4: u8 = 4;
const OEM_ID: &[u8; 8] = b"HULL    ";
const PRODUCT_ID: &[u8; 12] = b"HULL-VMM    ";

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INTERRUPT_INT: u8 = 0;
const INTERRUPT_NMI: u8 = 1;
const INTERRUPT_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
const IOAPIC_ENABLED: u8 = 1 << 0;
/// Version registers of KVM's in-kernel local APIC and I/O APIC.
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// CPUID signature (family 6) and feature flags (FPU, APIC) of a processor entry; Linux
/// only prints them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ISA_BUS: u8 = 0;
/// Destination "every local APIC" of a local interrupt entry.
const ALL_LOCAL_APICS: u8 = 0xff;

/// Bytes the floating pointer and the configuration table of `vcpus` processors take.
pub const fn table_size(vcpus: u8) -> usize {
    FLOATING_POINTER_SIZE
        + HEADER_SIZE
        + vcpus as usize * PROCESSOR_ENTRY_SIZE
        + (2 + IOAPIC_PINS + 2) * ENTRY_SIZE
}

// The largest table stays inside the area the E820 map reserves.
const _: () = assert!(MPTABLE_START + table_size(MAX_VCPUS) as u64 <= HIGH_MEMORY_START);
const _: () = assert!(MPTABLE_START.is_multiple_of(16));

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("The MP table describes 1..={MAX_VCPUS} vCPUs, not {0}")]
    VcpuCount(u8),
    #[error("Cannot write the MP table to guest memory at {MPTABLE_START:#x}")]
    Write(#[source] GuestMemoryError),
}

/// Writes the MP table for `vcpus` vCPUs at `MPTABLE_START`.
pub fn write_mptable(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MpTableError> {
    mem.write_slice(&build(vcpus)?, GuestAddress(MPTABLE_START))
        .map_err(MpTableError::Write)
}

/// The bytes that go at `MPTABLE_START`: floating pointer, then configuration table.
pub fn build(vcpus: u8) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MpTableError::VcpuCount(vcpus));
    }
    let ioapic_id = vcpus;

    let mut entries = Vec::with_capacity(table_size(vcpus));
    for apic_id in 0..vcpus {
        let flags = match apic_id {
            0 => CPU_ENABLED | CPU_BOOTSTRAP,
            _ => CPU_ENABLED,
        };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, apic_id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for pin in 0..IOAPIC_PINS as u8 {
        let entry = interrupt(ENTRY_IO_INTERRUPT, INTERRUPT_INT, pin, ioapic_id, pin);
        entries.extend_from_slice(&entry);
    }
    let extint = interrupt(
        ENTRY_LOCAL_INTERRUPT,
        INTERRUPT_EXTINT,
        0,
        ALL_LOCAL_APICS,
        0,
    );
    let nmi = interrupt(ENTRY_LOCAL_INTERRUPT, INTERRUPT_NMI, 0, ALL_LOCAL_APICS, 1);
    entries.extend_from_slice(&extint);
    entries.extend_from_slice(&nmi);
    let entry_count = vcpus as u16 + 2 + IOAPIC_PINS as u16 + 2;

    let mut table = Vec::with_capacity(HEADER_SIZE + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((HEADER_SIZE + entries.len()) as u16).to_le_bytes());
    table.push(SPEC_REVISION_1_4);
    table.push(0); // checksum, below
    table.extend_from_slice(OEM_ID);
    table.extend_from_slice(PRODUCT_ID);
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes()); // of no size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // no extended entries
    table.push(0); // so their checksum is 0
    table.push(0); // reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let table_address = MPTABLE_START + FLOATING_POINTER_SIZE as u64;
    let mut pointer = Vec::with_capacity(FLOATING_POINTER_SIZE + table.len());
    pointer.extend_from_slice(b"_MP_");
    pointer.extend_from_slice(&(table_address as u32).to_le_bytes());
    pointer.push(1); // length in 16-byte units
    pointer.push(SPEC_REVISION_1_4);
    pointer.push(0); // checksum, below
                     // Feature bytes: 0 = the configuration table is present (no default configuration);
                     // no IMCR, so the PIC reaches the BSP through LINT0 in virtual wire mode.
    pointer.extend_from_slice(&[0; 5]);
    pointer[10] = checksum(&pointer);

    pointer.extend_from_slice(&table);
    debug_assert_eq!(pointer.len(), table_size(vcpus));
    Ok(pointer)
}

/// An I/O or local interrupt entry: ISA IRQ `irq` to pin `pin` of the I/O APIC or local
/// APIC `destination`, polarity and trigger mode as the bus defines them.
fn interrupt(entry: u8, kind: u8, irq: u8, destination: u8, pin: u8) -> [u8; ENTRY_SIZE] {
    [entry, kind, 0, 0, ISA_BUS, irq, destination, pin]
}

/// The byte that makes `bytes` add up to 0.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::arch::x86_64::boot::{memory_map, MemoryKind};
    use crate::arch::x86_64::layout::{memory_regions, EBDA_START};

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&memory_regions(16 << 20)).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }

    fn u16_at(bytes: &[u8], offset: usize) -> u16 {
        u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
    }

    /// What a guest reads back from the table, checked as Linux's `mpparse.c` checks it.
    #[derive(Debug, Default)]
    struct Parsed {
        processors: Vec<(u8, u8)>,
        buses: Vec<Vec<u8>>,
        ioapics: Vec<(u8, u32)>,
        io_interrupts: Vec<[u8; 8]>,
        local_interrupts: Vec<[u8; 8]>,
    }

    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        // The floating pointer, found the way Linux scans the last KiB of base memory.
        let base = (0..0x400)
            .step_by(16)
            .map(|offset| 639 * 0x400 + offset)
            .find(|addr| read(mem, *addr, 4) == b"_MP_")
            .expect("no _MP_ in the last KiB of base memory");
        let pointer = read(mem, base, FLOATING_POINTER_SIZE);
        assert_eq!(pointer[8], 1, "floating pointer length");
        assert_eq!(pointer[9], 4, "specification revision");
        assert!(sums_to_zero(&pointer), "floating pointer checksum");
        assert_eq!(pointer[11], 0, "a configuration table, not a default one");

        let table_address = u64::from(u32_at(&pointer, 4));
        let header = read(mem, table_address, HEADER_SIZE);
        assert_eq!(&header[..4], b"PCMP");
        let length = usize::from(u16_at(&header, 4));
        assert_eq!(header[6], 4, "specification revision");
        assert_eq!(u32_at(&header, 36), 0xfee0_0000, "local APIC address");
        assert_eq!(u16_at(&header, 40), 0, "extended table length");
        let table = read(mem, table_address, length);
        assert!(sums_to_zero(&table), "configuration table checksum");

        let mut parsed = Parsed::default();
        let mut offset = HEADER_SIZE;
        let mut last_type = 0;
        for _ in 0..u16_at(&header, 34) {
            let entry = &table[offset..];
            assert!(entry[0] >= last_type, "entries sorted by type");
            last_type = entry[0];
            let size = match entry[0] {
                ENTRY_PROCESSOR => {
                    assert_ne!(entry[3] & CPU_ENABLED, 0, "processor enabled");
                    parsed.processors.push((entry[1], entry[3]));
                    PROCESSOR_ENTRY_SIZE
                }
                ENTRY_BUS => {
                    parsed.buses.push(entry[2..8].to_vec());
                    ENTRY_SIZE
                }
                ENTRY_IOAPIC => {
                    parsed.ioapics.push((entry[1], u32_at(entry, 4)));
                    ENTRY_SIZE
                }
                ENTRY_IO_INTERRUPT => {
                    parsed.io_interrupts.push(entry[..8].try_into().unwrap());
                    ENTRY_SIZE
                }
                ENTRY_LOCAL_INTERRUPT => {
                    parsed.local_interrupts.push(entry[..8].try_into().unwrap());
                    ENTRY_SIZE
                }
                other => panic!("unknown entry type {other} at offset {offset}"),
            };
            offset += size;
        }
        assert_eq!(offset, length, "the entries fill the base table exactly");
        assert_eq!(base, MPTABLE_START);
        assert_eq!(table_address, base + FLOATING_POINTER_SIZE as u64);
        parsed
    }

    #[test]
    fn the_table_lists_every_vcpu_the_ioapic_and_the_interrupts() {
        for vcpus in [1, 2, 32, MAX_VCPUS] {
            let mem = guest();
            write_mptable(&mem, vcpus).unwrap();
            let parsed = parse(&mem);

            assert_eq!(parsed.processors.len(), usize::from(vcpus), "{vcpus} vCPUs");
            let ids: HashSet<u8> = parsed.processors.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids.len(), usize::from(vcpus), "APIC ids are unique");
            assert!(!ids.contains(&ALL_LOCAL_APICS));
            assert_eq!(parsed.processors[0], (0, CPU_ENABLED | CPU_BOOTSTRAP));
            for (id, flags) in &parsed.processors[1..] {
                assert_eq!(flags & CPU_BOOTSTRAP, 0, "APIC id {id} is not the BSP");
            }

            assert_eq!(parsed.buses, vec![b"ISA   ".to_vec()]);
            assert_eq!(parsed.ioapics.len(), 1);
            let (ioapic_id, ioapic_address) = parsed.ioapics[0];
            assert_eq!(ioapic_address, 0xfec0_0000);
            assert!(!ids.contains(&ioapic_id), "I/O APIC id {ioapic_id} is free");

            assert_eq!(parsed.io_interrupts.len(), 24);
            for (irq, entry) in parsed.io_interrupts.iter().enumerate() {
                let irq = irq as u8;
                assert_eq!(
                    entry,
                    &[
                        ENTRY_IO_INTERRUPT,
                        INTERRUPT_INT,
                        0,
                        0,
                        0,
                        irq,
                        ioapic_id,
                        irq
                    ]
                );
            }
            assert_eq!(
                parsed.local_interrupts,
                vec![
                    [ENTRY_LOCAL_INTERRUPT, INTERRUPT_EXTINT, 0, 0, 0, 0, 0xff, 0],
                    [ENTRY_LOCAL_INTERRUPT, INTERRUPT_NMI, 0, 0, 0, 0, 0xff, 1],
                ]
            );
        }
    }

    #[test]
    fn vcpu_counts_outside_the_apic_id_space_are_refused() {
        for vcpus in [0, MAX_VCPUS + 1, u8::MAX] {
            let err = build(vcpus).unwrap_err().to_string();
            assert!(err.contains(&format!("not {vcpus}")), "{err}");
        }
    }

    #[test]
    fn the_largest_table_fits_in_the_reserved_area_linux_scans() {
        // The floating pointer: 16-byte aligned in the last KiB of base memory.
        assert_eq!(MPTABLE_START % 16, 0);
        assert!((639 * 0x400..640 * 0x400).contains(&MPTABLE_START));
        let largest = build(MAX_VCPUS).unwrap();
        assert_eq!(largest.len(), table_size(MAX_VCPUS));
        assert!(MPTABLE_START + largest.len() as u64 <= HIGH_MEMORY_START);
    }

    #[test]
    fn the_e820_map_keeps_the_table_out_of_usable_ram() {
        let end = MPTABLE_START + table_size(MAX_VCPUS) as u64;
        for size in [16 << 20, 4 << 30] {
            let mem = GuestMemoryMmap::from_ranges(&memory_regions(size)).unwrap();
            let map = memory_map(&mem).unwrap();
            for entry in map.iter().filter(|e| e.kind == MemoryKind::Ram) {
                let entry_end = entry.addr + entry.size;
                assert!(
                    entry_end <= MPTABLE_START || entry.addr >= end,
                    "RAM {:#x}..{entry_end:#x} overlaps the MP table",
                    entry.addr
                );
            }
            assert!(map.iter().any(|e| e.kind == MemoryKind::Reserved
                && e.addr <= MPTABLE_START
                && e.addr + e.size >= end));
        }
    }

    #[test]
    fn a_guest_without_the_ebda_gets_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), EBDA_START as usize)]).unwrap();
        let err = write_mptable(&mem, 1).unwrap_err().to_string();
        assert!(err.contains("MP table") && err.contains("0x9fc00"), "{err}");
    }
}
