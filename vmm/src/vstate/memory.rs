//! Guest RAM: one memfd mapped `MAP_SHARED`, one mapping per guest region.
//!
//! A vhost-user backend (virtiofsd) must map the very pages the guest uses, so guest RAM is a
//! file it can receive: the memfd, and for each region its offset in it. Anonymous memory
//! could not be shared. The file is sealed against growing and shrinking once sized, so a
//! backend holding the fd cannot truncate it under the VMM's mappings (which would turn guest
//! accesses into SIGBUS).

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::AsRawFd;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Name of the memfd, as `/proc/<pid>/maps` shows it.
const MEMFD_NAME: &CStr = c"hull-guest-ram";

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("Creating the guest RAM memfd: {0}")]
    Memfd(#[source] nix::Error),
    #[error("Sizing the guest RAM memfd to {size} bytes: {source}")]
    Resize {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("Sealing the size of the guest RAM memfd: {0}")]
    Seal(#[source] nix::Error),
    #[error("Guest memory regions overflow: {0:?}")]
    Overflow(Vec<(GuestAddress, usize)>),
    #[error("Mapping guest RAM: {0}")]
    Map(#[from] vm_memory::mmap::FromRangesError),
}

/// Guest memory for `ranges` (guest address, size), backed by one memfd: region `i` starts in
/// the file where region `i - 1` ends.
pub fn create_guest_memory(
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, MemoryError> {
    let size = ranges
        .iter()
        .try_fold(0u64, |total, &(_, len)| total.checked_add(len as u64))
        .ok_or_else(|| MemoryError::Overflow(ranges.to_vec()))?;
    let fd = memfd_create(
        MEMFD_NAME,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .map_err(MemoryError::Memfd)?;
    let file = File::from(fd);
    file.set_len(size)
        .map_err(|source| MemoryError::Resize { size, source })?;
    fcntl(
        file.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(MemoryError::Seal)?;
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let regions: Vec<_> = ranges
        .iter()
        .map(|&(start, len)| {
            let region = (start, len, Some(FileOffset::from_arc(file.clone(), offset)));
            offset += len as u64;
            region
        })
        .collect();
    Ok(GuestMemoryMmap::from_ranges_with_files(regions)?)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;
    use crate::arch::x86_64::layout;

    const MIB: usize = 1 << 20;

    /// Maps `len` bytes of `file` at `offset` a second time, shared.
    struct SecondMapping {
        ptr: *mut u8,
        len: usize,
    }

    impl SecondMapping {
        fn new(file: &File, offset: u64, len: usize) -> Self {
            // SAFETY: a fresh shared mapping of a file this test owns; nothing else aliases
            // the returned pointer but the guest memory mapping, which only the test uses.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
            SecondMapping {
                ptr: ptr.cast(),
                len,
            }
        }

        fn read(&self, at: usize) -> u8 {
            assert!(at < self.len);
            // SAFETY: `at` is inside the mapping.
            unsafe { self.ptr.add(at).read_volatile() }
        }

        fn write(&self, at: usize, value: u8) {
            assert!(at < self.len);
            // SAFETY: `at` is inside the mapping.
            unsafe { self.ptr.add(at).write_volatile(value) }
        }
    }

    impl Drop for SecondMapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping made in `new`.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    #[test]
    fn regions_share_one_memfd_at_consecutive_offsets() {
        // Large enough to be split around the 32-bit MMIO gap. MAP_NORESERVE and a sparse
        // memfd: nothing is allocated until touched.
        let size = layout::MMIO_GAP_START as usize + 64 * MIB;
        let ranges = layout::memory_regions(size);
        assert_eq!(ranges.len(), 2);
        let memory = create_guest_memory(&ranges).unwrap();
        let regions: Vec<_> = memory.iter().collect();
        assert_eq!(regions.len(), 2);
        let low = regions[0].file_offset().expect("low RAM is file-backed");
        let high = regions[1].file_offset().expect("high RAM is file-backed");
        assert_eq!(low.start(), 0);
        assert_eq!(high.start(), layout::MMIO_GAP_START);
        assert_eq!(
            low.file().as_raw_fd(),
            high.file().as_raw_fd(),
            "one memfd for all of RAM"
        );
        assert_eq!(low.file().metadata().unwrap().len(), size as u64);
        assert_eq!(regions[1].start_addr(), GuestAddress(layout::MMIO_GAP_END));
    }

    #[test]
    fn writes_through_either_mapping_are_seen_by_the_other() {
        let size = layout::MMIO_GAP_START as usize + 4 * MIB;
        let memory = create_guest_memory(&layout::memory_regions(size)).unwrap();
        let high = memory.iter().nth(1).unwrap();
        let file = high.file_offset().unwrap();
        let second = SecondMapping::new(file.file(), file.start(), 4 * MIB);

        memory
            .write_obj(0xa5u8, GuestAddress(layout::MMIO_GAP_END + 4096))
            .unwrap();
        assert_eq!(second.read(4096), 0xa5);
        second.write(8191, 0x3c);
        let back: u8 = memory
            .read_obj(GuestAddress(layout::MMIO_GAP_END + 8191))
            .unwrap();
        assert_eq!(back, 0x3c);

        // Low RAM starts at offset 0 of the same file.
        let low = SecondMapping::new(file.file(), 0, MIB);
        memory.write_obj(0x77u8, GuestAddress(0x1234)).unwrap();
        assert_eq!(low.read(0x1234), 0x77);
    }

    #[test]
    fn the_memfd_cannot_be_resized_by_whoever_holds_it() {
        let memory = create_guest_memory(&[(GuestAddress(0), 2 * MIB)]).unwrap();
        let file = memory.iter().next().unwrap().file_offset().unwrap().file();
        let err = file.set_len(MIB as u64).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        let err = file.set_len(4 * MIB as u64).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
        assert_eq!(file.metadata().unwrap().len(), 2 * MIB as u64);
    }
}
