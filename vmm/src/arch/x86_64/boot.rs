//! What the guest kernel is handed at entry: the E820 memory map, the Linux zero page
//! (`boot_params`) for the 64-bit boot protocol, and the PVH `hvm_start_info`.

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE,
};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryMmap, GuestMemoryRegion,
};

use super::layout::{
    CMDLINE_START, EBDA_START, HIGH_MEMORY_START, MMIO_GAP_END, MMIO_GAP_START, PVH_INFO_START,
    PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};

/// `boot_flag` every setup header carries.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` field: "HdrS" little-endian.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `kernel_alignment` stated for an ELF vmlinux, which has no setup header of its own.
pub const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// Version of `hvm_start_info` written.
pub const PVH_START_INFO_VERSION: u32 = 1;

/// Errors while writing the boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Guest memory must be RAM from 0 up to the EBDA for the boot structures.
    #[error("Guest memory does not cover 0..{EBDA_START:#x} for the boot structures")]
    NoLowMemory,
    /// Nothing above 1 MiB, so nowhere for the kernel.
    #[error("Guest memory has no RAM above 1 MiB for the kernel")]
    NoHighMemory,
    /// The memory map does not fit the table of the boot protocol.
    #[error("Memory map has {0} entries, more than the boot protocol's {1}")]
    TooManyMemoryMapEntries(usize, usize),
    /// The 64-bit boot protocol only has 32-bit initrd fields.
    #[error("Initrd at {addr:#x} with {size} bytes does not end below 4 GiB")]
    InitrdAbove4GiB { addr: u64, size: usize },
    /// A boot structure does not fit in guest memory.
    #[error("Cannot write the {what} to guest memory at {addr:#x}")]
    Write {
        what: &'static str,
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}

/// Kind of a memory map entry; the E820 and PVH memory map share the numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram = XEN_HVM_MEMMAP_TYPE_RAM,
    /// Not usable by the kernel.
    Reserved = XEN_HVM_MEMMAP_TYPE_RESERVED,
}

/// One entry of the guest's physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

/// Where the command line and initrd are in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootArgs {
    /// Command line length including the NUL terminator (it is at `CMDLINE_START`).
    pub cmdline_size: usize,
    /// Initrd address and length.
    pub initrd: Option<(GuestAddress, usize)>,
}

/// The memory map of `mem`: RAM below the EBDA, the EBDA up to 1 MiB reserved, RAM from
/// 1 MiB up to the MMIO gap and RAM from 4 GiB on.
pub fn memory_map(mem: &GuestMemoryMmap) -> Result<Vec<MemoryMapEntry>, BootError> {
    // RAM can only be where these windows and the guest's regions overlap.
    const RAM_WINDOWS: [(u64, u64); 3] = [
        (0, EBDA_START),
        (HIGH_MEMORY_START, MMIO_GAP_START),
        (MMIO_GAP_END, u64::MAX),
    ];
    let mut ram: Vec<(u64, u64)> = Vec::new();
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start.saturating_add(region.len());
        for (lo, hi) in RAM_WINDOWS {
            let (s, e) = (start.max(lo), end.min(hi));
            if s < e {
                ram.push((s, e));
            }
        }
    }
    ram.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ram.len());
    for (s, e) in ram {
        match merged.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => merged.push((s, e)),
        }
    }

    match merged.first() {
        Some(&(0, end)) if end == EBDA_START => {}
        _ => return Err(BootError::NoLowMemory),
    }
    if merged.len() < 2 || merged[1].0 != HIGH_MEMORY_START {
        return Err(BootError::NoHighMemory);
    }

    let ram_entry = |(s, e): (u64, u64)| MemoryMapEntry {
        addr: s,
        size: e - s,
        kind: MemoryKind::Ram,
    };
    let mut map = Vec::with_capacity(merged.len() + 1);
    map.push(ram_entry(merged[0]));
    map.push(MemoryMapEntry {
        addr: EBDA_START,
        size: HIGH_MEMORY_START - EBDA_START,
        kind: MemoryKind::Reserved,
    });
    map.extend(merged[1..].iter().copied().map(ram_entry));
    Ok(map)
}

fn write_obj<T: ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    obj: T,
    addr: u64,
) -> Result<(), BootError> {
    mem.write_obj(obj, GuestAddress(addr))
        .map_err(|source| BootError::Write { what, addr, source })
}

/// Builds the zero page for the 64-bit Linux boot protocol. `header` is the bzImage's setup
/// header; an ELF vmlinux has none and gets the fields the kernel checks filled in.
pub fn build_boot_params(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    args: &BootArgs,
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    match header {
        Some(header) => params.hdr = header,
        None => {
            params.hdr.boot_flag = BOOT_FLAG_MAGIC;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = args.cmdline_size as u32;
    if let Some((addr, size)) = args.initrd {
        let end = addr.raw_value().checked_add(size as u64);
        if end.is_none_or(|end| end > 1 << 32) {
            return Err(BootError::InitrdAbove4GiB {
                addr: addr.raw_value(),
                size,
            });
        }
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let map = memory_map(mem)?;
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::TooManyMemoryMapEntries(
            map.len(),
            E820_MAX_ENTRIES_ZEROPAGE,
        ));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page for the 64-bit Linux boot protocol at `ZERO_PAGE_START`.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    args: &BootArgs,
) -> Result<(), BootError> {
    let params = build_boot_params(mem, header, args)?;
    write_obj(mem, "zero page", params, ZERO_PAGE_START)
}

/// Writes the PVH `hvm_start_info` at `PVH_INFO_START`, its memory map at `PVH_MEMMAP_START`
/// and, with an initrd, a one-entry module list at `PVH_MODLIST_START`.
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, args: &BootArgs) -> Result<(), BootError> {
    let map = memory_map(mem)?;
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::TooManyMemoryMapEntries(
            map.len(),
            PVH_MEMMAP_MAX_ENTRIES,
        ));
    }
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, entry) in map.iter().enumerate() {
        let table_entry = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind as u32,
            reserved: 0,
        };
        let addr = PVH_MEMMAP_START + i as u64 * entry_size;
        write_obj(mem, "PVH memory map", table_entry, addr)?;
    }

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: PVH_START_INFO_VERSION,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = args.initrd {
        let module = hvm_modlist_entry {
            paddr: addr.raw_value(),
            size: size as u64,
            ..Default::default()
        };
        write_obj(mem, "PVH module list", module, PVH_MODLIST_START)?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    write_obj(mem, "PVH start info", start_info, PVH_INFO_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::memory_regions;

    const MIB: usize = 1 << 20;

    fn guest(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&memory_regions(size)).unwrap()
    }

    fn entry(addr: u64, size: u64, kind: MemoryKind) -> MemoryMapEntry {
        MemoryMapEntry { addr, size, kind }
    }

    #[test]
    fn memory_map_of_a_small_guest() {
        let map = memory_map(&guest(128 * MIB)).unwrap();
        assert_eq!(
            map,
            vec![
                entry(0, 0x9fc00, MemoryKind::Ram),
                entry(0x9fc00, 0x10_0000 - 0x9fc00, MemoryKind::Reserved),
                entry(0x10_0000, (128 << 20) - 0x10_0000, MemoryKind::Ram),
            ]
        );
    }

    #[test]
    fn memory_map_of_a_guest_larger_than_the_gap() {
        // Only the mappings matter, so reserve the 5 GiB without touching it.
        let mem = guest(5 << 30);
        let map = memory_map(&mem).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            entry(0x10_0000, 0xd000_0000 - 0x10_0000, MemoryKind::Ram)
        );
        assert_eq!(
            map[3],
            entry(1 << 32, (5 << 30) - 0xd000_0000, MemoryKind::Ram)
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| e.size)
            .sum();
        // Everything except the EBDA..1 MiB hole is RAM.
        assert_eq!(ram, (5 << 30) - (0x10_0000 - 0x9fc00));
    }

    #[test]
    fn memory_map_needs_low_and_high_memory() {
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
        assert!(matches!(memory_map(&tiny), Err(BootError::NoLowMemory)));
        let one_mib = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
        assert!(matches!(memory_map(&one_mib), Err(BootError::NoHighMemory)));
        let no_zero = GuestMemoryMmap::from_ranges(&[(GuestAddress(MIB as u64), MIB)]).unwrap();
        assert!(matches!(memory_map(&no_zero), Err(BootError::NoLowMemory)));
    }

    #[test]
    fn boot_params_for_a_vmlinux() {
        let mem = guest(256 * MIB);
        let args = BootArgs {
            cmdline_size: 42,
            initrd: Some((GuestAddress(0x0f00_0000), 0x12345)),
        };
        write_boot_params(&mem, None, &args).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!(&{ hdr.header }.to_le_bytes(), b"HdrS");
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.kernel_alignment }, 0x0100_0000);
        assert_eq!({ hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x12345);

        assert_eq!(params.e820_entries, 3);
        let e820: Vec<(u64, u64, u32)> = params.e820_table[..3]
            .iter()
            .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
            .collect();
        assert_eq!(
            e820,
            vec![
                (0, 0x9fc00, 1),
                (0x9fc00, 0x10_0000 - 0x9fc00, 2),
                (0x10_0000, (256 << 20) - 0x10_0000, 1),
            ]
        );
        let unused = params.e820_table[3];
        assert_eq!({ unused.size }, 0);
    }

    #[test]
    fn boot_params_keep_the_bzimage_header() {
        let mem = guest(64 * MIB);
        let header = setup_header {
            boot_flag: BOOT_FLAG_MAGIC,
            header: HDRS_MAGIC,
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            code32_start: 0x10_0000,
            xloadflags: 1,
            ..Default::default()
        };
        let args = BootArgs {
            cmdline_size: 7,
            initrd: None,
        };
        write_boot_params(&mem, Some(header), &args).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ hdr.code32_start }, 0x10_0000);
        assert_eq!(hdr.type_of_loader, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 7);
        assert_eq!({ hdr.ramdisk_image }, 0);
        assert_eq!({ hdr.ramdisk_size }, 0);
    }

    #[test]
    fn boot_params_refuse_an_initrd_above_4_gib() {
        let mem = guest(64 * MIB);
        let args = BootArgs {
            cmdline_size: 1,
            initrd: Some((GuestAddress(0xffff_f000), 0x2000)),
        };
        assert!(matches!(
            build_boot_params(&mem, None, &args),
            Err(BootError::InitrdAbove4GiB { .. })
        ));
    }

    #[test]
    fn pvh_start_info_with_initrd() {
        let mem = guest(5 << 30);
        let args = BootArgs {
            cmdline_size: 10,
            initrd: Some((GuestAddress(0xcf00_0000), 4096)),
        };
        write_pvh_start_info(&mem, &args).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_START);
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_START);
        assert_eq!(info.memmap_entries, 4);

        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!(module.paddr, 0xcf00_0000);
        assert_eq!(module.size, 4096);
        assert_eq!(module.cmdline_paddr, 0);

        let table: Vec<(u64, u64, u32)> = (0..4)
            .map(|i| {
                let e: hvm_memmap_table_entry = mem
                    .read_obj(GuestAddress(PVH_MEMMAP_START + i * 24))
                    .unwrap();
                (e.addr, e.size, e.type_)
            })
            .collect();
        assert_eq!(
            table,
            vec![
                (0, 0x9fc00, 1),
                (0x9fc00, 0x10_0000 - 0x9fc00, 2),
                (0x10_0000, 0xd000_0000 - 0x10_0000, 1),
                (1 << 32, (5 << 30) - 0xd000_0000, 1),
            ]
        );
    }

    #[test]
    fn pvh_start_info_without_initrd() {
        let mem = guest(32 * MIB);
        // Stale bytes where the module list would be must not turn into a module.
        mem.write_obj(0xdead_beef_u64, GuestAddress(PVH_MODLIST_START))
            .unwrap();
        let args = BootArgs {
            cmdline_size: 1,
            initrd: None,
        };
        write_pvh_start_info(&mem, &args).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.nr_modules, 0);
        assert_eq!(info.modlist_paddr, 0);
        assert_eq!(info.memmap_entries, 3);
    }

    #[test]
    fn too_small_memory_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let args = BootArgs {
            cmdline_size: 1,
            initrd: None,
        };
        assert!(matches!(
            write_boot_params(&mem, None, &args),
            Err(BootError::NoLowMemory)
        ));
        assert!(matches!(
            write_pvh_start_info(&mem, &args),
            Err(BootError::NoLowMemory)
        ));
    }
}
