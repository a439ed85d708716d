//! Putting a guest kernel, initrd and command line into guest memory, and the boot
//! information and register values vCPU 0 starts with.
//!
//! An ELF `vmlinux` with the Xen PVH note (type 18) is entered through PVH, any other ELF
//! through the 64-bit Linux boot protocol at its ELF entry; a bzImage is loaded at 1 MiB and
//! entered through the 64-bit protocol at load address + 0x200.

#![cfg(target_arch = "x86_64")]

use std::io::{self, Read, Seek, SeekFrom};

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use linux_loader::cmdline::{Cmdline, Error as CmdlineError};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestMemoryRegion, ReadVolatile,
};

use crate::arch::x86_64::boot::{write_boot_params, write_pvh_start_info, BootArgs, BootError};
use crate::arch::x86_64::layout::{
    initrd_address, CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_MEMORY_START, MMIO_GAP_START,
    VIRTIO_MMIO_DEVICE_SIZE,
};
use crate::arch::x86_64::regs::{boot_fpu, boot_regs, setup_sregs, write_boot_tables, RegsError};
pub use crate::arch::x86_64::BootProtocol;

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// `e_ident[EI_CLASS]` of a 64-bit ELF file.
const ELF_CLASS_64: u8 = 2;
/// `e_machine` of x86_64.
const ELF_MACHINE_X86_64: u16 = 62;
/// Offset of the "HdrS" magic in a bzImage.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";
/// First boot protocol version with the 64-bit entry point.
const BZIMAGE_MIN_VERSION_64BIT: u16 = 0x020c;
/// `xloadflags`: the kernel has the 64-bit entry point.
const XLF_KERNEL_64: u16 = 1 << 0;
/// The 64-bit entry of a bzImage is this far into the protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Errors while loading the kernel, initrd and command line.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// I/O error reading the kernel image.
    #[error("Cannot read the kernel image")]
    ReadKernel(#[source] io::Error),
    /// Neither magic number found.
    #[error("Kernel image is neither an ELF vmlinux nor a bzImage")]
    UnknownKernelFormat,
    /// An ELF file for another machine.
    #[error("ELF kernel is not a 64-bit x86_64 image (class {class}, machine {machine})")]
    ElfNotX86_64 { class: u8, machine: u16 },
    /// linux-loader refused the image or it does not fit in guest memory.
    #[error("Cannot load the kernel image into guest memory")]
    LoadKernel(#[source] linux_loader::loader::Error),
    /// A bzImage too old for the 64-bit boot protocol.
    #[error(
        "bzImage has no 64-bit entry point (boot protocol {version:#x}, xloadflags {xloadflags:#x})"
    )]
    BzImageNot64Bit { version: u16, xloadflags: u16 },
    /// I/O error reading the initrd.
    #[error("Cannot read the initrd")]
    ReadInitrd(#[source] io::Error),
    /// An empty initrd file.
    #[error("Initrd is empty")]
    EmptyInitrd,
    /// No room between the kernel and the MMIO gap.
    #[error("Initrd of {size} bytes does not fit in guest RAM between the kernel and {MMIO_GAP_START:#x}: give the VM more memory")]
    InitrdTooLarge { size: u64 },
    /// Copying the initrd failed.
    #[error("Cannot copy the initrd to guest memory at {addr:#x}")]
    WriteInitrd {
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
    /// The command line is malformed or too long.
    #[error("Invalid kernel command line")]
    Cmdline(#[from] CmdlineError),
    /// The command line is longer than the kernel accepts.
    #[error(
        "Kernel command line is {len} bytes with its terminator, more than {CMDLINE_MAX_SIZE}"
    )]
    CmdlineTooLong { len: usize },
    /// Writing the command line failed.
    #[error("Cannot write the command line to guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// Writing the zero page or PVH start info failed.
    #[error("Cannot write the boot information")]
    Boot(#[from] BootError),
    /// Writing the GDT, IDT or page tables failed.
    #[error("Cannot write the boot tables")]
    Regs(#[from] RegsError),
}

/// Where the kernel was loaded and how to enter it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootInfo {
    /// First instruction the vCPU runs.
    pub entry: GuestAddress,
    pub protocol: BootProtocol,
    /// Initrd address and length, once loaded.
    pub initrd: Option<(GuestAddress, usize)>,
    /// A bzImage's setup header, the base of its zero page; `None` for an ELF vmlinux.
    pub setup_header: Option<setup_header>,
    /// First address past the kernel, including what a bzImage needs to decompress.
    pub kernel_end: GuestAddress,
}

/// The register values vCPU 0 starts with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootVcpuState {
    pub protocol: BootProtocol,
    pub regs: kvm_regs,
    pub fpu: kvm_fpu,
}

impl BootVcpuState {
    /// Sets the protocol's segments and control registers in `sregs` (as read from KVM).
    pub fn apply_sregs(&self, sregs: &mut kvm_sregs) {
        setup_sregs(self.protocol, sregs);
    }
}

enum KernelFormat {
    Elf,
    BzImage,
}

/// Reads exactly `buf.len()` bytes at `offset`, `false` when the file is shorter.
fn read_at<F: Read + Seek>(file: &mut F, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
    file.seek(SeekFrom::Start(offset))?;
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn detect_format<F: Read + Seek>(kernel: &mut F) -> Result<KernelFormat, LoaderError> {
    // e_ident (16 bytes), e_type, e_machine.
    let mut elf_start = [0u8; 20];
    if read_at(kernel, 0, &mut elf_start).map_err(LoaderError::ReadKernel)?
        && elf_start[..4] == ELF_MAGIC
    {
        let class = elf_start[4];
        let machine = u16::from_le_bytes([elf_start[18], elf_start[19]]);
        if class != ELF_CLASS_64 || machine != ELF_MACHINE_X86_64 {
            return Err(LoaderError::ElfNotX86_64 { class, machine });
        }
        return Ok(KernelFormat::Elf);
    }
    let mut magic = [0u8; 4];
    if read_at(kernel, BZIMAGE_MAGIC_OFFSET, &mut magic).map_err(LoaderError::ReadKernel)?
        && magic == BZIMAGE_MAGIC
    {
        return Ok(KernelFormat::BzImage);
    }
    Err(LoaderError::UnknownKernelFormat)
}

/// Loads an ELF vmlinux or a bzImage into `mem` and says how to enter it.
pub fn load_kernel<F>(mem: &GuestMemoryMmap, kernel: &mut F) -> Result<BootInfo, LoaderError>
where
    F: Read + ReadVolatile + Seek,
{
    let high_memory = GuestAddress(HIGH_MEMORY_START);
    match detect_format(kernel)? {
        KernelFormat::Elf => {
            let loaded =
                Elf::load(mem, None, kernel, Some(high_memory)).map_err(LoaderError::LoadKernel)?;
            let (protocol, entry) = match loaded.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => (BootProtocol::Pvh, entry),
                _ => (BootProtocol::Linux64, loaded.kernel_load),
            };
            Ok(BootInfo {
                entry,
                protocol,
                initrd: None,
                setup_header: None,
                kernel_end: GuestAddress(loaded.kernel_end),
            })
        }
        KernelFormat::BzImage => {
            let loaded = BzImage::load(mem, Some(high_memory), kernel, Some(high_memory))
                .map_err(LoaderError::LoadKernel)?;
            // linux-loader always returns the header of a bzImage it loaded.
            let header = loaded.setup_header.unwrap_or_default();
            let (version, xloadflags) = (header.version, header.xloadflags);
            if version < BZIMAGE_MIN_VERSION_64BIT || xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoaderError::BzImageNot64Bit {
                    version,
                    xloadflags,
                });
            }
            // The kernel decompresses in place and needs `init_size` bytes from its start.
            let decompressed_end = loaded.kernel_load.raw_value() + u64::from(header.init_size);
            Ok(BootInfo {
                entry: loaded.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
                protocol: BootProtocol::Linux64,
                initrd: None,
                setup_header: Some(header),
                kernel_end: GuestAddress(loaded.kernel_end.max(decompressed_end)),
            })
        }
    }
}

/// End of the RAM below the MMIO gap (exclusive).
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .filter_map(|region| {
            let start = region.start_addr().raw_value();
            (start < MMIO_GAP_START).then(|| (start + region.len()).min(MMIO_GAP_START))
        })
        .max()
        .unwrap_or(0)
}

/// Copies the initrd to the top of RAM below the MMIO gap and records it in `boot`.
pub fn load_initrd<F>(
    mem: &GuestMemoryMmap,
    boot: &mut BootInfo,
    initrd: &mut F,
) -> Result<(), LoaderError>
where
    F: Read + ReadVolatile + Seek,
{
    let size = initrd
        .seek(SeekFrom::End(0))
        .map_err(LoaderError::ReadInitrd)?;
    if size == 0 {
        return Err(LoaderError::EmptyInitrd);
    }
    initrd.rewind().map_err(LoaderError::ReadInitrd)?;

    // A bzImage states the highest address its initrd may reach.
    let ceiling = boot
        .setup_header
        .map(|h| h.initrd_addr_max)
        .filter(|max| *max != 0)
        .map(|max| u64::from(max) + 1);
    let addr = initrd_address(low_ram_end(mem), size, boot.kernel_end.raw_value(), ceiling)
        .ok_or(LoaderError::InitrdTooLarge { size })?;
    let len = usize::try_from(size).map_err(|_| LoaderError::InitrdTooLarge { size })?;
    mem.read_exact_volatile_from(addr, initrd, len)
        .map_err(|source| LoaderError::WriteInitrd {
            addr: addr.raw_value(),
            source,
        })?;
    boot.initrd = Some((addr, len));
    Ok(())
}

/// Appends `virtio_mmio.device=4K@0x<addr>:<irq>` for each `(addr, irq)`.
pub fn add_virtio_mmio_devices(
    cmdline: &mut Cmdline,
    devices: &[(GuestAddress, u32)],
) -> Result<(), LoaderError> {
    for (addr, irq) in devices {
        cmdline.add_virtio_mmio_device(VIRTIO_MMIO_DEVICE_SIZE, *addr, *irq, None)?;
    }
    Ok(())
}

/// The kernel command line: `base` (which may carry `-- init args`) plus the virtio-mmio
/// devices, limited to what the kernel accepts.
pub fn build_cmdline(base: &str, devices: &[(GuestAddress, u32)]) -> Result<Cmdline, LoaderError> {
    let base = base.trim();
    let len = base.len() + 1;
    if len > CMDLINE_MAX_SIZE {
        return Err(LoaderError::CmdlineTooLong { len });
    }
    let mut cmdline = if base.is_empty() {
        Cmdline::new(CMDLINE_MAX_SIZE)?
    } else {
        Cmdline::try_from(base, CMDLINE_MAX_SIZE)?
    };
    add_virtio_mmio_devices(&mut cmdline, devices)?;
    Ok(cmdline)
}

/// Writes the command line, the zero page or PVH start info, and the boot tables, and
/// returns vCPU 0's registers.
pub fn configure_boot(
    mem: &GuestMemoryMmap,
    boot: &BootInfo,
    cmdline: &Cmdline,
) -> Result<BootVcpuState, LoaderError> {
    let cmdline_size = cmdline.as_cstring()?.as_bytes_with_nul().len();
    if cmdline_size > CMDLINE_MAX_SIZE {
        return Err(LoaderError::CmdlineTooLong { len: cmdline_size });
    }
    let args = BootArgs {
        cmdline_size,
        initrd: boot.initrd,
    };
    match boot.protocol {
        BootProtocol::Linux64 => write_boot_params(mem, boot.setup_header, &args)?,
        BootProtocol::Pvh => write_pvh_start_info(mem, &args)?,
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(LoaderError::WriteCmdline)?;
    write_boot_tables(mem, boot.protocol)?;
    Ok(BootVcpuState {
        protocol: boot.protocol,
        regs: boot_regs(boot.protocol, boot.entry),
        fpu: boot_fpu(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::arch::x86_64::layout::{
        memory_regions, PML4_START, PVH_INFO_START, PVH_MODLIST_START, ZERO_PAGE_START,
    };
    use linux_loader::loader::bootparam::boot_params;
    use linux_loader::loader::elf::start_info::{hvm_modlist_entry, hvm_start_info};

    const MIB: usize = 1 << 20;
    const PAYLOAD: &[u8] = b"\xf4hull test payload";
    /// Where the test ELF files put their code (as a vmlinux does).
    const KERNEL_PADDR: u64 = 0x100_0000;

    fn guest(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&memory_regions(size)).unwrap()
    }

    fn push_u16(v: &mut Vec<u8>, x: u16) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn push_u32(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    fn push_u64(v: &mut Vec<u8>, x: u64) {
        v.extend_from_slice(&x.to_le_bytes());
    }

    fn program_header(
        v: &mut Vec<u8>,
        p_type: u32,
        offset: u64,
        paddr: u64,
        filesz: u64,
        memsz: u64,
    ) {
        push_u32(v, p_type);
        push_u32(v, 0x5); // R+X
        push_u64(v, offset);
        push_u64(v, paddr); // vaddr
        push_u64(v, paddr);
        push_u64(v, filesz);
        push_u64(v, memsz);
        push_u64(v, 0x1000);
    }

    fn note(v: &mut Vec<u8>, name: &[u8; 4], n_type: u32, desc: &[u8]) {
        push_u32(v, 4);
        push_u32(v, desc.len() as u32);
        push_u32(v, n_type);
        v.extend_from_slice(name);
        v.extend_from_slice(desc);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }

    /// A 64-bit x86_64 ELF executable: one PT_LOAD of `PAYLOAD` at `paddr` with `memsz`
    /// bytes, and with `pvh_entry` a PT_NOTE holding an unrelated note, then Xen's PVH entry
    /// note (type 18).
    fn elf_image(entry: u64, paddr: u64, memsz: u64, pvh_entry: Option<u32>) -> Vec<u8> {
        const EHDR_SIZE: u64 = 64;
        const PHDR_SIZE: u64 = 56;
        let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };

        let mut notes = Vec::new();
        if let Some(pvh) = pvh_entry {
            note(&mut notes, b"Xen\0", 6, b"xen-3.0\0");
            note(&mut notes, b"Xen\0", 18, &pvh.to_le_bytes());
        }
        let notes_offset = EHDR_SIZE + PHDR_SIZE * u64::from(phnum);
        let payload_offset = 0x200;

        let mut v = Vec::new();
        v.extend_from_slice(b"\x7fELF");
        v.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
        v.extend_from_slice(&[0; 8]);
        push_u16(&mut v, 2); // ET_EXEC
        push_u16(&mut v, 62); // EM_X86_64
        push_u32(&mut v, 1);
        push_u64(&mut v, entry);
        push_u64(&mut v, EHDR_SIZE); // e_phoff
        push_u64(&mut v, 0); // e_shoff
        push_u32(&mut v, 0); // e_flags
        push_u16(&mut v, EHDR_SIZE as u16);
        push_u16(&mut v, PHDR_SIZE as u16);
        push_u16(&mut v, phnum);
        push_u16(&mut v, 0);
        push_u16(&mut v, 0);
        push_u16(&mut v, 0);
        assert_eq!(v.len() as u64, EHDR_SIZE);

        program_header(
            &mut v,
            1, // PT_LOAD
            payload_offset,
            paddr,
            PAYLOAD.len() as u64,
            memsz,
        );
        if pvh_entry.is_some() {
            let len = notes.len() as u64;
            program_header(&mut v, 4, notes_offset, 0, len, len); // PT_NOTE
        }
        v.extend_from_slice(&notes);
        v.resize(payload_offset as usize, 0);
        v.extend_from_slice(PAYLOAD);
        v
    }

    /// A minimal bzImage: one setup sector after the boot sector, then `PAYLOAD` as the
    /// protected-mode code.
    fn bzimage(version: u16, xloadflags: u16) -> Vec<u8> {
        let mut v = vec![0u8; 2 * 512];
        v[0x1f1] = 1; // setup_sects
        v[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        v[0x202..0x206].copy_from_slice(b"HdrS");
        v[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        v[0x211] = 1; // loadflags: LOADED_HIGH
        v[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        v[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        v[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
        v[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        v[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes()); // init_size: 8 MiB
        v.extend_from_slice(PAYLOAD);
        v
    }

    fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    #[test]
    fn elf_without_pvh_note_uses_the_64bit_protocol() {
        let mem = guest(64 * MIB);
        let image = elf_image(KERNEL_PADDR, KERNEL_PADDR, 0x3000, None);
        let boot = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        assert_eq!(boot.protocol, BootProtocol::Linux64);
        assert_eq!(boot.entry, GuestAddress(KERNEL_PADDR));
        assert_eq!(boot.kernel_end, GuestAddress(KERNEL_PADDR + 0x3000));
        assert_eq!(boot.setup_header, None);
        assert_eq!(boot.initrd, None);
        assert_eq!(read_bytes(&mem, KERNEL_PADDR, PAYLOAD.len()), PAYLOAD);
    }

    #[test]
    fn elf_with_pvh_note_uses_pvh() {
        let mem = guest(64 * MIB);
        let image = elf_image(KERNEL_PADDR, KERNEL_PADDR, 0x1000, Some(0x100_0e40));
        let boot = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        assert_eq!(boot.protocol, BootProtocol::Pvh);
        assert_eq!(boot.entry, GuestAddress(0x100_0e40));
        assert_eq!(read_bytes(&mem, KERNEL_PADDR, PAYLOAD.len()), PAYLOAD);
    }

    #[test]
    fn bzimage_is_loaded_at_1_mib() {
        let mem = guest(64 * MIB);
        let image = bzimage(0x020f, XLF_KERNEL_64);
        let boot = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        assert_eq!(boot.protocol, BootProtocol::Linux64);
        assert_eq!(boot.entry, GuestAddress(0x10_0200));
        assert_eq!(boot.kernel_end, GuestAddress(0x10_0000 + 0x80_0000));
        let header = boot.setup_header.unwrap();
        assert_eq!({ header.code32_start }, 0x10_0000);
        assert_eq!({ header.version }, 0x020f);
        assert_eq!(read_bytes(&mem, 0x10_0000, PAYLOAD.len()), PAYLOAD);
    }

    #[test]
    fn old_bzimage_is_refused() {
        let mem = guest(64 * MIB);
        for (version, xloadflags) in [(0x020f, 0), (0x020b, XLF_KERNEL_64)] {
            let image = bzimage(version, xloadflags);
            let err = load_kernel(&mem, &mut Cursor::new(&image)).unwrap_err();
            assert!(
                matches!(err, LoaderError::BzImageNot64Bit { .. }),
                "{version:#x}/{xloadflags}: {err}"
            );
        }
    }

    #[test]
    fn garbage_kernel_is_refused() {
        let mem = guest(64 * MIB);
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        for image in [garbage, vec![0x7f, b'E'], Vec::new()] {
            let err = load_kernel(&mem, &mut Cursor::new(&image)).unwrap_err();
            assert!(matches!(err, LoaderError::UnknownKernelFormat), "{err}");
        }
    }

    #[test]
    fn elf_for_another_machine_is_refused() {
        let mem = guest(64 * MIB);
        let mut image = elf_image(KERNEL_PADDR, KERNEL_PADDR, 0x1000, None);
        image[18] = 183; // EM_AARCH64
        let err = load_kernel(&mem, &mut Cursor::new(&image)).unwrap_err();
        assert!(matches!(
            err,
            LoaderError::ElfNotX86_64 {
                class: 2,
                machine: 183
            }
        ));
        let mut image = elf_image(KERNEL_PADDR, KERNEL_PADDR, 0x1000, None);
        image[4] = 1; // ELFCLASS32
        let err = load_kernel(&mem, &mut Cursor::new(&image)).unwrap_err();
        assert!(matches!(err, LoaderError::ElfNotX86_64 { class: 1, .. }));
    }

    #[test]
    fn kernel_beyond_memory_is_refused() {
        let mem = guest(8 * MIB);
        let image = elf_image(KERNEL_PADDR, KERNEL_PADDR, 0x1000, None);
        let err = load_kernel(&mem, &mut Cursor::new(&image)).unwrap_err();
        assert!(matches!(err, LoaderError::LoadKernel(_)), "{err}");
    }

    #[test]
    fn elf_entry_below_1_mib_is_refused() {
        let mem = guest(8 * MIB);
        let image = elf_image(0x8000, 0x8000, 0x1000, None);
        let err = load_kernel(&mem, &mut Cursor::new(&image)).unwrap_err();
        assert!(matches!(err, LoaderError::LoadKernel(_)), "{err}");
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory() {
        let mem = guest(64 * MIB);
        let image = elf_image(KERNEL_PADDR, KERNEL_PADDR, 0x1000, None);
        let mut boot = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        let initrd: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        load_initrd(&mem, &mut boot, &mut Cursor::new(&initrd)).unwrap();
        let (addr, len) = boot.initrd.unwrap();
        assert_eq!(len, 10_000);
        assert_eq!(addr, GuestAddress((64 << 20) - 0x3000));
        assert_eq!(read_bytes(&mem, addr.0, len), initrd);
    }

    #[test]
    fn initrd_honours_the_bzimage_limit() {
        // 3 GiB of RAM, but the bzImage accepts an initrd only below 2 GiB.
        let mem = guest(3 << 30);
        let image = bzimage(0x020f, XLF_KERNEL_64);
        let mut boot = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        load_initrd(&mem, &mut boot, &mut Cursor::new(&[1u8; 4096])).unwrap();
        assert_eq!(boot.initrd, Some((GuestAddress(0x8000_0000 - 4096), 4096)));
    }

    #[test]
    fn initrd_that_does_not_fit_is_refused() {
        let mem = guest(16 * MIB);
        let image = bzimage(0x020f, XLF_KERNEL_64);
        let mut boot = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        // The kernel needs 1..9 MiB to decompress; 8 MiB of initrd does not fit above it.
        let initrd = vec![0u8; 8 * MIB];
        let err = load_initrd(&mem, &mut boot, &mut Cursor::new(&initrd)).unwrap_err();
        assert!(matches!(err, LoaderError::InitrdTooLarge { size } if size == 8 << 20));
        assert_eq!(boot.initrd, None);

        let err = load_initrd(&mem, &mut boot, &mut Cursor::new(&[])).unwrap_err();
        assert!(matches!(err, LoaderError::EmptyInitrd));
    }

    #[test]
    fn cmdline_with_virtio_mmio_devices() {
        let devices = [
            (GuestAddress(0xd000_0000), 5),
            (GuestAddress(0xd000_1000), 6),
        ];
        let cmdline = build_cmdline("console=ttyS0 reboot=k", &devices).unwrap();
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=k virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6"
        );

        // Devices go before the init arguments.
        let cmdline = build_cmdline("quiet -- --verbose", &devices[..1]).unwrap();
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "quiet virtio_mmio.device=4K@0xd0000000:5 -- --verbose"
        );

        let cmdline = build_cmdline("", &devices[1..]).unwrap();
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn too_long_cmdline_is_refused() {
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            build_cmdline(&long, &[]),
            Err(LoaderError::CmdlineTooLong { len: 2049 })
        ));
        // Just fits: 2047 characters and the terminator.
        build_cmdline(&long[1..], &[]).unwrap();

        // Fits alone, but not with the devices.
        let base = "y".repeat(CMDLINE_MAX_SIZE - 20);
        assert!(matches!(
            build_cmdline(&base, &[(GuestAddress(0xd000_0000), 5)]),
            Err(LoaderError::Cmdline(CmdlineError::TooLarge))
        ));

        // A command line built elsewhere with a larger capacity is still refused.
        let mem = guest(64 * MIB);
        let image = elf_image(KERNEL_PADDR, KERNEL_PADDR, 0x1000, None);
        let boot = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        let big = Cmdline::try_from(&long, 4 * CMDLINE_MAX_SIZE).unwrap();
        let err = configure_boot(&mem, &boot, &big).unwrap_err();
        assert!(matches!(err, LoaderError::CmdlineTooLong { len: 2049 }));
    }

    #[test]
    fn configure_64bit_boot() {
        let mem = guest(64 * MIB);
        let image = elf_image(KERNEL_PADDR, KERNEL_PADDR, 0x1000, None);
        let mut boot = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        load_initrd(&mem, &mut boot, &mut Cursor::new(&[7u8; 100])).unwrap();
        let cmdline = build_cmdline("console=ttyS0", &[(GuestAddress(0xd000_0000), 5)]).unwrap();
        let state = configure_boot(&mem, &boot, &cmdline).unwrap();

        let expected = "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5\0";
        assert_eq!(
            read_bytes(&mem, CMDLINE_START, expected.len()),
            expected.as_bytes()
        );
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, expected.len() as u32);
        assert_eq!({ hdr.ramdisk_image }, (64 << 20) - 0x1000);
        assert_eq!({ hdr.ramdisk_size }, 100);
        assert_eq!(params.e820_entries, 3);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(),
            0xa003
        );

        assert_eq!(state.protocol, BootProtocol::Linux64);
        assert_eq!(state.regs.rip, KERNEL_PADDR);
        assert_eq!(state.regs.rsi, ZERO_PAGE_START);
        assert_eq!(state.fpu.fcw, 0x37f);
        let mut sregs = kvm_sregs::default();
        state.apply_sregs(&mut sregs);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cs.l, 1);
    }

    #[test]
    fn configure_pvh_boot() {
        let mem = guest(64 * MIB);
        let image = elf_image(KERNEL_PADDR, KERNEL_PADDR, 0x1000, Some(0x100_0e40));
        let mut boot = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        load_initrd(&mem, &mut boot, &mut Cursor::new(&[7u8; 5000])).unwrap();
        let cmdline = build_cmdline("console=hvc0", &[]).unwrap();
        let state = configure_boot(&mem, &boot, &cmdline).unwrap();

        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), ((64 << 20) - 0x2000, 5000));
        assert_eq!(read_bytes(&mem, CMDLINE_START, 13), b"console=hvc0\0");
        // The zero page is not written for PVH.
        assert_eq!(
            read_bytes(&mem, ZERO_PAGE_START, 4096),
            vec![0u8; 4096],
            "zero page written for a PVH boot"
        );

        assert_eq!(state.protocol, BootProtocol::Pvh);
        assert_eq!(state.regs.rip, 0x100_0e40);
        assert_eq!(state.regs.rbx, PVH_INFO_START);
        let mut sregs = kvm_sregs::default();
        state.apply_sregs(&mut sregs);
        assert_eq!(sregs.cr0, 1);
        assert_eq!(sregs.cs.db, 1);
    }

    #[test]
    fn configure_boot_in_too_small_memory_is_refused() {
        // The kernel fits at 1 MiB but there is no low memory for the boot structures: a
        // guest whose RAM starts at 1 MiB.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 4 * MIB)]).unwrap();
        let image = bzimage(0x020f, XLF_KERNEL_64);
        let boot = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        let cmdline = build_cmdline("console=ttyS0", &[]).unwrap();
        let err = configure_boot(&mem, &boot, &cmdline).unwrap_err();
        assert!(
            matches!(err, LoaderError::Boot(BootError::NoLowMemory)),
            "{err}"
        );
    }
}
