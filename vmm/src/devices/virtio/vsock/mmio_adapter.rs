//! The vsock device behind the built-in VMM's virtio-mmio transport.
//!
//! [`VsockMmioDevice`] implements [`VirtioDevice`] around the transport-independent
//! [`VsockDevice`]. Work arrives from two places: queue notifications (through the
//! transport, on a vCPU thread) and host sockets (the VMM's event loop drives it as a
//! [`HostEvents`] device).

use std::os::unix::io::RawFd;

use tracing::{debug, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::device::{DeviceError, VsockDevice, EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use super::VsockConfig;
use crate::devices::virtio::mmio::{
    read_config_space, take_queues, ActivateError, VirtioDevice, VirtioInterrupt,
};
use crate::devices::{HostEvents, Watch};

/// Largest virtqueue the device offers.
const QUEUE_MAX_SIZE: u16 = 256;
const QUEUE_MAX_SIZES: [u16; NUM_QUEUES] = [QUEUE_MAX_SIZE; NUM_QUEUES];
/// Descriptor chains are walked through `virtio-queue`, which follows indirect tables.
const AVAIL_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);

/// What `activate` handed over; dropped on reset.
struct Active {
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    queues: [Queue; NUM_QUEUES],
    interrupt: VirtioInterrupt,
}

/// virtio-vsock (device type 19, queues rx/tx/event, config = guest CID) as a
/// [`VirtioDevice`].
pub struct VsockMmioDevice {
    device: VsockDevice,
    active: Option<Active>,
}

impl VsockMmioDevice {
    /// Creates the device and binds its hybrid vsock socket.
    pub fn new(config: &VsockConfig) -> Result<Self, DeviceError> {
        Ok(Self::from_device(VsockDevice::new(config)?))
    }

    /// Wraps an existing device core.
    pub fn from_device(device: VsockDevice) -> Self {
        VsockMmioDevice {
            device,
            active: None,
        }
    }

    /// The device core.
    pub fn device(&self) -> &VsockDevice {
        &self.device
    }

    /// Whether the driver activated the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }
}

/// Consumes the TX queue, then fills RX with the replies. Returns whether to interrupt.
fn run_tx(device: &mut VsockDevice, active: &mut Active) -> bool {
    let mem = active.mem.memory();
    let queue = &mut active.queues[TX_QUEUE];
    if !queue.ready() {
        return false;
    }
    match device.process_tx(&*mem, queue) {
        Ok(notify) => notify,
        Err(e) => {
            warn!(error = %e, "vsock TX queue failed");
            false
        }
    }
}

/// Fills RX buffers with pending packets. Returns whether to interrupt.
fn run_rx(device: &mut VsockDevice, active: &mut Active) -> bool {
    let mem = active.mem.memory();
    let queue = &mut active.queues[RX_QUEUE];
    if !queue.ready() {
        return false;
    }
    match device.process_rx(&*mem, queue) {
        Ok(notify) => notify,
        Err(e) => {
            warn!(error = %e, "vsock RX queue failed");
            false
        }
    }
}

fn notify_driver(active: &Active, notify: bool) {
    if notify {
        if let Err(e) = active.interrupt.signal_used_queue() {
            warn!(error = %e, "cannot interrupt the vsock driver");
        }
    }
}

impl VirtioDevice for VsockMmioDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.device.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            offset,
            len = data.len(),
            "ignoring write to the read-only vsock config space"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        // The device never sends events, so the event queue may stay unused.
        let queues = take_queues("vsock", queues, &[(RX_QUEUE, "rx"), (TX_QUEUE, "tx")])?;
        let mut active = Active {
            mem,
            queues,
            interrupt,
        };
        // Notifications sent before DRIVER_OK were ignored, and host clients may already be
        // waiting: catch up on both.
        let notify = run_tx(&mut self.device, &mut active) | run_rx(&mut self.device, &mut active);
        notify_driver(&active, notify);
        self.active = Some(active);
        debug!(
            guest_cid = self.device.guest_cid(),
            "vsock device activated"
        );
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        let Some(active) = &mut self.active else {
            return;
        };
        let notify = match index {
            RX_QUEUE => run_rx(&mut self.device, active),
            TX_QUEUE => run_tx(&mut self.device, active) | run_rx(&mut self.device, active),
            // The device never sends events, so event buffers just wait.
            EVENT_QUEUE => false,
            _ => {
                warn!(index, "ignoring notification of unknown vsock queue");
                false
            }
        };
        notify_driver(active, notify);
    }

    fn reset(&mut self) {
        // Host connections stay open: a fresh driver knows none of them and answers their next
        // packet with RST, which closes them.
        self.active = None;
    }
}

impl HostEvents for VsockMmioDevice {
    /// The muxer's own epoll set, readable (level-triggered) while any host socket is ready.
    fn host_event_fds(&self) -> Vec<(RawFd, EventSet)> {
        vec![(self.device.host_events_fd(), EventSet::IN)]
    }

    /// Handles ready host sockets and passes what they produced to the guest. Host clients
    /// may connect before the driver is up: their requests wait until activation.
    fn handle_host_event(&mut self, _index: usize, _events: EventSet) -> Watch {
        self.device.process_host_events();
        if let Some(active) = &mut self.active {
            let notify = run_rx(&mut self.device, active);
            notify_driver(active, notify);
        }
        Watch::Keep
    }
}

impl std::fmt::Debug for VsockMmioDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockMmioDevice")
            .field("device", &self.device)
            .field("active", &self.active.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::mmio::MMIO_MAGIC_VALUE;
    use crate::devices::virtio::test_support::{
        DriverQueue, MmioDriver, CONFIG, DEVICE_FEATURES, DEVICE_FEATURES_SEL, DEVICE_ID,
        DRIVER_FEATURES, DRIVER_FEATURES_SEL, INTERRUPT_ACK, INTERRUPT_STATUS, MAGIC_VALUE,
        QUEUE_DESC_LOW, QUEUE_DEVICE_LOW, QUEUE_DRIVER_LOW, QUEUE_NOTIFY, QUEUE_NUM, QUEUE_NUM_MAX,
        QUEUE_READY, QUEUE_SEL, STATUS, VERSION,
    };
    use crate::devices::virtio::vsock::packet::{
        PacketHeader, HEADER_SIZE, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW, TYPE_STREAM,
    };
    use crate::devices::virtio::vsock::HOST_CID;

    const GUEST_CID: u64 = 3;
    const GUEST_PORT: u32 = 1234;
    const QUEUE_SIZE: u16 = 16;
    const MEM_SIZE: usize = 1 << 20;
    const BUF_SIZE: u32 = 0x1000;

    /// A Unix socket path removed when the test ends.
    struct SocketPath(PathBuf);

    impl SocketPath {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("hull-mmio-{name}-{}", std::process::id()));
            let _ = std::fs::remove_file(&path);
            SocketPath(path)
        }
    }

    impl Drop for SocketPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The driver's side of one queue, with one-descriptor chains, each in a buffer of its
    /// own, taken in turn from `buffers`.
    struct Ring {
        queue: DriverQueue,
        buffers: u64,
        posted: u64,
    }

    impl Ring {
        fn new(base: u64, buffers: u64) -> Self {
            Ring {
                queue: DriverQueue::new(base, QUEUE_SIZE),
                buffers,
                posted: 0,
            }
        }

        /// Posts a buffer holding `bytes` (or empty and device-writable); returns its address.
        fn post(&mut self, mem: &GuestMemoryMmap, bytes: Option<&[u8]>) -> u64 {
            let slot = self.posted % u64::from(QUEUE_SIZE);
            self.posted += 1;
            let addr = self.buffers + slot * u64::from(BUF_SIZE);
            let desc = match bytes {
                Some(bytes) => {
                    mem.write_slice(bytes, GuestAddress(addr)).unwrap();
                    (addr, bytes.len() as u32, false)
                }
                None => (addr, BUF_SIZE, true),
            };
            self.queue.add_chain(mem, &[desc]);
            addr
        }

        /// The next used buffer: its address and the length the device wrote.
        fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u64, u32)> {
            let (_, descs, len) = self.queue.pop_used_chain(mem)?;
            Some((descs[0].0, len))
        }
    }

    /// A guest driver talking to the vsock device through its virtio-mmio registers.
    struct Guest {
        driver: MmioDriver<VsockMmioDevice>,
        rings: Vec<Ring>,
        uds: SocketPath,
    }

    impl Guest {
        fn new(name: &str) -> Self {
            let uds = SocketPath::new(name);
            let config = VsockConfig {
                guest_cid: GUEST_CID,
                uds_path: uds.0.clone(),
            };
            let driver = MmioDriver::new(VsockMmioDevice::new(&config).unwrap(), MEM_SIZE);
            let rings = (0..NUM_QUEUES as u64)
                .map(|i| Ring::new(0x1000 * (i + 1), 0x1_0000 * (i + 1)))
                .collect();
            Guest { driver, rings, uds }
        }

        fn read(&mut self, offset: u64) -> u32 {
            self.driver.read(offset)
        }

        fn write(&mut self, offset: u64, value: u32) {
            self.driver.write(offset, value)
        }

        /// The virtio 1.x initialisation sequence, enabling the queues in `enable`.
        fn probe(&mut self, enable: &[usize]) -> u32 {
            assert_eq!(self.read(MAGIC_VALUE), MMIO_MAGIC_VALUE);
            assert_eq!(self.read(VERSION), 2);
            assert_eq!(self.read(DEVICE_ID), 19);
            self.write(STATUS, 1);
            self.write(STATUS, 1 | 2);
            self.write(DEVICE_FEATURES_SEL, 1);
            let high = self.read(DEVICE_FEATURES);
            assert_ne!(high & 1, 0, "VERSION_1 offered");
            self.write(DRIVER_FEATURES_SEL, 0);
            self.write(DRIVER_FEATURES, 0);
            self.write(DRIVER_FEATURES_SEL, 1);
            self.write(DRIVER_FEATURES, 1);
            self.write(STATUS, 1 | 2 | 8);
            assert_eq!(self.read(STATUS), 1 | 2 | 8);
            for &index in enable {
                self.write(QUEUE_SEL, index as u32);
                assert_eq!(self.read(QUEUE_NUM_MAX), 256);
                assert_eq!(self.read(QUEUE_READY), 0);
                self.write(QUEUE_NUM, u32::from(QUEUE_SIZE));
                let ring = &self.rings[index].queue;
                let (desc, avail, used) = (ring.desc, ring.avail, ring.used);
                self.write(QUEUE_DESC_LOW, desc as u32);
                self.write(QUEUE_DRIVER_LOW, avail as u32);
                self.write(QUEUE_DEVICE_LOW, used as u32);
                self.write(QUEUE_READY, 1);
            }
            self.write(STATUS, 1 | 2 | 8 | 4);
            self.read(STATUS)
        }

        fn send(&mut self, hdr: PacketHeader, data: &[u8]) {
            let mut raw = hdr.to_bytes().to_vec();
            raw.extend_from_slice(data);
            self.rings[TX_QUEUE].post(&self.driver.mem, Some(&raw));
            let interrupts = self.driver.line.count();
            self.write(QUEUE_NOTIFY, TX_QUEUE as u32);
            let used = self.rings[TX_QUEUE].pop_used(&self.driver.mem);
            assert!(used.is_some(), "TX buffer not returned");
            assert!(
                self.driver.line.count() > interrupts,
                "no interrupt for the used TX buffer"
            );
            assert_ne!(self.read(INTERRUPT_STATUS) & 1, 0);
            self.write(INTERRUPT_ACK, 1);
        }

        /// Runs the event loop's host-side work until a packet reaches the guest.
        fn recv(&mut self) -> (PacketHeader, Vec<u8>) {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some((addr, len)) = self.rings[RX_QUEUE].pop_used(&self.driver.mem) {
                    assert_ne!(self.read(INTERRUPT_STATUS) & 1, 0);
                    self.write(INTERRUPT_ACK, 1);
                    let mut raw = vec![0u8; len as usize];
                    self.driver
                        .mem
                        .read_slice(&mut raw, GuestAddress(addr))
                        .unwrap();
                    self.rings[RX_QUEUE].post(&self.driver.mem, None);
                    self.write(QUEUE_NOTIFY, RX_QUEUE as u32);
                    let hdr = PacketHeader::from_bytes(raw[..HEADER_SIZE].try_into().unwrap());
                    return (hdr, raw.split_off(HEADER_SIZE));
                }
                assert!(Instant::now() < deadline, "no packet for the guest");
                std::thread::sleep(Duration::from_millis(1));
                self.host_events();
            }
        }

        /// What the event loop does when the device's host fd is ready.
        fn host_events(&mut self) {
            self.driver.device().handle_host_event(0, EventSet::IN);
        }

        fn recv_skipping_credit(&mut self) -> (PacketHeader, Vec<u8>) {
            loop {
                let packet = self.recv();
                if packet.0.op != OP_CREDIT_UPDATE {
                    return packet;
                }
            }
        }
    }

    fn header(host_port: u32, op: u16, len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: GUEST_PORT,
            dst_port: host_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 * 1024,
            fwd_cnt: 0,
        }
    }

    fn read_exact(stream: &mut UnixStream, len: usize) -> Vec<u8> {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut out = vec![0u8; len];
        stream.read_exact(&mut out).unwrap();
        out
    }

    #[test]
    fn config_space_is_the_guest_cid() {
        let mut guest = Guest::new("config");
        assert_eq!(guest.read(CONFIG), GUEST_CID as u32);
        assert_eq!(guest.read(CONFIG + 4), 0);
        let mut byte = [0xffu8; 1];
        guest.driver.transport.read(CONFIG + 8, &mut byte);
        assert_eq!(byte, [0], "past the config space");
        guest.write(STATUS, 1);
        guest.write(STATUS, 3);
        guest.write(CONFIG, 9);
        assert_eq!(guest.read(CONFIG), GUEST_CID as u32, "config is read-only");
    }

    #[test]
    fn activation_needs_rx_and_tx_queues() {
        let mut guest = Guest::new("partial");
        let status = guest.probe(&[RX_QUEUE, EVENT_QUEUE]);
        assert_ne!(status & 0x40, 0, "DEVICE_NEEDS_RESET expected");
        assert!(!guest.driver.device().is_active());
        guest.write(STATUS, 0);
        assert_eq!(guest.probe(&[RX_QUEUE, TX_QUEUE, EVENT_QUEUE]), 0xf);
        assert!(guest.driver.device().is_active());
    }

    #[test]
    fn negotiates_and_exchanges_data_with_a_host_client() {
        let mut guest = Guest::new("stream");
        // Host clients may connect before the driver is up.
        let mut host = UnixStream::connect(&guest.uds.0).unwrap();
        host.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
            .unwrap();
        guest.host_events();

        assert_eq!(guest.probe(&[RX_QUEUE, TX_QUEUE, EVENT_QUEUE]), 0xf);
        for _ in 0..4 {
            guest.rings[RX_QUEUE].post(&guest.driver.mem, None);
        }
        guest.write(QUEUE_NOTIFY, RX_QUEUE as u32);

        let (req, data) = guest.recv();
        assert_eq!(req.op, OP_REQUEST);
        assert!(data.is_empty());
        assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(req.dst_port, GUEST_PORT);
        let host_port = req.src_port;

        guest.send(header(host_port, OP_RESPONSE, 0), &[]);
        let ok = format!("OK {host_port}\n");
        assert_eq!(read_exact(&mut host, ok.len()), ok.as_bytes());

        guest.send(header(host_port, OP_RW, 4), b"ping");
        assert_eq!(read_exact(&mut host, 4), b"ping");

        host.write_all(b"pong").unwrap();
        let (rw, data) = guest.recv_skipping_credit();
        assert_eq!(rw.op, OP_RW);
        assert_eq!((rw.src_port, rw.dst_port), (host_port, GUEST_PORT));
        assert_eq!(data, b"pong");
        assert_eq!(guest.driver.device().device().connection_count(), 1);
    }
}
