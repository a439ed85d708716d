//! [`NetDevice`]: virtio-net behind the virtio-mmio transport, over a tap.
//!
//! Work is done synchronously by whichever thread brings it:
//! - a transmit notification (vCPU thread): every available chain is written to the tap;
//! - a receive notification (vCPU thread): the driver posted buffers, fill them from the tap;
//! - the tap turning readable (the event loop, edge-triggered): fill buffers from the tap.
//!
//! Receiving stops when the tap is empty (the next frame wakes the event loop again) or when
//! the driver has no buffers left. Then frames wait in the tap's kernel queue, the device
//! asks the driver for a notification, and the driver's next receive notification resumes.
//! Receive notifications stay off while the device has buffers, so a driver refilling its
//! ring does not exit to the VMM for each buffer.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tracing::{debug, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::frame::{gather_tx_frame, RxBuffers, MAX_FRAME_LEN, TAP_HEADER, VNET_HDR_SIZE};
use super::tap::{Tap, TapError};
use super::MacAddress;
use crate::devices::virtio::mmio::{
    read_config_space, take_queues, ActivateError, VirtioDevice, VirtioInterrupt,
};
use crate::devices::{HostEvents, Watch};

/// The queue the device puts received frames on.
pub const RX_QUEUE: usize = 0;
/// The queue the driver puts frames to send on.
pub const TX_QUEUE: usize = 1;
const NUM_QUEUES: usize = 2;
const QUEUE_MAX_SIZE: u16 = 256;
const QUEUE_MAX_SIZES: [u16; NUM_QUEUES] = [QUEUE_MAX_SIZE; NUM_QUEUES];
/// No offloads, one queue pair: the MAC address and the link status in the config space.
/// Chains are walked through `virtio-queue`, which follows indirect tables.
const AVAIL_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS);
/// `virtio_net_config` up to what the features offer: mac (6 bytes), status (le16).
const CONFIG_SIZE: usize = 8;

/// What `activate` handed over; dropped on reset.
struct Active {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    queues: [Queue; NUM_QUEUES],
    interrupt: VirtioInterrupt,
}

/// Why filling receive buffers stopped.
#[derive(Debug, PartialEq, Eq)]
enum RxStop {
    /// No frame waiting: the tap turning readable starts the next round.
    TapEmpty,
    /// No buffer left: the driver's notification starts the next round.
    NoBuffers,
    /// The tap or the queue failed (logged); the next event tries again.
    Failed,
}

/// virtio-net (device type 1, queues rx/tx) on a tap.
pub struct NetDevice {
    tap: Tap,
    mac: MacAddress,
    config: [u8; CONFIG_SIZE],
    /// The frame being sent.
    tx_frame: Vec<u8>,
    /// The frame being received, as the tap gives it: header, then frame.
    rx_frame: Vec<u8>,
    active: Option<Active>,
}

impl NetDevice {
    /// Opens the tap called `tap` for a guest NIC with address `mac`.
    pub fn open(tap: &str, mac: MacAddress) -> Result<Self, TapError> {
        Ok(Self::new(Tap::open(tap)?, mac))
    }

    pub fn new(tap: Tap, mac: MacAddress) -> Self {
        let mut config = [0u8; CONFIG_SIZE];
        config[..6].copy_from_slice(&mac.bytes());
        config[6..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        NetDevice {
            tap,
            mac,
            config,
            tx_frame: Vec::with_capacity(MAX_FRAME_LEN),
            rx_frame: vec![0; VNET_HDR_SIZE + MAX_FRAME_LEN],
            active: None,
        }
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn mac(&self) -> MacAddress {
        self.mac
    }

    /// Whether the driver activated the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Sends every available transmit chain. Returns whether to interrupt the driver.
    fn run_tx(&mut self) -> bool {
        let NetDevice {
            tap,
            tx_frame,
            active,
            ..
        } = self;
        let Some(active) = active else {
            return false;
        };
        let mem = active.mem.memory();
        let queue = &mut active.queues[TX_QUEUE];
        let mut used = false;
        let mut idle_rounds = 0;
        loop {
            if queue.disable_notification(&*mem).is_err() {
                break;
            }
            let mut popped = false;
            while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
                let head = chain.head_index();
                match gather_tx_frame(&*mem, chain, tx_frame) {
                    Ok(()) => {
                        if let Err(e) = tap.write_frame(&TAP_HEADER, tx_frame) {
                            warn!(tap = tap.name(), error = %e, "dropping a frame the tap refused");
                        }
                    }
                    Err(e) => {
                        warn!(tap = tap.name(), error = %e, "dropping a malformed transmit chain");
                    }
                }
                // Every chain goes back, or the driver would leak its buffers.
                if let Err(e) = queue.add_used(&*mem, head, 0) {
                    warn!(tap = tap.name(), error = %e, "cannot return a transmit chain");
                    return used;
                }
                used = true;
                popped = true;
            }
            idle_rounds = if popped { 0 } else { idle_rounds + 1 };
            match queue.enable_notification(&*mem) {
                Ok(true) if idle_rounds < 2 => {}
                Ok(true) => {
                    warn!(
                        tap = tap.name(),
                        "virtio-net transmit ring index is out of range"
                    );
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    warn!(tap = tap.name(), error = %e, "virtio-net transmit queue failed");
                    break;
                }
            }
        }
        used && queue.needs_notification(&*mem).unwrap_or(true)
    }

    /// Fills the driver's receive buffers from the tap. Returns whether to interrupt.
    fn run_rx(&mut self) -> bool {
        let NetDevice {
            tap,
            rx_frame,
            active,
            ..
        } = self;
        let Some(active) = active else {
            return false;
        };
        let mem = active.mem.memory();
        let queue = &mut active.queues[RX_QUEUE];
        let mut used = false;
        let mut idle_rounds = 0;
        loop {
            if queue.disable_notification(&*mem).is_err() {
                break;
            }
            let (stop, progressed) = fill_rx(&*mem, queue, tap, rx_frame);
            used |= progressed;
            if stop != RxStop::NoBuffers {
                break;
            }
            // Out of buffers: ask for a notification, unless buffers came in meanwhile.
            idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
            match queue.enable_notification(&*mem) {
                Ok(true) if idle_rounds < 2 => {}
                Ok(true) => {
                    warn!(
                        tap = tap.name(),
                        "virtio-net receive ring index is out of range"
                    );
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    warn!(tap = tap.name(), error = %e, "virtio-net receive queue failed");
                    break;
                }
            }
        }
        used && queue.needs_notification(&*mem).unwrap_or(true)
    }

    fn notify_driver(&self, notify: bool) {
        if let (true, Some(active)) = (notify, &self.active) {
            if let Err(e) = active.interrupt.signal_used_queue() {
                warn!(tap = self.tap.name(), error = %e, "cannot interrupt the virtio-net driver");
            }
        }
    }
}

/// Moves frames from the tap into receive chains until either runs out. Returns why it
/// stopped and whether it returned any chain.
fn fill_rx<M: GuestMemory>(
    mem: &M,
    queue: &mut Queue,
    tap: &Tap,
    buf: &mut [u8],
) -> (RxStop, bool) {
    let mut used = false;
    loop {
        // A buffer first: without one, frames stay in the kernel.
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return (RxStop::NoBuffers, used);
        };
        let head = chain.head_index();
        let written = match RxBuffers::parse(mem, chain) {
            Ok(buffers) => match receive_frame(tap, buf, &buffers) {
                Ok(Some(frame)) => match buffers.write_frame(mem, frame) {
                    Ok(written) => written,
                    Err(e) => {
                        warn!(tap = tap.name(), error = %e, "dropping a received frame");
                        0
                    }
                },
                // The frame was dropped; the buffer takes the next one.
                Ok(None) => {
                    queue.go_to_previous_position();
                    continue;
                }
                Err(stop) => {
                    queue.go_to_previous_position();
                    return (stop, used);
                }
            },
            Err(e) => {
                warn!(tap = tap.name(), error = %e, "returning a malformed receive chain unused");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, written) {
            warn!(tap = tap.name(), error = %e, "cannot return a receive chain");
            return (RxStop::Failed, used);
        }
        used = true;
    }
}

/// Reads one frame from the tap into `buf`; `None` if it was dropped (logged).
fn receive_frame<'a>(
    tap: &Tap,
    buf: &'a mut [u8],
    buffers: &RxBuffers,
) -> Result<Option<&'a [u8]>, RxStop> {
    let len = match tap.read_frame(buf) {
        Ok(len) => len,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(RxStop::TapEmpty),
        Err(e) => {
            warn!(tap = tap.name(), error = %e, "reading the tap failed");
            return Err(RxStop::Failed);
        }
    };
    let Some(frame) = buf.get(VNET_HDR_SIZE..len) else {
        warn!(
            tap = tap.name(),
            len, "dropping a frame shorter than its header from the tap"
        );
        return Ok(None);
    };
    if !buffers.fits(frame.len()) {
        warn!(
            tap = tap.name(),
            len = frame.len(),
            room = buffers.capacity() - VNET_HDR_SIZE,
            "dropping a frame larger than the driver's receive buffer"
        );
        return Ok(None);
    }
    Ok(Some(frame))
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // virtio 1.x drivers never write the MAC; changing it needs the control queue.
        warn!(
            tap = self.tap.name(),
            offset,
            len = data.len(),
            "ignoring write to the read-only virtio-net config space"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let queues = take_queues("virtio-net", queues, &[(RX_QUEUE, "rx"), (TX_QUEUE, "tx")])?;
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        debug!(tap = self.tap.name(), mac = %self.mac, "virtio-net device activated");
        // Notifications before DRIVER_OK were ignored, and frames may be waiting on the tap.
        let notify = self.run_tx() | self.run_rx();
        self.notify_driver(notify);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        let notify = match index {
            RX_QUEUE => self.run_rx(),
            TX_QUEUE => self.run_tx(),
            _ => {
                warn!(index, "ignoring notification of unknown virtio-net queue");
                false
            }
        };
        self.notify_driver(notify);
    }

    fn reset(&mut self) {
        // Frames keep arriving on the tap; the kernel drops them once its queue is full.
        self.active = None;
    }
}

impl HostEvents for NetDevice {
    /// The tap, edge-triggered: while the driver has no buffers the tap stays readable, and
    /// level-triggered events would wake the loop for nothing until it posts some.
    fn host_event_fds(&self) -> Vec<(RawFd, EventSet)> {
        vec![(
            self.tap.as_raw_fd(),
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )]
    }

    fn handle_host_event(&mut self, _index: usize, _events: EventSet) -> Watch {
        let notify = self.run_rx();
        self.notify_driver(notify);
        Watch::Keep
    }
}

impl std::fmt::Debug for NetDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("tap", &self.tap.name())
            .field("mac", &self.mac)
            .field("active", &self.active.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};

    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    };
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::net::frame::guest_header;
    use crate::devices::virtio::test_support::{
        Desc, DriverQueue, MmioDriver, DEVICE_ID, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET,
        USED_F_NO_NOTIFY,
    };

    const MEM_SIZE: usize = 4 << 20;
    const QUEUE_SIZE: u16 = 16;
    const BUFFERS: u64 = 0x1_0000;
    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const BASIC: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC);

    /// A `SOCK_SEQPACKET` pair: one end stands in for the tap, the other is the host's side.
    fn seqpacket_pair() -> (OwnedFd, File) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array, which this function then owns.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // SAFETY: both fds were just created and are owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    /// A guest driver for the net device, and the host end of its fake tap.
    struct Guest {
        driver: MmioDriver<NetDevice>,
        rx: DriverQueue,
        tx: DriverQueue,
        host: File,
        next_buffer: u64,
    }

    impl Guest {
        /// A device whose driver has negotiated `features` and set up both queues, but not
        /// yet set DRIVER_OK.
        fn configured(features: u64) -> Self {
            let (tap, host) = seqpacket_pair();
            let device = NetDevice::new(
                Tap::from_seqpacket(tap, "fake0"),
                "02:11:22:33:44:55".parse().unwrap(),
            );
            let mut guest = Guest {
                driver: MmioDriver::new(device, MEM_SIZE),
                rx: DriverQueue::new(0x1000, QUEUE_SIZE),
                tx: DriverQueue::new(0x2000, QUEUE_SIZE),
                host,
                next_buffer: BUFFERS,
            };
            assert_eq!(guest.driver.read(DEVICE_ID), 1);
            assert_eq!(guest.driver.negotiate(features), 1 | DRIVER | FEATURES_OK);
            guest.driver.setup_queue(RX_QUEUE as u32, &guest.rx);
            guest.driver.setup_queue(TX_QUEUE as u32, &guest.tx);
            guest
        }

        fn new(features: u64) -> Self {
            let mut guest = Self::configured(features);
            assert_eq!(
                guest.driver.driver_ok(),
                1 | DRIVER | FEATURES_OK | DRIVER_OK
            );
            guest
        }

        fn mem(&self) -> &GuestMemoryMmap {
            &self.driver.mem
        }

        fn alloc(&mut self, len: u32) -> u64 {
            let addr = self.next_buffer;
            self.next_buffer += u64::from(len).next_multiple_of(64);
            assert!(self.next_buffer < MEM_SIZE as u64);
            addr
        }

        /// Posts a receive chain of writable buffers of `lens` bytes (filled with 0xaa);
        /// returns its head and buffers.
        fn post_rx(&mut self, lens: &[u32]) -> (u16, Vec<Desc>) {
            let descs: Vec<Desc> = lens
                .iter()
                .map(|&len| {
                    let addr = self.alloc(len);
                    self.mem()
                        .write_slice(&vec![0xaa; len as usize], GuestAddress(addr))
                        .unwrap();
                    (addr, len, true)
                })
                .collect();
            (self.rx.add_chain(&self.driver.mem, &descs), descs)
        }

        /// The bytes of a chain's buffers, concatenated.
        fn chain_bytes(&self, descs: &[Desc]) -> Vec<u8> {
            let mut bytes = Vec::new();
            for &(addr, len, _) in descs {
                let mut part = vec![0u8; len as usize];
                self.mem()
                    .read_slice(&mut part, GuestAddress(addr))
                    .unwrap();
                bytes.extend_from_slice(&part);
            }
            bytes
        }

        /// Puts `bytes` in guest memory cut into descriptors of `cuts` bytes (readable).
        fn tx_chain(&mut self, bytes: &[u8], cuts: &[u32]) -> Vec<Desc> {
            assert_eq!(cuts.iter().sum::<u32>() as usize, bytes.len());
            let mut rest = bytes;
            cuts.iter()
                .map(|&len| {
                    let addr = self.alloc(len);
                    let (part, tail) = rest.split_at(len as usize);
                    self.mem().write_slice(part, GuestAddress(addr)).unwrap();
                    rest = tail;
                    (addr, len, false)
                })
                .collect()
        }

        /// Posts a transmit chain, notifies, and checks it came back empty with an interrupt.
        fn send(&mut self, descs: &[Desc]) {
            let head = self.tx.add_chain(&self.driver.mem, descs);
            let interrupts = self.driver.line.count();
            self.driver.notify(TX_QUEUE as u32);
            assert_eq!(self.tx.pop_used(&self.driver.mem), Some((head, 0)));
            assert!(self.driver.line.count() > interrupts, "no TX interrupt");
            assert!(self.driver.take_used_interrupt());
        }

        /// What the tap side received, if anything.
        fn host_recv(&mut self) -> Option<Vec<u8>> {
            let mut buf = vec![0u8; 70_000];
            match self.host.read(&mut buf) {
                Ok(len) => Some(buf[..len].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => panic!("{e}"),
            }
        }

        /// Sends `frame` from the tap side, behind a header with offload flags a tap may set
        /// (DATA_VALID) which the driver must not see.
        fn host_send(&mut self, frame: &[u8]) {
            let mut packet = vec![2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x77, 0x77];
            packet.extend_from_slice(frame);
            self.host.write_all(&packet).unwrap();
        }

        fn tap_readable(&mut self) {
            // The tap is the device's only host fd.
            self.driver.device().handle_host_event(0, EventSet::IN);
        }
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed)
            .collect()
    }

    /// A driver's transmit packet: a header with junk in it (the device ignores it), then
    /// `frame`.
    fn packet(frame: &[u8]) -> Vec<u8> {
        let mut packet = vec![1, 4, 0x36, 0, 0xdc, 5, 0x22, 0, 0x10, 0, 0, 0];
        packet.extend_from_slice(frame);
        packet
    }

    /// What the tap must receive for `frame`: a zeroed header, then the frame.
    fn on_tap(frame: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; VNET_HDR_SIZE];
        bytes.extend_from_slice(frame);
        bytes
    }

    #[test]
    fn identity_features_and_mac_in_the_config_space() {
        let mut guest = Guest::configured(BASIC);
        assert_eq!(
            guest.driver.device_features(),
            (1 << VIRTIO_F_VERSION_1)
                | (1 << VIRTIO_RING_F_EVENT_IDX)
                | (1 << VIRTIO_RING_F_INDIRECT_DESC)
                | (1 << VIRTIO_NET_F_MAC)
                | (1 << VIRTIO_NET_F_STATUS)
        );
        // mac, then status = LINK_UP; nothing after it.
        assert_eq!(
            guest.driver.read_config(0, 10),
            [0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 1, 0, 0, 0]
        );
        assert_eq!(guest.driver.read_config(4, 2), [0x44, 0x55]);
        assert_eq!(guest.driver.read_config(6, 2), [1, 0]);
        // The config space is read-only.
        guest.driver.transport.write(
            crate::devices::virtio::test_support::CONFIG,
            &[9, 9, 9, 9, 9, 9],
        );
        assert_eq!(guest.driver.read_config(0, 6), MAC);
    }

    #[test]
    fn offloads_and_multiqueue_are_refused_in_negotiation() {
        let mut guest = Guest::configured(BASIC);
        for refused in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_MQ,
        ] {
            let status = guest.driver.negotiate(BASIC | (1 << refused));
            assert_eq!(status & FEATURES_OK, 0, "feature {refused} accepted");
        }
        let all = AVAIL_FEATURES;
        assert_ne!(guest.driver.negotiate(all) & FEATURES_OK, 0);
    }

    #[test]
    fn activation_needs_both_queues() {
        let (tap, _host) = seqpacket_pair();
        let device = NetDevice::new(
            Tap::from_seqpacket(tap, "fake0"),
            MacAddress::for_device_index(0),
        );
        let mut driver = MmioDriver::new(device, MEM_SIZE);
        assert_ne!(driver.negotiate(BASIC) & FEATURES_OK, 0);
        driver.setup_queue(RX_QUEUE as u32, &DriverQueue::new(0x1000, QUEUE_SIZE));
        assert_ne!(driver.driver_ok() & NEEDS_RESET, 0);
        assert!(!driver.device().is_active());
    }

    #[test]
    fn transmitted_frames_reach_the_tap_behind_a_zeroed_header() {
        let mut guest = Guest::new(BASIC);
        let data = frame(60, 1);
        for cuts in [
            // Header and frame in one descriptor, as Linux sends most frames.
            vec![72],
            // Header alone, then the frame.
            vec![12, 60],
            // Header split, frame in pieces.
            vec![4, 8, 30, 1, 29],
        ] {
            let descs = guest.tx_chain(&packet(&data), &cuts);
            guest.send(&descs);
            assert_eq!(guest.host_recv(), Some(on_tap(&data)), "{cuts:?}");
            assert_eq!(guest.host_recv(), None, "one frame per chain");
        }
        // Several chains in one notification go out in order.
        let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(100 + i, i as u8)).collect();
        let mut heads = Vec::new();
        for data in &frames {
            let descs = guest.tx_chain(&packet(data), &[12, data.len() as u32]);
            heads.push(guest.tx.add_chain(&guest.driver.mem, &descs));
        }
        guest.driver.notify(TX_QUEUE as u32);
        for (head, data) in heads.into_iter().zip(&frames) {
            assert_eq!(guest.tx.pop_used(&guest.driver.mem), Some((head, 0)));
            assert_eq!(guest.host_recv(), Some(on_tap(data)));
        }
    }

    #[test]
    fn malformed_transmit_chains_come_back_and_send_nothing() {
        let mut guest = Guest::new(BASIC);
        let data = frame(60, 2);
        let good = guest.tx_chain(&packet(&data), &[12, 60]);
        let end = MEM_SIZE as u64;
        for bad in [
            // A device-writable descriptor.
            vec![good[0], (good[1].0, 60, true)],
            // Shorter than the header.
            vec![(good[0].0, 10, false)],
            // A frame shorter than an Ethernet header.
            vec![good[0], (good[1].0, 13, false)],
            // Outside guest memory.
            vec![good[0], (end - 30, 60, false)],
            vec![(u64::MAX - 8, 12, false), good[1]],
        ] {
            guest.send(&bad);
            assert_eq!(guest.host_recv(), None, "{bad:?}");
        }
        guest.send(&good);
        assert_eq!(guest.host_recv(), Some(on_tap(&data)));
    }

    #[test]
    fn received_frames_fill_posted_buffers_header_first() {
        let mut guest = Guest::new(BASIC);
        let shapes: [&[u32]; 3] = [&[1526], &[12, 1514], &[5, 40, 2000]];
        let posted: Vec<_> = shapes.iter().map(|lens| guest.post_rx(lens)).collect();
        guest.driver.notify(RX_QUEUE as u32);
        assert_eq!(guest.rx.pop_used(&guest.driver.mem), None, "tap is empty");

        let frames: Vec<Vec<u8>> = [60, 1514, 300]
            .iter()
            .enumerate()
            .map(|(i, &len)| frame(len, i as u8))
            .collect();
        for data in &frames {
            guest.host_send(data);
        }
        let interrupts = guest.driver.line.count();
        guest.tap_readable();
        assert!(guest.driver.line.count() > interrupts, "no RX interrupt");
        assert!(guest.driver.take_used_interrupt());
        for ((head, descs), data) in posted.iter().zip(&frames) {
            let used = guest.rx.pop_used(&guest.driver.mem);
            assert_eq!(used, Some((*head, 12 + data.len() as u32)));
            let bytes = guest.chain_bytes(descs);
            assert_eq!(&bytes[..12], &guest_header());
            assert_eq!(&bytes[12..12 + data.len()], &data[..]);
            assert!(bytes[12 + data.len()..].iter().all(|&b| b == 0xaa));
        }
        assert_eq!(guest.rx.pop_used(&guest.driver.mem), None);
    }

    #[test]
    fn without_buffers_frames_wait_on_the_tap_until_the_driver_notifies() {
        for event_idx in [false, true] {
            let features = BASIC | (u64::from(event_idx) << VIRTIO_RING_F_EVENT_IDX);
            let mut guest = Guest::new(features);
            let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(64 + i, i as u8)).collect();
            for data in &frames[..3] {
                guest.host_send(data);
            }
            let interrupts = guest.driver.line.count();
            guest.tap_readable();
            guest.tap_readable();
            assert_eq!(guest.rx.pop_used(&guest.driver.mem), None);
            assert_eq!(guest.driver.line.count(), interrupts);
            // The device asks to be told about new buffers.
            let asks = |guest: &Guest| match event_idx {
                false => guest.rx.used_flags(guest.mem()) & USED_F_NO_NOTIFY == 0,
                true => guest.rx.avail_event(guest.mem()) == guest.rx.avail_idx(),
            };
            assert!(asks(&guest), "event_idx={event_idx}");

            // Two buffers and a notification: the first two frames, taken from the tap
            // on the spot, in order.
            let first = guest.post_rx(&[2048]);
            let second = guest.post_rx(&[2048]);
            guest.driver.notify(RX_QUEUE as u32);
            assert!(guest.driver.take_used_interrupt());
            for ((head, descs), data) in [first, second].iter().zip(&frames) {
                let len = 12 + data.len() as u32;
                assert_eq!(guest.rx.pop_used(&guest.driver.mem), Some((*head, len)));
                assert_eq!(&guest.chain_bytes(descs)[12..len as usize], &data[..]);
            }
            assert_eq!(guest.rx.pop_used(&guest.driver.mem), None);
            assert!(asks(&guest), "out of buffers again, event_idx={event_idx}");

            let (head, descs) = guest.post_rx(&[2048]);
            guest.driver.notify(RX_QUEUE as u32);
            let len = 12 + frames[2].len() as u32;
            assert_eq!(guest.rx.pop_used(&guest.driver.mem), Some((head, len)));
            assert_eq!(&guest.chain_bytes(&descs)[12..len as usize], &frames[2][..]);

            // The tap is empty now; a spare buffer waits for the next frame, and while the
            // device has buffers it does not ask for notifications.
            let (head, descs) = guest.post_rx(&[2048]);
            guest.driver.notify(RX_QUEUE as u32);
            assert_eq!(guest.rx.pop_used(&guest.driver.mem), None);
            if !event_idx {
                assert_ne!(guest.rx.used_flags(guest.mem()) & USED_F_NO_NOTIFY, 0);
            }
            guest.host_send(&frames[3]);
            guest.tap_readable();
            let len = 12 + frames[3].len() as u32;
            assert_eq!(guest.rx.pop_used(&guest.driver.mem), Some((head, len)));
            assert_eq!(&guest.chain_bytes(&descs)[12..len as usize], &frames[3][..]);
        }
    }

    #[test]
    fn malformed_receive_chains_come_back_empty_and_the_frame_takes_the_next_buffer() {
        let mut guest = Guest::new(BASIC);
        let end = MEM_SIZE as u64;
        let readable = guest.rx.add_chain(
            &guest.driver.mem,
            &[(BUFFERS, 12, true), (BUFFERS + 12, 1514, false)],
        );
        let short = guest
            .rx
            .add_chain(&guest.driver.mem, &[(BUFFERS, 11, true)]);
        let outside = guest.rx.add_chain(
            &guest.driver.mem,
            &[(BUFFERS, 12, true), (end - 100, 1514, true)],
        );
        let wrapping = guest
            .rx
            .add_chain(&guest.driver.mem, &[(u64::MAX - 4, 1526, true)]);
        guest.next_buffer += 0x1000;
        let (good, descs) = guest.post_rx(&[1526]);
        let data = frame(98, 7);
        guest.host_send(&data);
        guest.tap_readable();
        for head in [readable, short, outside, wrapping] {
            assert_eq!(guest.rx.pop_used(&guest.driver.mem), Some((head, 0)));
        }
        assert_eq!(guest.rx.pop_used(&guest.driver.mem), Some((good, 12 + 98)));
        assert_eq!(&guest.chain_bytes(&descs)[12..110], &data[..]);
        assert!(guest.driver.take_used_interrupt());
    }

    #[test]
    fn a_frame_too_large_for_the_buffer_is_dropped_and_the_buffer_takes_the_next() {
        let mut guest = Guest::new(BASIC);
        let (head, descs) = guest.post_rx(&[12 + 60]);
        let big = frame(61, 1);
        let small = frame(60, 2);
        guest.host_send(&big);
        guest.host_send(&small);
        guest.tap_readable();
        assert_eq!(guest.rx.pop_used(&guest.driver.mem), Some((head, 72)));
        assert_eq!(&guest.chain_bytes(&descs)[12..], &small[..]);
        assert_eq!(guest.rx.pop_used(&guest.driver.mem), None);
    }

    #[test]
    fn frames_and_buffers_from_before_driver_ok_meet_at_activation() {
        let mut guest = Guest::configured(BASIC);
        let (head, descs) = guest.post_rx(&[1526]);
        let data = frame(80, 3);
        guest.host_send(&data);
        guest.tap_readable();
        assert_eq!(guest.rx.pop_used(&guest.driver.mem), None, "not active yet");
        assert_eq!(
            guest.driver.driver_ok(),
            1 | DRIVER | FEATURES_OK | DRIVER_OK
        );
        assert_eq!(guest.rx.pop_used(&guest.driver.mem), Some((head, 92)));
        assert_eq!(&guest.chain_bytes(&descs)[12..92], &data[..]);
        assert!(guest.driver.take_used_interrupt());

        // After a reset the device holds no queue; frames wait for the next driver.
        guest
            .driver
            .write(crate::devices::virtio::test_support::STATUS, 0);
        assert!(!guest.driver.device().is_active());
        guest.host_send(&data);
        guest.tap_readable();
        guest.driver.notify(RX_QUEUE as u32);
        assert_eq!(guest.host_recv(), None);
        assert!(!guest.driver.take_used_interrupt());
    }
}
