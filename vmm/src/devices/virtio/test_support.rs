//! A guest driver for the device tests: the virtio-mmio registers as a driver knows them from
//! the spec (virtio 1.x, 4.2.2; not the transport's own constants, so a wrong offset there
//! fails a test), split virtqueues laid out in guest memory (2.7), and the steps of device
//! initialisation (3.1.1).

use std::collections::HashMap;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::mmio::{MmioTransport, VirtioDevice};
use crate::devices::CountingInterrupt;

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

/// `VRING_USED_F_NO_NOTIFY`: the device asks not to be notified.
pub const USED_F_NO_NOTIFY: u16 = 1;

/// A descriptor: guest address, length, device-writable.
pub type Desc = (u64, u32, bool);

/// The driver's side of a split virtqueue: chains built from free descriptors, made available
/// in order, and taken back from the used ring.
#[derive(Debug)]
pub struct DriverQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    free: Vec<u16>,
    avail_idx: u16,
    used_seen: u16,
    /// The descriptors (index and contents) of each chain the device holds, by head.
    chains: HashMap<u16, Vec<(u16, Desc)>>,
}

impl DriverQueue {
    /// A queue of `size` entries from `base` (16-byte aligned): the descriptor table, then
    /// the available ring, then the used ring.
    pub fn new(base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        // flags, idx, ring, used_event; the used ring is 4-byte aligned.
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        DriverQueue {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            used_seen: 0,
            chains: HashMap::new(),
        }
    }

    /// The first byte after the used ring (flags, idx, ring, avail_event).
    pub fn end(&self) -> u64 {
        self.used + 6 + 8 * u64::from(self.size)
    }

    /// Makes a chain of `descs` available (without notifying); returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        assert!(
            !descs.is_empty() && descs.len() <= self.free.len(),
            "no room"
        );
        let indices: Vec<u16> = descs.iter().map(|_| self.free.pop().unwrap()).collect();
        for (i, &(addr, len, writable)) in descs.iter().enumerate() {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = match indices.get(i + 1) {
                Some(&next) => {
                    flags |= VRING_DESC_F_NEXT as u16;
                    next
                }
                None => 0,
            };
            let at = self.desc + 16 * u64::from(indices[i]);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let head = indices[0];
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The index is published after the entry it covers: a device on another thread or in
        // another process (virtiofsd) may read the ring at any time.
        fence(Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        self.chains.insert(
            head,
            indices.into_iter().zip(descs.iter().copied()).collect(),
        );
        head
    }

    /// The next chain the device returned: its head and the length it wrote.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        self.pop_used_chain(mem).map(|(head, _, len)| (head, len))
    }

    /// Like [`DriverQueue::pop_used`], with the chain's descriptors as they were made
    /// available, for a driver that reads what the device wrote across them.
    pub fn pop_used_chain(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, Vec<Desc>, u32)> {
        let used_idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if used_idx == self.used_seen {
            return None;
        }
        // The entry is read after the index that covers it.
        fence(Ordering::SeqCst);
        let entry = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = mem.read_obj(GuestAddress(entry)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(entry + 4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        let head = u16::try_from(id).expect("used id fits a descriptor index");
        let chain = self.chains.remove(&head).expect("used id is a chain head");
        self.free.extend(chain.iter().map(|&(index, _)| index));
        Some((head, chain.into_iter().map(|(_, desc)| desc).collect(), len))
    }

    /// How many chains the device holds.
    pub fn posted(&self) -> usize {
        self.chains.len()
    }

    /// The device's side of the same rings, ready, as activation would hand it to a device;
    /// for device cores tested without a transport.
    pub fn device_queue(&self) -> Queue {
        let mut queue = Queue::new(self.size).unwrap();
        queue.set_size(self.size);
        queue.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        queue.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        queue.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        queue.set_ready(true);
        queue
    }

    /// Like [`DriverQueue::pop_used`], waiting up to `timeout` for a device that works on
    /// another thread or in another process.
    pub fn wait_used(&mut self, mem: &GuestMemoryMmap, timeout: Duration) -> (u16, u32) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(used) = self.pop_used(mem) {
                return used;
            }
            assert!(
                Instant::now() < deadline,
                "the device returned no chain within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The used ring's flags (`VRING_USED_F_NO_NOTIFY`).
    pub fn used_flags(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used)).unwrap()
    }

    /// With `VIRTIO_F_EVENT_IDX`: the available index at which the device wants a notification.
    pub fn avail_event(&self, mem: &GuestMemoryMmap) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// The driver's available index.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }
}

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
