//! [`BalloonDevice`]: virtio-balloon, offered only for free page reporting. The host never asks
//! the guest to inflate (`num_pages` stays 0); the guest reports blocks of free memory on the
//! reporting queue and the device punches them out of the guest's memfd (`MADV_REMOVE`), so
//! memory the guest once touched and then freed leaves the VMM's resident set. A reported page
//! reads back as zeros the next time the guest touches it, which is what a free page may hold.
//!
//! Every reported range comes from the guest and is checked before anything is discarded: it
//! must be page-aligned, non-empty and lie within one region of guest RAM. A range that is not
//! is returned unused and logged, so a hostile guest can discard only its own memory.

use tracing::{debug, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::Queue;
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};

use crate::devices::virtio::mmio::{
    drain_queue, read_config_space, take_queues, ActivateError, VirtioDevice, VirtioInterrupt,
};

/// The virtio spec's `VIRTIO_BALLOON_F_REPORTING` (virtio-bindings has no balloon header).
const VIRTIO_BALLOON_F_REPORTING: u32 = 5;

/// Inflate and deflate (never used: the host asks for nothing), then reporting: with neither
/// the statistics nor the free-page-hint feature, the reporting queue is the third.
const QUEUE_MAX_SIZES: [u16; 3] = [64; 3];
const REPORTING_QUEUE: usize = 2;

/// Guest pages are 4 KiB, and so are the host's: a report is discarded only in whole pages.
const PAGE_SIZE: u64 = 4096;

/// Why a reported range was not discarded.
#[derive(Debug, thiserror::Error)]
enum DiscardError {
    #[error("{len} bytes at {addr:#x} are not whole pages")]
    Unaligned { addr: u64, len: u32 },
    #[error("{len} bytes at {addr:#x} are not within one region of guest RAM")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("madvise(MADV_REMOVE) on {len} bytes at {addr:#x}: {source}")]
    Madvise {
        addr: u64,
        len: u32,
        source: std::io::Error,
    },
}

struct Active {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    reporting: Queue,
    interrupt: VirtioInterrupt,
}

/// virtio-balloon (device type 5) with free page reporting only.
#[derive(Default)]
pub struct BalloonDevice {
    /// `virtio_balloon_config`: `num_pages` (u32, always 0) and `actual` (u32, the driver's).
    config: [u8; 8],
    active: Option<Active>,
}

impl BalloonDevice {
    pub fn new() -> Self {
        Self::default()
    }

    /// Discards every reported range and returns each chain. Returns whether to interrupt.
    fn run_reporting_queue(&mut self) -> bool {
        let Some(active) = &mut self.active else {
            return false;
        };
        let mem = active.mem.memory();
        drain_queue(&mut active.reporting, &mem, "virtio-balloon", |chain| {
            for desc in chain {
                if let Err(e) = discard(&mem, desc.addr(), desc.len()) {
                    warn!(error = %e, "ignoring a free page report");
                }
            }
            // Nothing is written; the buffer goes back, or the driver would wait for it.
            0
        })
    }
}

/// Frees the host's copy of `len` bytes of guest RAM at `addr`, after checking the range.
fn discard(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> Result<(), DiscardError> {
    let start = addr.0;
    if len == 0 || !start.is_multiple_of(PAGE_SIZE) || !u64::from(len).is_multiple_of(PAGE_SIZE) {
        return Err(DiscardError::Unaligned { addr: start, len });
    }
    // One region's slice: a range past the end of RAM, in a hole or across two regions fails.
    let slice = mem
        .get_slice(addr, len as usize)
        .map_err(|_| DiscardError::OutsideMemory { addr: start, len })?;
    let guard = slice.ptr_guard_mut();
    // SAFETY: the range is whole pages of one region of guest RAM, a shared mapping of the
    // guest's memfd that stays mapped while `mem` is held; MADV_REMOVE frees those pages of the
    // memfd, which then read as zeros. Only guest memory is touched, never the VMM's own.
    let rc = unsafe { libc::madvise(guard.as_ptr().cast(), len as usize, libc::MADV_REMOVE) };
    if rc != 0 {
        return Err(DiscardError::Madvise {
            addr: start,
            len,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl VirtioDevice for BalloonDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn avail_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BALLOON_F_REPORTING)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    /// The driver writes `actual`, the pages it holds inflated; nothing else is writable.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let end = offset.checked_add(data.len() as u64);
        if offset >= 4 && end.is_some_and(|end| end <= self.config.len() as u64) {
            self.config[offset as usize..][..data.len()].copy_from_slice(data);
        } else {
            warn!(
                offset,
                len = data.len(),
                "ignoring a write outside virtio-balloon's actual"
            );
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        // Inflate and deflate carry nothing while the host asks for nothing. A driver without
        // free page reporting leaves the third queue off, and reports nothing.
        let [_inflate, _deflate, reporting] =
            take_queues("virtio-balloon", queues, &[(0, "inflate"), (1, "deflate")])?;
        self.active = Some(Active {
            mem,
            reporting,
            interrupt,
        });
        debug!("virtio-balloon device activated");
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if index != REPORTING_QUEUE {
            // The guest inflates only when asked; a hostile one's pages stay its own.
            warn!(index, "ignoring a notification of virtio-balloon's queue");
            return;
        }
        if self.run_reporting_queue() {
            if let Some(active) = &self.active {
                if let Err(e) = active.interrupt.signal_used_queue() {
                    warn!(error = %e, "cannot interrupt the virtio-balloon driver");
                }
            }
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl std::fmt::Debug for BalloonDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalloonDevice")
            .field("active", &self.active.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use vm_memory::{Bytes, GuestMemoryRegion};

    use super::*;
    use crate::devices::virtio::test_support::{
        Desc, DriverQueue, MmioDriver, CONFIG, DEVICE_ID, DRIVER, DRIVER_OK, FEATURES_OK,
    };
    use crate::vstate::memory::create_guest_memory;

    const MEM_SIZE: usize = 1 << 20;
    const QUEUE_SIZE: u16 = 16;
    /// Where the guest's pages that it fills, then reports, are.
    const DATA: u64 = 0x1_0000;
    const DATA_LEN: u32 = 32 * PAGE_SIZE as u32;

    /// A guest driver with free page reporting, on memfd-backed RAM as hull-vmm gives it.
    struct Guest {
        driver: MmioDriver<BalloonDevice>,
        reporting: DriverQueue,
    }

    impl Guest {
        fn new() -> Self {
            let mem = create_guest_memory(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
            let mut driver = MmioDriver::with_memory(mem, BalloonDevice::new());
            assert_eq!(driver.read(DEVICE_ID), VIRTIO_ID_BALLOON);
            let features = driver.device_features();
            assert_ne!(features & (1 << VIRTIO_BALLOON_F_REPORTING), 0);
            assert_eq!(driver.negotiate(features), 1 | DRIVER | FEATURES_OK);
            let queues: Vec<DriverQueue> = (1..=3)
                .map(|i| DriverQueue::new(i * 0x1000, QUEUE_SIZE))
                .collect();
            for (index, queue) in queues.iter().enumerate() {
                driver.setup_queue(index as u32, queue);
            }
            assert_eq!(driver.driver_ok(), 1 | DRIVER | FEATURES_OK | DRIVER_OK);
            let reporting = queues.into_iter().nth(2).unwrap();
            Guest { driver, reporting }
        }

        /// Fills the data pages, and touches the queues' pages so that the rings' writes
        /// allocate nothing later.
        fn fill(&self) {
            let rings = vec![0u8; DATA as usize - 0x1000];
            self.driver
                .mem
                .write_slice(&rings, GuestAddress(0x1000))
                .unwrap();
            let data = vec![0xab_u8; DATA_LEN as usize];
            self.driver
                .mem
                .write_slice(&data, GuestAddress(DATA))
                .unwrap();
        }

        fn data(&self) -> Vec<u8> {
            let mut data = vec![0u8; DATA_LEN as usize];
            self.driver
                .mem
                .read_slice(&mut data, GuestAddress(DATA))
                .unwrap();
            data
        }

        /// The memfd's allocated bytes.
        fn allocated(&self) -> u64 {
            let region = self.driver.mem.iter().next().unwrap();
            let file = region.file_offset().unwrap().file();
            let stat = nix::sys::stat::fstat(file.as_raw_fd()).unwrap();
            stat.st_blocks as u64 * 512
        }

        /// Reports `descs` as one chain; it must come back, with an interrupt.
        fn report(&mut self, descs: &[Desc]) {
            let head = self.reporting.add_chain(&self.driver.mem, descs);
            self.driver.notify(2);
            let (id, len) = self
                .reporting
                .pop_used(&self.driver.mem)
                .expect("the report was not returned");
            assert_eq!((id, len), (head, 0));
            assert!(self.driver.take_used_interrupt());
        }
    }

    #[test]
    fn reported_pages_leave_the_memfd_and_read_back_as_zeros() {
        let mut guest = Guest::new();
        guest.fill();
        let filled = guest.allocated();
        // Two ranges in one chain, as the driver sends a scatterlist.
        let half = DATA_LEN / 2;
        guest.report(&[(DATA, half, true), (DATA + u64::from(half), half, true)]);
        assert_eq!(filled - guest.allocated(), u64::from(DATA_LEN));
        assert!(guest.data().iter().all(|&b| b == 0));
    }

    #[test]
    fn reports_outside_whole_pages_of_ram_discard_nothing() {
        let mut guest = Guest::new();
        guest.fill();
        let filled = guest.allocated();
        let end = MEM_SIZE as u64;
        for (addr, len) in [
            (DATA + 1, PAGE_SIZE as u32),
            (DATA, PAGE_SIZE as u32 + 1),
            (DATA, 0),
            (end, PAGE_SIZE as u32),
            (end - PAGE_SIZE, 2 * PAGE_SIZE as u32),
            (u64::MAX - PAGE_SIZE + 1, PAGE_SIZE as u32),
        ] {
            guest.report(&[(addr, len, true)]);
        }
        assert_eq!(guest.allocated(), filled);
        assert!(guest.data().iter().all(|&b| b == 0xab));
    }

    #[test]
    fn the_host_asks_for_no_pages_and_keeps_what_the_driver_says_it_holds() {
        let mut guest = Guest::new();
        assert_eq!(guest.driver.read(CONFIG), 0, "num_pages");
        guest.driver.write(CONFIG + 4, 7);
        assert_eq!(guest.driver.read(CONFIG + 4), 7, "actual");
        guest.driver.write(CONFIG, 9);
        assert_eq!(guest.driver.read(CONFIG), 0, "num_pages is the host's");
    }
}
