//! Every guest physical address the x86_64 boot path uses.
//!
//! Nothing outside this file writes a magic guest address. The low 1 MiB holds the boot
//! structures (below the EBDA, which real firmware would own), the kernel goes at 1 MiB, the
//! initrd at the top of RAM below the 32-bit MMIO gap, and RAM beyond the gap continues at
//! 4 GiB.
//!
//! ```text
//! 0x0000_0500  boot GDT                  0x0000_9000  PML4
//! 0x0000_0520  boot IDT (null)           0x0000_a000  PDPTE
//! 0x0000_6000  PVH hvm_start_info        0x0000_b000  PDE (512 x 2 MiB = 1 GiB)
//! 0x0000_6040  PVH module list           0x0000_c000  PVH memory map
//! 0x0000_7000  zero page (boot_params)   0x0002_0000  command line
//! 0x0000_8ff0  boot stack (grows down)   0x0009_fc00  EBDA .. 1 MiB reserved: MP table
//! 0x0010_0000  kernel                    0xd000_0000  MMIO gap (virtio-mmio windows) .. 4 GiB
//! 0xfec0_0000  IOAPIC                    0xfee0_0000  local APIC
//! ```

use vm_memory::GuestAddress;

/// Start of the boot GDT. Four 8-byte descriptors: null, code, data, TSS.
pub const BOOT_GDT_START: u64 = 0x500;
/// Maximum number of descriptors in the boot GDT.
pub const BOOT_GDT_MAX_ENTRIES: usize = 4;
/// Start of the boot IDT: a single null entry, so any early exception is a triple fault the
/// VMM sees instead of a jump to garbage.
pub const BOOT_IDT_START: u64 = 0x520;

/// Where the PVH `hvm_start_info` goes (the guest gets it in EBX).
pub const PVH_INFO_START: u64 = 0x6000;
/// Where the PVH module list goes (one `hvm_modlist_entry` per module; only the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// Where the PVH memory map goes.
pub const PVH_MEMMAP_START: u64 = 0xc000;
/// Most memory map entries the PVH table may hold (it must end before the command line).
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 128;

/// The Linux zero page (`struct boot_params`, 4 KiB); the guest gets it in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;

/// Initial stack pointer for the 64-bit boot protocol, 16-byte aligned, just below the PML4.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Level 4 page table (one entry used).
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table (one entry used).
pub const PDPTE_START: u64 = 0xa000;
/// Page directory: 512 entries of 2 MiB identity-map the first GiB.
pub const PDE_START: u64 = 0xb000;

/// Page directories mapping the second to fourth GiB (so the 32-bit MMIO
/// gap, where virtio-mmio devices live, is reachable before the guest sets
/// up its own tables). One page each, right after the PVH memory map.
pub const PDE_HIGH_START: u64 = 0xd000;

/// GiB of the identity map the boot page tables cover.
pub const IDENTITY_MAP_GIB: u64 = 4;

/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line including the NUL terminator (x86 Linux `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Start of the Extended BIOS Data Area: RAM stops here and is reserved up to 1 MiB.
pub const EBDA_START: u64 = 0x9fc00;

/// The Intel MP table: its floating pointer at the start of the EBDA, where Linux scans
/// for it (the last KiB of base memory), and the configuration table right after. The
/// E820 map keeps it out of usable RAM, up to `HIGH_MEMORY_START`.
pub const MPTABLE_START: u64 = EBDA_START;

/// First address above the legacy low memory: where the kernel is loaded.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap. No RAM between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap (4 GiB); RAM beyond the gap continues here.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Start of the IOAPIC page; virtio-mmio windows stay below it.
pub const IOAPIC_START: u64 = 0xfec0_0000;

/// The local APIC of every vCPU, at its power-on address.
pub const APIC_START: u64 = 0xfee0_0000;

/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Number of virtio-mmio windows that fit between the gap start and the IOAPIC.
pub const VIRTIO_MMIO_MAX_DEVICES: u64 =
    (IOAPIC_START - VIRTIO_MMIO_BASE) / VIRTIO_MMIO_DEVICE_SIZE;

/// First IOAPIC pin given to virtio devices (0-4 are the timer, i8042, cascade and serial).
pub const IRQ_BASE: u32 = 5;
/// Last IOAPIC pin (the in-kernel IOAPIC has 24).
pub const IRQ_MAX: u32 = 23;

/// Page size used for placement alignment.
pub const PAGE_SIZE: u64 = 0x1000;

// The stack grows down from BOOT_STACK_POINTER through the page between the zero page and the
// PML4, and the ABI wants it 16-byte aligned.
const _: () = assert!(
    BOOT_STACK_POINTER < PML4_START
        && BOOT_STACK_POINTER >= ZERO_PAGE_START + PAGE_SIZE
        && BOOT_STACK_POINTER.is_multiple_of(16)
);

/// Guest address of the `index`th virtio-mmio window, or `None` past the last one.
pub fn virtio_mmio_device_addr(index: u64) -> Option<GuestAddress> {
    (index < VIRTIO_MMIO_MAX_DEVICES)
        .then(|| GuestAddress(VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_DEVICE_SIZE))
}

/// IRQ of the `index`th virtio device, or `None` when the IOAPIC has no pin left.
pub fn virtio_irq(index: u32) -> Option<u32> {
    IRQ_BASE.checked_add(index).filter(|irq| *irq <= IRQ_MAX)
}

/// The RAM regions of a guest with `mem_size` bytes: one region when it fits below the MMIO
/// gap, else the part below the gap and the rest from 4 GiB.
pub fn memory_regions(mem_size: usize) -> Vec<(GuestAddress, usize)> {
    let mem_size = mem_size as u64;
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (mem_size - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// End (exclusive) of the RAM below the MMIO gap for a guest with `mem_size` bytes.
pub fn low_memory_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// Where an initrd of `initrd_size` bytes goes: as high as possible in RAM below the MMIO gap
/// (and so below 4 GiB), page aligned, ending at or below `ceiling` (the kernel's
/// `initrd_addr_max + 1` when it states one), and starting at or above `lowest` (the end of
/// the kernel). `None` when it does not fit.
pub fn initrd_address(
    mem_size: u64,
    initrd_size: u64,
    lowest: u64,
    ceiling: Option<u64>,
) -> Option<GuestAddress> {
    let top = match ceiling {
        Some(ceiling) => low_memory_end(mem_size).min(ceiling),
        None => low_memory_end(mem_size),
    };
    let start = top.checked_sub(initrd_size)? & !(PAGE_SIZE - 1);
    (start >= lowest.max(HIGH_MEMORY_START)).then_some(GuestAddress(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;
    const GIB: usize = 1 << 30;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(
            memory_regions(128 * MIB),
            vec![(GuestAddress(0), 128 * MIB)]
        );
        let exactly_gap = MMIO_GAP_START as usize;
        assert_eq!(
            memory_regions(exactly_gap),
            vec![(GuestAddress(0), exactly_gap)]
        );
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let regions = memory_regions(4 * GIB);
        assert_eq!(
            regions,
            vec![
                (GuestAddress(0), 0xd000_0000),
                (GuestAddress(1 << 32), 4 * GIB - 0xd000_0000),
            ]
        );
        let total: usize = regions.iter().map(|(_, len)| len).sum();
        assert_eq!(total, 4 * GIB);
        // One byte over the gap start still goes above 4 GiB.
        let regions = memory_regions(0xd000_0000 + 4096);
        assert_eq!(regions[1], (GuestAddress(1 << 32), 4096));
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let areas = [
            (BOOT_GDT_START, BOOT_GDT_MAX_ENTRIES as u64 * 8),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 56),
            (PVH_MODLIST_START, 32),
            (ZERO_PAGE_START, 4096),
            (PML4_START, 4096),
            (PDPTE_START, 4096),
            (PDE_START, 4096),
            (PDE_HIGH_START, (IDENTITY_MAP_GIB - 1) * 4096),
            (PVH_MEMMAP_START, PVH_MEMMAP_MAX_ENTRIES as u64 * 24),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
        ];
        for (i, (a, alen)) in areas.iter().enumerate() {
            assert!(a + alen <= EBDA_START);
            for (b, blen) in &areas[i + 1..] {
                assert!(a + alen <= *b || b + blen <= *a, "{a:#x} overlaps {b:#x}");
            }
        }
    }

    #[test]
    fn virtio_windows_and_irqs() {
        assert_eq!(virtio_mmio_device_addr(0), Some(GuestAddress(0xd000_0000)));
        assert_eq!(virtio_mmio_device_addr(3), Some(GuestAddress(0xd000_3000)));
        let last = virtio_mmio_device_addr(VIRTIO_MMIO_MAX_DEVICES - 1).unwrap();
        assert_eq!(last.0 + VIRTIO_MMIO_DEVICE_SIZE, IOAPIC_START);
        assert_eq!(virtio_mmio_device_addr(VIRTIO_MMIO_MAX_DEVICES), None);
        assert_eq!(virtio_irq(0), Some(5));
        assert_eq!(virtio_irq(18), Some(23));
        assert_eq!(virtio_irq(19), None);
        assert_eq!(virtio_irq(u32::MAX), None);
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory() {
        // 128 MiB guest: the initrd ends at 128 MiB, page aligned.
        let addr = initrd_address(128 << 20, 0x1234, 0x20_0000, None).unwrap();
        assert_eq!(addr, GuestAddress((128 << 20) - 0x2000));
        assert_eq!(addr.0 % PAGE_SIZE, 0);
        assert!(addr.0 + 0x1234 <= 128 << 20);

        // 8 GiB guest: below the gap, not above 4 GiB.
        let addr = initrd_address(8 << 30, 16 << 20, 0x20_0000, None).unwrap();
        assert_eq!(addr, GuestAddress(MMIO_GAP_START - (16 << 20)));

        // A ceiling from the kernel header wins when it is lower.
        let addr = initrd_address(8 << 30, 4096, 0x20_0000, Some(0x8000_0000)).unwrap();
        assert_eq!(addr, GuestAddress(0x8000_0000 - 4096));
    }

    #[test]
    fn initrd_that_does_not_fit_is_refused() {
        // Would overlap the kernel.
        assert_eq!(initrd_address(32 << 20, 20 << 20, 16 << 20, None), None);
        // Larger than memory.
        assert_eq!(initrd_address(32 << 20, 64 << 20, 0, None), None);
        // Never into the low megabyte, even with no kernel end given.
        assert_eq!(initrd_address(2 << 20, (1 << 20) + 1, 0, None), None);
        assert!(initrd_address(2 << 20, 1 << 20, 0, None).is_some());
    }
}
