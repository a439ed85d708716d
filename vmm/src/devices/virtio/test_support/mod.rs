//! A guest driver for the device tests: the virtio-mmio registers as a driver knows them from
//! the spec (virtio 1.x, 4.2.2; not the transport's own constants, so a wrong offset there
//! fails a test), split virtqueues laid out in guest memory (2.7, `queue.rs`), and the steps
//! of device initialisation (3.1.1). With the `test-support` feature, other crates' tests use
//! it too: `fs` is a guest's virtiofs driver speaking FUSE (`fuse`) to a real virtiofsd.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::mmio::{MmioTransport, VirtioDevice};
use crate::devices::CountingInterrupt;

pub mod fs;
pub mod fuse;
// Only external crates: `vmm/tests/vsock_backend.rs` includes it too.
mod queue;
pub use queue::{Desc, DriverQueue, USED_F_NO_NOTIFY};

// virtio-mmio registers (virtio 1.x, 4.2.2).
pub const MAGIC_VALUE: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const INTERRUPT_STATUS: u64 = 0x060;
pub const INTERRUPT_ACK: u64 = 0x064;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC_LOW: u64 = 0x080;
pub const QUEUE_DESC_HIGH: u64 = 0x084;
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG: u64 = 0x100;

// Device status bits (virtio 1.x, 2.1).
pub const ACKNOWLEDGE: u32 = 1;
pub const DRIVER: u32 = 2;
pub const DRIVER_OK: u32 = 4;
pub const FEATURES_OK: u32 = 8;
pub const NEEDS_RESET: u32 = 0x40;

// `InterruptStatus` bits (virtio 1.x, 4.2.2): a used buffer, a configuration change.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A guest driver with one device behind a virtio-mmio transport, the device's interrupt line
/// counting how often it was raised.
pub struct MmioDriver<D: VirtioDevice> {
    pub mem: GuestMemoryMmap,
    pub transport: MmioTransport<D>,
    pub device: Arc<Mutex<D>>,
    pub line: Arc<CountingInterrupt>,
}

impl<D: VirtioDevice + 'static> MmioDriver<D> {
    /// `device` behind a transport, with `mem_size` bytes of anonymous guest memory from
    /// address 0.
    pub fn new(device: D, mem_size: usize) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)]).unwrap();
        Self::with_memory(mem, device)
    }

    /// `device` behind a transport on guest memory the test made, for devices that must be
    /// given the memory first (virtio-fs shares its memfd with virtiofsd).
    pub fn with_memory(mem: GuestMemoryMmap, device: D) -> Self {
        let device = Arc::new(Mutex::new(device));
        let line = Arc::new(CountingInterrupt::default());
        let transport = MmioTransport::new(
            GuestMemoryAtomic::new(mem.clone()),
            device.clone(),
            line.clone(),
        );
        MmioDriver {
            mem,
            transport,
            device,
            line,
        }
    }

    pub fn device(&self) -> MutexGuard<'_, D> {
        self.device.lock().unwrap()
    }

    pub fn read(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    pub fn write(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    /// `len` bytes of the configuration space from `offset`.
    pub fn read_config(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.transport.read(CONFIG + offset, &mut data);
        data
    }

    /// Both banks of the device's features.
    pub fn device_features(&mut self) -> u64 {
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let high = self.read(DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// Resets the device, then ACKNOWLEDGE, DRIVER, `features` and FEATURES_OK; returns the
    /// status read back (FEATURES_OK is missing if the device refused the features).
    pub fn negotiate(&mut self, features: u64) -> u32 {
        self.write(STATUS, 0);
        self.write(STATUS, ACKNOWLEDGE);
        self.write(STATUS, ACKNOWLEDGE | DRIVER);
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, features as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (features >> 32) as u32);
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.read(STATUS)
    }

    /// Gives the device queue `index` and enables it.
    pub fn setup_queue(&mut self, index: u32, queue: &DriverQueue) {
        self.write(QUEUE_SEL, index);
        assert!(
            self.read(QUEUE_NUM_MAX) >= u32::from(queue.size),
            "queue {index} is too large for the device"
        );
        self.write(QUEUE_NUM, u32::from(queue.size));
        for (low, high, addr) in [
            (QUEUE_DESC_LOW, QUEUE_DESC_HIGH, queue.desc),
            (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, queue.avail),
            (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, queue.used),
        ] {
            self.write(low, addr as u32);
            self.write(high, (addr >> 32) as u32);
        }
        self.write(QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK; returns the status read back (NEEDS_RESET if activation failed).
    pub fn driver_ok(&mut self) -> u32 {
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.read(STATUS)
    }

    pub fn notify(&mut self, queue: u32) {
        self.write(QUEUE_NOTIFY, queue);
    }

    /// Whether a used-buffer interrupt is pending; acknowledges it.
    pub fn take_used_interrupt(&mut self) -> bool {
        let pending = self.read(INTERRUPT_STATUS) & INT_VRING != 0;
        if pending {
            self.write(INTERRUPT_ACK, INT_VRING);
        }
        pending
    }

    /// Waits until `InterruptStatus` has all of `bits` (devices with a backend raise it from
    /// another thread), then acknowledges them.
    pub fn wait_and_ack_interrupt(&mut self, bits: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.read(INTERRUPT_STATUS) & bits != bits {
            assert!(
                Instant::now() < deadline,
                "no interrupt {bits:#x} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        self.write(INTERRUPT_ACK, bits);
    }
}
