//! A guest driver for the device tests: the virtio-mmio registers written as a driver writes
//! them (virtio 1.x, 4.2.2 and 3.1.1), and the driver's side of split virtqueues in guest
//! memory (2.7). Written from the spec, not from the transport, so the tests check the two
//! agree.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::mmio::{MmioTransport, VirtioDevice};
use crate::devices::CountingInterrupt;

/// virtio-mmio register offsets, as a driver knows them from the spec.
pub mod regs {
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
}

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 0x40;
}

/// `InterruptStatus` bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// One descriptor: guest address, length, device-writable.
pub type Desc = (u64, u32, bool);

/// A driver for one device behind a virtio-mmio transport, with the device's interrupt line
/// counting how often it was raised.
pub struct MmioDriver<D: VirtioDevice> {
    pub transport: MmioTransport<D>,
    pub device: Arc<Mutex<D>>,
    pub line: Arc<CountingInterrupt>,
}

impl<D: VirtioDevice> MmioDriver<D> {
    pub fn new(mem: GuestMemoryMmap, device: D) -> Self {
        let device = Arc::new(Mutex::new(device));
        let line = Arc::new(CountingInterrupt::default());
        let transport =
            MmioTransport::new(GuestMemoryAtomic::new(mem), device.clone(), line.clone());
        MmioDriver {
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

    /// Config space bytes `offset..offset + len`, read one byte at a time.
    pub fn config_bytes(&mut self, offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let mut byte = [0u8];
                self.transport.read(regs::CONFIG + offset + i, &mut byte);
                byte[0]
            })
            .collect()
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&mut self) -> u64 {
        self.write(regs::DEVICE_FEATURES_SEL, 0);
        let low = self.read(regs::DEVICE_FEATURES);
        self.write(regs::DEVICE_FEATURES_SEL, 1);
        let high = self.read(regs::DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, the driver's `features`, FEATURES_OK; returns the status
    /// read back (FEATURES_OK is set only if the device accepted them).
    pub fn negotiate(&mut self, features: u64) -> u32 {
        use status::*;
        self.write(regs::STATUS, 0);
        self.write(regs::STATUS, ACKNOWLEDGE);
        self.write(regs::STATUS, ACKNOWLEDGE | DRIVER);
        self.write(regs::DRIVER_FEATURES_SEL, 0);
        self.write(regs::DRIVER_FEATURES, features as u32);
        self.write(regs::DRIVER_FEATURES_SEL, 1);
        self.write(regs::DRIVER_FEATURES, (features >> 32) as u32);
        self.write(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.read(regs::STATUS)
    }

    /// Queue setup of queue `index` for `ring`: size, addresses, ready.
    pub fn setup_queue(&mut self, index: u32, ring: &SplitRing) {
        self.write(regs::QUEUE_SEL, index);
        assert!(
            self.read(regs::QUEUE_NUM_MAX) >= u32::from(ring.size),
            "queue {index} is smaller than {}",
            ring.size
        );
        self.write(regs::QUEUE_NUM, u32::from(ring.size));
        for (low, high, addr) in [
            (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, ring.desc),
            (regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH, ring.avail),
            (regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, ring.used),
        ] {
            self.write(low, addr as u32);
            self.write(high, (addr >> 32) as u32);
        }
        self.write(regs::QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK after a successful negotiation; returns the status read back.
    pub fn driver_ok(&mut self) -> u32 {
        use status::*;
        self.write(regs::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.read(regs::STATUS)
    }

    /// Waits until `InterruptStatus` has all of `bits` (devices with a backend raise it from
    /// another thread), then acknowledges them.
    pub fn wait_and_ack_interrupt(&mut self, bits: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.read(regs::INTERRUPT_STATUS) & bits != bits {
            assert!(
                Instant::now() < deadline,
                "no interrupt {bits:#x} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        self.write(regs::INTERRUPT_ACK, bits);
    }
}

/// The driver's side of one split virtqueue: its descriptor table, available ring and used
/// ring laid out one after the other from a base address, and which descriptors are free.
pub struct SplitRing {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    free: Vec<u16>,
    avail_idx: u16,
    used_seen: u16,
}

impl SplitRing {
    /// A ring of `size` entries at `base` (16-byte aligned).
    pub fn new(size: u16, base: u64) -> Self {
        let entries = u64::from(size);
        let desc = base;
        let avail = desc + 16 * entries;
        // flags, idx, ring[size], used_event; the used ring is 4-byte aligned.
        let used = (avail + 6 + 2 * entries + 3) & !3;
        SplitRing {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The first byte after the used ring.
    pub fn end(&self) -> u64 {
        self.used + 6 + 8 * u64::from(self.size)
    }

    /// Writes `descs` as one chain and makes it available; returns its head. The driver still
    /// has to notify the device.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        assert!(!descs.is_empty() && descs.len() <= self.free.len());
        let indices: Vec<u16> = descs.iter().map(|_| self.free.pop().unwrap()).collect();
        for (i, &(addr, len, writable)) in descs.iter().enumerate() {
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 } as u16;
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
        // The index is published after the entry it covers.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// The next used chain: its head and the bytes the device wrote. Its descriptors become
    /// free again, one per descriptor of the chain as the table links them.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        let used_idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if used_idx == self.used_seen {
            return None;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let slot = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = mem.read_obj(GuestAddress(slot)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(slot + 4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        let head = u16::try_from(id).expect("used id fits the ring");
        let mut index = head;
        loop {
            self.free.push(index);
            let at = self.desc + 16 * u64::from(index);
            let flags: u16 = mem.read_obj(GuestAddress(at + 12)).unwrap();
            if flags & VRING_DESC_F_NEXT as u16 == 0 {
                break;
            }
            index = mem.read_obj(GuestAddress(at + 14)).unwrap();
        }
        Some((head, len))
    }

    /// Like [`SplitRing::pop_used`], waiting up to `timeout` for the device.
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
}
