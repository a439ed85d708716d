//! Initial vCPU state for each boot protocol, as plain values, plus the GDT, IDT and page
//! tables those values point at.
//!
//! - 64-bit Linux boot protocol: long mode with paging, flat 64-bit segments, the first 1 GiB
//!   identity-mapped with 2 MiB pages, RSI = zero page.
//! - PVH: 32-bit protected mode, paging off, flat 32-bit segments, EBX = `hvm_start_info`.

use kvm_bindings::{kvm_dtable, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_MAX_ENTRIES, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, IDENTITY_MAP_GIB,
    PDE_HIGH_START, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use super::BootProtocol;

/// CR0 protection enable.
pub const CR0_PE: u64 = 1 << 0;
/// CR0 paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4 physical address extension (required for long mode).
pub const CR4_PAE: u64 = 1 << 5;
/// EFER long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// x87 control word after FNINIT: all exceptions masked, 64-bit precision.
pub const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR at reset: all SIMD exceptions masked.
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// GDT index (and selector) of the boot code segment.
pub const CODE_SELECTOR: u16 = 1 << 3;
/// GDT index (and selector) of the boot data segment.
pub const DATA_SELECTOR: u16 = 2 << 3;
/// GDT index (and selector) of the boot TSS.
pub const TSS_SELECTOR: u16 = 3 << 3;

/// Page table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
/// In a page directory entry: maps a 2 MiB page instead of pointing at a page table.
const PDE_PAGE_SIZE: u64 = 1 << 7;
/// Size of the page a page directory entry maps.
const LARGE_PAGE_SIZE: u64 = 2 << 20;
/// Entries in one page table level.
const ENTRIES_PER_TABLE: u64 = 512;

/// Errors while writing the boot tables.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A boot table does not fit in guest memory.
    #[error("Cannot write the {what} to guest memory at {addr:#x}")]
    Write {
        what: &'static str,
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}

/// A segment descriptor before packing into its 8-byte GDT form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub base: u32,
    /// 20-bit limit, in 4 KiB units when `FLAG_GRANULARITY` is set.
    pub limit: u32,
    /// Access byte: present, DPL, S (code/data), type.
    pub access: u8,
    /// The high nibble of byte 6: granularity, default/big, long, available.
    pub flags: u8,
}

const ACCESS_PRESENT: u8 = 1 << 7;
/// S bit: a code or data segment rather than a system one.
const ACCESS_CODE_DATA: u8 = 1 << 4;
/// Type: execute/read code, accessed.
const TYPE_CODE: u8 = 0xb;
/// Type: read/write data, accessed.
const TYPE_DATA: u8 = 0x3;
/// Type: busy TSS (VM entry wants TR busy).
const TYPE_BUSY_TSS: u8 = 0xb;

const FLAG_GRANULARITY: u8 = 1 << 3;
const FLAG_DEFAULT_BIG: u8 = 1 << 2;
const FLAG_LONG: u8 = 1 << 1;
const FLAG_AVAILABLE: u8 = 1 << 0;

/// Limit of the boot TSS (a 104-byte 32-bit TSS, as PVH specifies).
const TSS_LIMIT: u32 = 0x67;

impl Descriptor {
    /// Packs the descriptor into its GDT form.
    pub fn encode(&self) -> u64 {
        let base = u64::from(self.base);
        let limit = u64::from(self.limit);
        (limit & 0xffff)
            | (base & 0xff_ffff) << 16
            | u64::from(self.access) << 40
            | (limit >> 16 & 0xf) << 48
            | u64::from(self.flags & 0xf) << 52
            | (base >> 24 & 0xff) << 56
    }

    /// The same segment as KVM wants it in `kvm_sregs`, loaded with `selector`.
    pub fn to_kvm_segment(&self, selector: u16) -> kvm_segment {
        let granular = self.flags & FLAG_GRANULARITY != 0;
        let present = self.access & ACCESS_PRESENT != 0;
        kvm_segment {
            base: u64::from(self.base),
            // KVM takes the limit in bytes, already scaled by the granularity.
            limit: if granular {
                (self.limit << 12) | 0xfff
            } else {
                self.limit
            },
            selector,
            type_: self.access & 0xf,
            present: u8::from(present),
            dpl: (self.access >> 5) & 0x3,
            db: u8::from(self.flags & FLAG_DEFAULT_BIG != 0),
            s: u8::from(self.access & ACCESS_CODE_DATA != 0),
            l: u8::from(self.flags & FLAG_LONG != 0),
            g: u8::from(granular),
            avl: u8::from(self.flags & FLAG_AVAILABLE != 0),
            unusable: u8::from(!present),
            padding: 0,
        }
    }
}

const NULL_DESCRIPTOR: Descriptor = Descriptor {
    base: 0,
    limit: 0,
    access: 0,
    flags: 0,
};

/// The boot GDT of `protocol`: null, flat code, flat data, TSS.
pub fn boot_gdt(protocol: BootProtocol) -> [Descriptor; BOOT_GDT_MAX_ENTRIES] {
    let code_flags = match protocol {
        BootProtocol::Linux64 => FLAG_GRANULARITY | FLAG_LONG,
        BootProtocol::Pvh => FLAG_GRANULARITY | FLAG_DEFAULT_BIG,
    };
    [
        NULL_DESCRIPTOR,
        Descriptor {
            base: 0,
            limit: 0xf_ffff,
            access: ACCESS_PRESENT | ACCESS_CODE_DATA | TYPE_CODE,
            flags: code_flags,
        },
        Descriptor {
            base: 0,
            limit: 0xf_ffff,
            access: ACCESS_PRESENT | ACCESS_CODE_DATA | TYPE_DATA,
            flags: FLAG_GRANULARITY | FLAG_DEFAULT_BIG,
        },
        Descriptor {
            base: 0,
            limit: TSS_LIMIT,
            access: ACCESS_PRESENT | TYPE_BUSY_TSS,
            flags: 0,
        },
    ]
}

fn write_u64(
    mem: &GuestMemoryMmap,
    what: &'static str,
    value: u64,
    addr: u64,
) -> Result<(), RegsError> {
    mem.write_obj(value, GuestAddress(addr))
        .map_err(|source| RegsError::Write { what, addr, source })
}

/// Writes the GDT and the null IDT, and for the 64-bit protocol the identity page tables
/// covering the first 1 GiB with 2 MiB pages.
pub fn write_boot_tables(mem: &GuestMemoryMmap, protocol: BootProtocol) -> Result<(), RegsError> {
    for (i, descriptor) in boot_gdt(protocol).iter().enumerate() {
        let addr = BOOT_GDT_START + 8 * i as u64;
        write_u64(mem, "boot GDT", descriptor.encode(), addr)?;
    }
    write_u64(mem, "boot IDT", 0, BOOT_IDT_START)?;
    if protocol == BootProtocol::Linux64 {
        write_page_tables(mem)?;
    }
    Ok(())
}

fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let table_flags = PTE_PRESENT | PTE_WRITABLE;
    write_u64(mem, "PML4", PDPTE_START | table_flags, PML4_START)?;
    for gib in 0..IDENTITY_MAP_GIB {
        let directory = if gib == 0 {
            PDE_START
        } else {
            PDE_HIGH_START + (gib - 1) * 0x1000
        };
        write_u64(mem, "PDPTE", directory | table_flags, PDPTE_START + 8 * gib)?;
        for i in 0..ENTRIES_PER_TABLE {
            let address = (gib * ENTRIES_PER_TABLE + i) * LARGE_PAGE_SIZE;
            write_u64(
                mem,
                "PDE",
                address | table_flags | PDE_PAGE_SIZE,
                directory + 8 * i,
            )?;
        }
    }
    Ok(())
}

/// Sets the segments, descriptor tables and control registers of `protocol` in `sregs`.
/// Start from what KVM_GET_SREGS returned so the APIC base and the rest stay KVM's.
pub fn setup_sregs(protocol: BootProtocol, sregs: &mut kvm_sregs) {
    let gdt = boot_gdt(protocol);
    let code = gdt[usize::from(CODE_SELECTOR >> 3)].to_kvm_segment(CODE_SELECTOR);
    let data = gdt[usize::from(DATA_SELECTOR >> 3)].to_kvm_segment(DATA_SELECTOR);
    let tss = gdt[usize::from(TSS_SELECTOR >> 3)].to_kvm_segment(TSS_SELECTOR);

    sregs.gdt = kvm_dtable {
        base: BOOT_GDT_START,
        limit: (BOOT_GDT_MAX_ENTRIES * 8 - 1) as u16,
        ..Default::default()
    };
    sregs.idt = kvm_dtable {
        base: BOOT_IDT_START,
        limit: 7,
        ..Default::default()
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr0 = CR0_PE | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = CR0_PE;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
}

/// General purpose registers at the kernel's entry point `entry`.
pub fn boot_regs(protocol: BootProtocol, entry: GuestAddress) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.0,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// x87/SSE state every vCPU starts with.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn read_u64(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn gdt_for_long_mode_has_the_well_known_descriptors() {
        let mem = guest();
        write_boot_tables(&mem, BootProtocol::Linux64).unwrap();
        let gdt: Vec<u64> = (0..4)
            .map(|i| read_u64(&mem, BOOT_GDT_START + 8 * i))
            .collect();
        assert_eq!(
            gdt,
            vec![
                0,
                0x00af_9b00_0000_ffff,
                0x00cf_9300_0000_ffff,
                0x0000_8b00_0000_0067,
            ]
        );
        assert_eq!(read_u64(&mem, BOOT_IDT_START), 0);
    }

    #[test]
    fn gdt_for_pvh_is_32_bit() {
        let mem = guest();
        write_boot_tables(&mem, BootProtocol::Pvh).unwrap();
        assert_eq!(read_u64(&mem, BOOT_GDT_START + 8), 0x00cf_9b00_0000_ffff);
        assert_eq!(read_u64(&mem, BOOT_GDT_START + 16), 0x00cf_9300_0000_ffff);
        // No page tables for PVH: paging is off.
        assert_eq!(read_u64(&mem, PML4_START), 0);
    }

    #[test]
    fn descriptor_with_base_splits_it() {
        let d = Descriptor {
            base: 0x1234_5678,
            limit: 0xa_bcde,
            access: 0x93,
            flags: FLAG_AVAILABLE,
        };
        assert_eq!(d.encode(), 0x121a_9334_5678_bcde);
        let seg = d.to_kvm_segment(0x10);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xa_bcde);
        assert_eq!(seg.avl, 1);
        assert_eq!(seg.g, 0);
    }

    #[test]
    fn page_tables_identity_map_the_first_four_gib() {
        let mem = guest();
        write_boot_tables(&mem, BootProtocol::Linux64).unwrap();
        assert_eq!(read_u64(&mem, PML4_START), 0xa003);
        assert_eq!(read_u64(&mem, PML4_START + 8), 0);
        assert_eq!(read_u64(&mem, PDPTE_START), 0xb003);
        assert_eq!(read_u64(&mem, PDPTE_START + 8), 0xd003);
        assert_eq!(read_u64(&mem, PDPTE_START + 24), 0xf003);
        assert_eq!(read_u64(&mem, PDPTE_START + 32), 0);
        assert_eq!(read_u64(&mem, PDE_START), 0x83);
        assert_eq!(read_u64(&mem, PDE_START + 8), 0x20_0083);
        assert_eq!(read_u64(&mem, PDE_START + 511 * 8), 0x3fe0_0083);
        // The 32-bit MMIO gap (virtio-mmio at 0xd000_0000) is mapped.
        let gib3 = PDE_HIGH_START + 2 * 0x1000;
        assert_eq!(read_u64(&mem, gib3 + 8 * 128), 0xd000_0083);
        for gib in 0..IDENTITY_MAP_GIB {
            let directory = read_u64(&mem, PDPTE_START + 8 * gib) & !0xfff;
            for i in 0..512 {
                let entry = read_u64(&mem, directory + 8 * i);
                assert_eq!(entry & !0xfff, (gib * 512 + i) << 21);
                assert_eq!(entry & 0xfff, 0x83);
            }
        }
    }

    #[test]
    fn boot_tables_need_low_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        let err = write_boot_tables(&mem, BootProtocol::Linux64).unwrap_err();
        assert!(
            matches!(err, RegsError::Write { what: "PML4", .. }),
            "{err}"
        );
        // PVH needs no page tables, so the same memory is enough.
        write_boot_tables(&mem, BootProtocol::Pvh).unwrap();
    }

    #[test]
    fn long_mode_sregs() {
        let mut sregs = kvm_sregs {
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        setup_sregs(BootProtocol::Linux64, &mut sregs);
        assert_eq!(sregs.cr0, 0x8000_0001);
        assert_eq!(sregs.cr3, 0x9000);
        assert_eq!(sregs.cr4, 0x20);
        assert_eq!(sregs.efer, 0x500);
        assert_eq!(sregs.apic_base, 0xfee0_0900);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0x500, 31));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (0x520, 7));

        let cs = sregs.cs;
        assert_eq!((cs.selector, cs.base, cs.limit), (0x08, 0, 0xffff_ffff));
        assert_eq!((cs.type_, cs.s, cs.present, cs.dpl), (0xb, 1, 1, 0));
        assert_eq!((cs.l, cs.db, cs.g, cs.unusable), (1, 0, 1, 0));
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!((seg.selector, seg.type_, seg.db, seg.l), (0x10, 0x3, 1, 0));
            assert_eq!(seg.limit, 0xffff_ffff);
        }
        let tr = sregs.tr;
        assert_eq!(
            (tr.selector, tr.type_, tr.s, tr.limit, tr.g),
            (0x18, 0xb, 0, 0x67, 0)
        );
    }

    #[test]
    fn pvh_sregs() {
        // Start from a state that had paging on: PVH must switch it off.
        let mut sregs = kvm_sregs::default();
        setup_sregs(BootProtocol::Linux64, &mut sregs);
        setup_sregs(BootProtocol::Pvh, &mut sregs);
        assert_eq!(sregs.cr0, 1);
        assert_eq!((sregs.cr3, sregs.cr4, sregs.efer), (0, 0, 0));
        let cs = sregs.cs;
        assert_eq!(
            (cs.selector, cs.limit, cs.db, cs.l, cs.g),
            (0x08, 0xffff_ffff, 1, 0, 1)
        );
        assert_eq!(sregs.ss.selector, 0x10);
        assert_eq!(sregs.tr.limit, 0x67);
    }

    #[test]
    fn long_mode_regs() {
        let regs = boot_regs(BootProtocol::Linux64, GuestAddress(0x100_0000));
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsi, 0x7000);
        assert_eq!((regs.rsp, regs.rbp), (0x8ff0, 0x8ff0));
        assert_eq!(regs.rflags, 2);
        assert_eq!(regs.rbx, 0);
    }

    #[test]
    fn pvh_regs() {
        let regs = boot_regs(BootProtocol::Pvh, GuestAddress(0x100_0e40));
        assert_eq!(regs.rip, 0x100_0e40);
        assert_eq!(regs.rbx, 0x6000);
        assert_eq!(regs.rflags, 2);
        assert_eq!(regs.rsi, 0);
    }

    #[test]
    fn fpu_defaults() {
        let fpu = boot_fpu();
        assert_eq!(fpu.fcw, 0x37f);
        assert_eq!(fpu.mxcsr, 0x1f80);
        assert_eq!(fpu.fsw, 0);
    }
}
