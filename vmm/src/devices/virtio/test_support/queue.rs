//! The driver's side of split virtqueues (virtio 1.x, 2.7), laid out in guest memory. Only
//! external crates are used, so that tests outside the library (`vmm/tests/vsock_backend.rs`,
//! which drives a vhost-user backend in another process) include this file as it is.

use std::collections::HashMap;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
