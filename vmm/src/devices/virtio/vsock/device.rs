//! The virtio-vsock device: moves packets between the virtqueues and the muxer.
//!
//! Transport-independent: it works on `virtio_queue::Queue` and any `GuestMemory`, so the
//! vhost-user backend and a virtio-mmio transport drive the same code. Callers run
//! `process_host_events`, `process_tx` and `process_rx` when the corresponding fd or queue is
//! signalled, and notify the driver when a call returns `true`.

use std::os::unix::io::RawFd;
use std::os::unix::net::UnixListener;

use tracing::warn;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use super::muxer::{MuxerError, VsockMuxer};
use super::packet::{RxChain, TxChain, MAX_PACKET_DATA};
use super::VsockConfig;

/// Queue the device writes packets for the guest into.
pub const RX_QUEUE: usize = 0;
/// Queue the guest sends packets on.
pub const TX_QUEUE: usize = 1;
/// Queue for device events (transport reset); unused by this device.
pub const EVENT_QUEUE: usize = 2;
/// Number of virtqueues.
pub const NUM_QUEUES: usize = 3;

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("Guest CID {0} is reserved: use 3 or higher, below 2^32 - 1")]
    InvalidGuestCid(u64),
    #[error("Cannot open the hybrid vsock socket")]
    Muxer(#[from] MuxerError),
    #[error("Virtqueue access failed")]
    Queue(#[from] virtio_queue::Error),
    #[error("The driver's available ring index is out of range; the queue is ignored until reset")]
    BrokenQueue,
}

/// 0, 1 and 2 are reserved, u32::MAX is VMADDR_CID_ANY for the guest's 32-bit CIDs.
pub fn check_guest_cid(guest_cid: u64) -> Result<(), DeviceError> {
    if guest_cid < 3 || guest_cid >= u64::from(u32::MAX) {
        return Err(DeviceError::InvalidGuestCid(guest_cid));
    }
    Ok(())
}

/// The virtio-vsock device core.
#[derive(Debug)]
pub struct VsockDevice {
    guest_cid: u64,
    muxer: VsockMuxer,
    tx_data: Vec<u8>,
    rx_data: Vec<u8>,
}

impl VsockDevice {
    /// Creates the device and binds its hybrid vsock socket.
    pub fn new(config: &VsockConfig) -> Result<Self, DeviceError> {
        check_guest_cid(config.guest_cid)?;
        Ok(Self::with_muxer(
            config.guest_cid,
            VsockMuxer::new(config.guest_cid, &config.uds_path)?,
        ))
    }

    /// Creates the device on a hybrid vsock socket the caller bound at `config.uds_path`
    /// (and removes).
    pub fn with_listener(
        config: &VsockConfig,
        listener: UnixListener,
    ) -> Result<Self, DeviceError> {
        check_guest_cid(config.guest_cid)?;
        Ok(Self::with_muxer(
            config.guest_cid,
            VsockMuxer::with_listener(config.guest_cid, listener, &config.uds_path)?,
        ))
    }

    fn with_muxer(guest_cid: u64, muxer: VsockMuxer) -> Self {
        VsockDevice {
            guest_cid,
            muxer,
            tx_data: Vec::with_capacity(MAX_PACKET_DATA),
            rx_data: vec![0; MAX_PACKET_DATA],
        }
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The device configuration space: `guest_cid` as little-endian u64.
    pub fn config_space(&self) -> [u8; 8] {
        self.guest_cid.to_le_bytes()
    }

    /// Fd that becomes readable when host sockets need `process_host_events`.
    pub fn host_events_fd(&self) -> RawFd {
        self.muxer.epoll_fd()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Handles ready host sockets. Run `process_rx` afterwards: they may have produced packets.
    pub fn process_host_events(&mut self) {
        self.muxer.process_host_events();
    }

    /// Consumes every packet the guest queued on the TX queue. Returns whether the driver must
    /// be notified. Run `process_rx` afterwards: replies may be pending.
    pub fn process_tx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        let mut idle_rounds = 0;
        loop {
            queue.disable_notification(mem)?;
            let mut popped = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                self.handle_tx_chain(mem, chain);
                // Malformed chains are returned too, or the driver would leak the buffers.
                queue.add_used(mem, head, 0)?;
                used = true;
                popped = true;
            }
            idle_rounds = if popped { 0 } else { idle_rounds + 1 };
            if !queue.enable_notification(mem)? {
                break;
            }
            if idle_rounds >= 2 {
                // The available ring says there is more, yet nothing can be
                // popped: its index is out of range. Don't spin on it.
                return Err(DeviceError::BrokenQueue);
            }
        }
        Ok(used && queue.needs_notification(mem)?)
    }

    fn handle_tx_chain<M: GuestMemory>(
        &mut self,
        mem: &M,
        descriptors: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    ) {
        let tx = match TxChain::parse(mem, descriptors) {
            Ok(tx) => tx,
            Err(e) => {
                warn!("dropping malformed vsock TX chain: {e}");
                return;
            }
        };
        match tx.read_data(mem, &mut self.tx_data) {
            Ok(()) => self.muxer.handle_guest_packet(tx.header(), &self.tx_data),
            Err(e) => {
                warn!("dropping malformed vsock TX packet: {e}");
                self.muxer.reset_from_guest(tx.header());
            }
        }
    }

    /// Fills RX buffers with pending packets for the guest. Returns whether the driver must be
    /// notified.
    pub fn process_rx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        let mut idle_rounds = 0;
        loop {
            let before = queue.next_avail();
            let out_of_buffers = self.fill_rx(mem, queue, &mut used)?;
            idle_rounds = if queue.next_avail() == before {
                idle_rounds + 1
            } else {
                0
            };
            // Packets are left but no buffers: ask for a kick, unless buffers arrived meanwhile.
            if !out_of_buffers || !queue.enable_notification(mem)? {
                break;
            }
            if idle_rounds >= 2 {
                // Buffers "arrived" yet none could be popped, twice: the
                // available ring's index is out of range. Don't spin on it.
                return Err(DeviceError::BrokenQueue);
            }
        }
        Ok(used && queue.needs_notification(mem)?)
    }

    /// Returns whether it stopped for lack of RX buffers with packets still pending.
    fn fill_rx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        used: &mut bool,
    ) -> Result<bool, DeviceError> {
        while self.muxer.has_pending_rx() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return Ok(true);
            };
            let head = chain.head_index();
            let rx = match RxChain::parse(mem, chain) {
                Ok(rx) => rx,
                Err(e) => {
                    warn!("returning malformed vsock RX chain unused: {e}");
                    queue.add_used(mem, head, 0)?;
                    *used = true;
                    continue;
                }
            };
            let room = rx.data_capacity().min(MAX_PACKET_DATA);
            let Some(header) = self.muxer.next_rx_packet(&mut self.rx_data[..room]) else {
                // Queued connections had nothing after all; keep the buffer for later.
                queue.go_to_previous_position();
                return Ok(false);
            };
            let data = &self.rx_data[..header.len as usize];
            let written = match rx.write_packet(mem, &header, data) {
                Ok(written) => written,
                Err(e) => {
                    // The stream lost bytes (or a control packet): it cannot go on.
                    warn!("cannot write vsock packet to the guest: {e}");
                    self.muxer.reset_after_lost_packet(&header);
                    0
                }
            };
            queue.add_used(mem, head, written)?;
            *used = true;
        }
        Ok(false)
    }
}

#[cfg(test)]
mod broken_ring_tests {
    use super::*;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// A ring whose available index says 0xcccc buffers are waiting (more
    /// than the queue holds) must not make the device spin: found by the
    /// `virtqueue` fuzz target.
    #[test]
    fn an_out_of_range_available_index_is_an_error_not_a_hang() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[0xcc; 0x400], GuestAddress(0)).unwrap();
        let mut queue = Queue::new(16).unwrap();
        queue.set_size(16);
        queue.set_desc_table_address(Some(0), Some(0));
        queue.set_avail_ring_address(Some(0x100), Some(0));
        queue.set_used_ring_address(Some(0x200), Some(0));
        queue.set_ready(true);
        let dir = tempfile::tempdir().unwrap();
        let mut device = VsockDevice::new(&VsockConfig {
            guest_cid: 3,
            uds_path: dir.path().join("v.sock"),
        })
        .unwrap();
        assert!(matches!(
            device.process_tx(&mem, &mut queue),
            Err(DeviceError::BrokenQueue)
        ));
    }
}
