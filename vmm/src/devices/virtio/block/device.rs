//! [`BlockDevice`]: virtio-blk behind the virtio-mmio transport. Its single request queue is
//! processed synchronously on the vCPU thread that notifies it (`pread64`, `pwrite64` and
//! `fdatasync` on the image file).

use std::io;
use std::path::Path;

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::Queue;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::request::{handle_chain, Disk};
use crate::devices::virtio::mmio::{
    drain_queue, read_config_space, take_queues, ActivateError, VirtioDevice, VirtioInterrupt,
};

const QUEUE_MAX_SIZE: u16 = 256;
const QUEUE_MAX_SIZES: [u16; 1] = [QUEUE_MAX_SIZE];
/// Data segments per request: the queue minus header and status.
const SEG_MAX: u32 = QUEUE_MAX_SIZE as u32 - 2;

struct Active {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    queue: Queue,
    interrupt: VirtioInterrupt,
}

/// virtio-blk (device type 2, one request queue) on a raw image file.
pub struct BlockDevice {
    disk: Disk,
    /// `virtio_blk_config`: capacity (u64), size_max (u32), seg_max (u32).
    config: [u8; 16],
    active: Option<Active>,
}

impl BlockDevice {
    /// Opens the image at `path`.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        Ok(Self::new(Disk::open(path, read_only)?))
    }

    pub fn new(disk: Disk) -> Self {
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&disk.capacity().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        BlockDevice {
            disk,
            config,
            active: None,
        }
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Runs every available request. Returns whether to interrupt the driver.
    fn run_queue(&mut self) -> bool {
        let Some(active) = &mut self.active else {
            return false;
        };
        let mem = active.mem.memory();
        let disk = &self.disk;
        drain_queue(&mut active.queue, &mem, "virtio-blk", |chain| {
            handle_chain(&*mem, disk, chain)
        })
    }

    fn notify_driver(&self) {
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.signal_used_queue() {
                warn!(error = %e, "cannot interrupt the virtio-blk driver");
            }
        }
    }
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn avail_features(&self) -> u64 {
        let mut features = (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if self.disk.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            offset,
            len = data.len(),
            "ignoring write to the read-only virtio-blk config space"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let [queue] = take_queues("virtio-blk", queues, &[(0, "request")])?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        debug!(
            capacity = self.disk.capacity(),
            "virtio-blk device activated"
        );
        // Requests queued before DRIVER_OK were not processed: catch up.
        if self.run_queue() {
            self.notify_driver();
        }
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        if index != 0 {
            warn!(index, "ignoring notification of unknown virtio-blk queue");
            return;
        }
        if self.run_queue() {
            self.notify_driver();
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

impl std::fmt::Debug for BlockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDevice")
            .field("disk", &self.disk)
            .field("active", &self.active.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::block::SECTOR_SIZE;
    use crate::devices::virtio::test_support::{
        Desc, DriverQueue, MmioDriver, DEVICE_ID, DRIVER, DRIVER_OK, FEATURES_OK,
    };

    const MEM_SIZE: usize = 1 << 20;
    const QUEUE_SIZE: u16 = 16;
    const CAPACITY: u64 = 64;
    const QUEUE: u64 = 0x1000;
    const HDR: u64 = 0x4000;
    const STATUS_ADDR: u64 = 0x5000;
    const DATA: u64 = 0x1_0000;

    const T_IN: u32 = 0;
    const T_OUT: u32 = 1;
    const T_FLUSH: u32 = 4;
    const T_GET_ID: u32 = 8;
    const S_OK: u8 = 0;
    const S_IOERR: u8 = 1;
    const S_UNSUPP: u8 = 2;

    /// A guest driver with the device's one request queue.
    struct Guest {
        _dir: tempfile::TempDir,
        image: std::path::PathBuf,
        driver: MmioDriver<BlockDevice>,
        queue: DriverQueue,
    }

    impl Guest {
        fn new(name: &str, read_only: bool) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join(name);
            let file = std::fs::File::create(&image).unwrap();
            // A trailing partial sector is not part of the capacity.
            file.set_len(CAPACITY * SECTOR_SIZE + 100).unwrap();
            let device = BlockDevice::open(&image, read_only).unwrap();
            let mut guest = Guest {
                _dir: dir,
                image,
                driver: MmioDriver::new(device, MEM_SIZE),
                queue: DriverQueue::new(QUEUE, QUEUE_SIZE),
            };
            assert!(guest.queue.end() <= HDR);
            guest.probe();
            guest
        }

        fn mem(&self) -> &GuestMemoryMmap {
            &self.driver.mem
        }

        fn probe(&mut self) {
            let driver = &mut self.driver;
            assert_eq!(driver.read(DEVICE_ID), 2);
            // Everything offered but EVENT_IDX, so every used buffer interrupts.
            let features = driver.device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX);
            assert_eq!(driver.negotiate(features), 1 | DRIVER | FEATURES_OK);
            driver.setup_queue(0, &self.queue);
            assert_eq!(driver.driver_ok(), 1 | DRIVER | FEATURES_OK | DRIVER_OK);
        }

        /// Posts one chain, notifies, and returns the used length (the chain must come back,
        /// with an interrupt).
        fn submit(&mut self, descs: &[Desc]) -> u32 {
            let head = self.queue.add_chain(&self.driver.mem, descs);
            let interrupts = self.driver.line.count();
            self.driver.notify(0);
            let (id, len) = self
                .queue
                .pop_used(&self.driver.mem)
                .expect("chain not returned");
            assert_eq!(id, head);
            assert!(self.driver.line.count() > interrupts, "no interrupt");
            assert!(self.driver.take_used_interrupt());
            len
        }

        fn header(&self, kind: u32, sector: u64) {
            let mut hdr = [0u8; 16];
            hdr[..4].copy_from_slice(&kind.to_le_bytes());
            hdr[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem().write_slice(&hdr, GuestAddress(HDR)).unwrap();
            self.mem()
                .write_obj(0xffu8, GuestAddress(STATUS_ADDR))
                .unwrap();
        }

        fn status(&self) -> u8 {
            self.mem().read_obj(GuestAddress(STATUS_ADDR)).unwrap()
        }

        /// A request with the header in one descriptor, then `data`, then the status.
        fn request(&mut self, kind: u32, sector: u64, data: &[Desc]) -> (u8, u32) {
            self.header(kind, sector);
            let mut descs = vec![(HDR, 16, false)];
            descs.extend_from_slice(data);
            descs.push((STATUS_ADDR, 1, true));
            let len = self.submit(&descs);
            (self.status(), len)
        }

        fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            std::fs::File::open(&self.image)
                .unwrap()
                .read_exact_at(&mut buf, offset)
                .unwrap();
            buf
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    #[test]
    fn identity_features_and_capacity_through_the_transport() {
        let mut guest = Guest::new("disk.img", false);
        let config = guest.driver.read_config(0, 16);
        assert_eq!(&config[..8], &CAPACITY.to_le_bytes());
        assert_eq!(&config[12..], &254u32.to_le_bytes(), "seg_max");
        let features = guest.driver.device_features();
        assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(features & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_eq!(features & (1 << VIRTIO_BLK_F_RO), 0);
        let mut ro = Guest::new("disk.img", true);
        assert_ne!(ro.driver.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn written_sectors_read_back_across_scattered_descriptors() {
        let mut guest = Guest::new("disk.img", false);
        let data = pattern(1024, 0x5a);
        guest.mem().write_slice(&data, GuestAddress(DATA)).unwrap();
        // Two sectors at sector 3, from three descriptors of uneven sizes.
        let out = [
            (DATA, 100, false),
            (DATA + 100, 700, false),
            (DATA + 800, 224, false),
        ];
        assert_eq!(guest.request(T_OUT, 3, &out), (S_OK, 1));
        assert_eq!(guest.file_bytes(3 * SECTOR_SIZE, 1024), data);
        assert_eq!(guest.file_bytes(2 * SECTOR_SIZE, 512), vec![0; 512]);

        // Read them back into two other buffers, plus the zeroed sector after them.
        let inn = [(0x2_0000, 1000, true), (0x3_0000, 536, true)];
        assert_eq!(guest.request(T_IN, 3, &inn), (S_OK, 1536 + 1));
        let mut back = vec![0u8; 1536];
        guest
            .mem()
            .read_slice(&mut back[..1000], GuestAddress(0x2_0000))
            .unwrap();
        guest
            .mem()
            .read_slice(&mut back[1000..], GuestAddress(0x3_0000))
            .unwrap();
        assert_eq!(&back[..1024], &data[..]);
        assert_eq!(&back[1024..], &[0u8; 512][..]);
    }

    #[test]
    fn flush_and_get_id() {
        let mut guest = Guest::new("a-very-long-image-file-name.raw", false);
        assert_eq!(guest.request(T_FLUSH, 0, &[]), (S_OK, 1));
        assert_eq!(
            guest.request(T_GET_ID, 0, &[(DATA, 32, true)]),
            (S_OK, 20 + 1)
        );
        let mut id = [0u8; 20];
        guest.mem().read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"a-very-long-image-fi");
        // Without a buffer for the id.
        assert_eq!(guest.request(T_GET_ID, 0, &[]), (S_IOERR, 1));
    }

    #[test]
    fn read_only_devices_refuse_writes_but_read_and_flush() {
        let mut guest = Guest::new("ro.img", true);
        guest
            .mem()
            .write_slice(&[0xaa; 512], GuestAddress(DATA))
            .unwrap();
        assert_eq!(guest.request(T_OUT, 0, &[(DATA, 512, false)]), (S_IOERR, 1));
        assert_eq!(guest.file_bytes(0, 512), vec![0; 512]);
        assert_eq!(guest.request(T_IN, 0, &[(DATA, 512, true)]), (S_OK, 513));
        assert_eq!(guest.request(T_FLUSH, 0, &[]), (S_OK, 1));
    }

    #[test]
    fn out_of_range_and_partial_sectors_fail() {
        let mut guest = Guest::new("disk.img", false);
        let sector = [(DATA, 512, true)];
        assert_eq!(guest.request(T_IN, CAPACITY - 1, &sector), (S_OK, 513));
        assert_eq!(guest.request(T_IN, CAPACITY, &sector), (S_IOERR, 1));
        assert_eq!(guest.request(T_IN, u64::MAX, &sector), (S_IOERR, 1));
        assert_eq!(
            guest.request(T_OUT, CAPACITY - 1, &[(DATA, 1024, false)]),
            (S_IOERR, 1)
        );
        assert_eq!(guest.request(T_IN, 0, &[(DATA, 511, true)]), (S_IOERR, 1));
        // Data outside guest memory.
        assert_eq!(
            guest.request(T_IN, 0, &[(MEM_SIZE as u64 - 256, 512, true)]),
            (S_IOERR, 1)
        );
        assert_eq!(guest.request(99, 0, &[]), (S_UNSUPP, 1));
    }

    #[test]
    fn malformed_chains_come_back_without_panicking() {
        let mut guest = Guest::new("disk.img", false);
        // No writable status descriptor at all: returned with nothing written.
        guest.header(T_IN, 0);
        assert_eq!(guest.submit(&[(HDR, 16, false), (DATA, 512, false)]), 0);
        // A read-only "status" descriptor is not written either.
        assert_eq!(
            guest.submit(&[(HDR, 16, false), (STATUS_ADDR, 1, false)]),
            0
        );
        assert_eq!(guest.status(), 0xff);
        // Header too short.
        guest.header(T_IN, 0);
        assert_eq!(guest.submit(&[(HDR, 8, false), (STATUS_ADDR, 1, true)]), 1);
        assert_eq!(guest.status(), S_IOERR);
        // Wrong data direction for IN and for OUT.
        assert_eq!(guest.request(T_IN, 0, &[(DATA, 512, false)]), (S_IOERR, 1));
        assert_eq!(guest.request(T_OUT, 0, &[(DATA, 512, true)]), (S_IOERR, 1));
        // A readable descriptor after a writable one.
        guest.header(T_IN, 0);
        assert_eq!(
            guest.submit(&[
                (HDR, 16, false),
                (DATA, 512, true),
                (DATA + 512, 16, false),
                (STATUS_ADDR, 1, true),
            ]),
            1
        );
        assert_eq!(guest.status(), S_IOERR);
    }

    #[test]
    fn header_split_across_descriptors_and_status_sharing_a_buffer() {
        let mut guest = Guest::new("disk.img", false);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&guest.image)
            .unwrap()
            .write_all_at(&pattern(512, 3), 5 * SECTOR_SIZE)
            .unwrap();
        guest.header(T_IN, 5);
        // The header in 10 + 6 bytes; data and status in a single 513-byte buffer.
        let len = guest.submit(&[(HDR, 10, false), (HDR + 10, 6, false), (DATA, 513, true)]);
        assert_eq!(len, 513);
        let mut back = vec![0u8; 513];
        guest
            .mem()
            .read_slice(&mut back, GuestAddress(DATA))
            .unwrap();
        assert_eq!(&back[..512], &pattern(512, 3)[..]);
        assert_eq!(back[512], S_OK);
    }
}
