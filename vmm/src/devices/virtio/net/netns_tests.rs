//! The net device on a real tap, in a private network namespace, driven through virtio-mmio
//! as a guest driver would: an ARP request and an ICMP echo request go out through the tap to
//! the host kernel, and its replies come back into the receive queue.
//!
//! Needs root (to create the namespace and the tap) and /dev/net/tun. Nothing here touches the
//! host's own network namespace: the tap, its address and the sysctl written live and die
//! with the namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};

use super::frame::{guest_header, VNET_HDR_SIZE};
use super::{MacAddress, NetDevice, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::test_support::{
    Desc, DriverQueue, MmioDriver, DRIVER, DRIVER_OK, FEATURES_OK,
};
use crate::devices::HostEvents;

const TAP_NAME: &str = "hulltest0";
const HOST_IP: [u8; 4] = [10, 77, 0, 1];
const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
const MEM_SIZE: usize = 1 << 20;
const QUEUE_SIZE: u16 = 32;
const RX_BUFFERS: u64 = 0x1_0000;
const RX_BUFFER_SIZE: u32 = 2048;
const TX_BUFFERS: u64 = 0x8_0000;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;

/// Runs `test` on a thread of its own in a fresh network namespace (`unshare` moves only the
/// calling thread). The namespace goes away with its last user: the thread, which ends with
/// the test, and the tap and sockets the test opened.
fn in_private_netns<T: Send + 'static>(test: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): these tests run as root");
        test()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Keeps IPv6 off the interfaces created from now on in this thread's namespace, so the only
/// frames on the tap are the test's (router solicitations and MLD reports would join them).
fn disable_ipv6_in_this_netns() {
    let path = "/proc/sys/net/ipv6/conf/default/disable_ipv6";
    if std::path::Path::new(path).exists() {
        std::fs::write(path, "1").unwrap();
    }
}

/// An `AF_INET` socket of this thread's namespace, for interface ioctls.
fn inet_socket() -> OwnedFd {
    // SAFETY: socket() with constant arguments; the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: fd was just created and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: all zeroes is a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request
}

fn interface_ioctl(socket: &OwnedFd, request: libc::Ioctl, ifreq: &mut libc::ifreq, what: &str) {
    // SAFETY: every request used here reads or writes one ifreq, which outlives the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request, ifreq as *mut libc::ifreq) };
    assert_eq!(rc, 0, "{what}: {}", std::io::Error::last_os_error());
}

fn set_ipv4(socket: &OwnedFd, name: &str, request: libc::Ioctl, addr: [u8; 4], what: &str) {
    let mut req = ifreq(name);
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the union field is plain data.
    unsafe {
        std::ptr::write(
            &mut req.ifr_ifru.ifru_addr as *mut libc::sockaddr as *mut libc::sockaddr_in,
            sin,
        );
    }
    interface_ioctl(socket, request, &mut req, what);
}

/// Gives the interface `name` the address `ip`/24, brings it up, and returns its MAC.
fn configure_interface(name: &str, ip: [u8; 4]) -> [u8; 6] {
    let socket = inet_socket();
    set_ipv4(&socket, name, libc::SIOCSIFADDR, ip, "SIOCSIFADDR");
    set_ipv4(
        &socket,
        name,
        libc::SIOCSIFNETMASK,
        [255, 255, 255, 0],
        "SIOCSIFNETMASK",
    );
    let mut req = ifreq(name);
    interface_ioctl(&socket, libc::SIOCGIFFLAGS, &mut req, "SIOCGIFFLAGS");
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    interface_ioctl(&socket, libc::SIOCSIFFLAGS, &mut req, "SIOCSIFFLAGS");
    let mut req = ifreq(name);
    interface_ioctl(&socket, libc::SIOCGIFHWADDR, &mut req, "SIOCGIFHWADDR");
    // SAFETY: SIOCGIFHWADDR filled the hardware address member.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    std::array::from_fn(|i| data[i] as u8)
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An ARP packet for IPv4 over Ethernet (RFC 826).
fn arp(op: u16, sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4])) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4];
    arp.extend_from_slice(&op.to_be_bytes());
    arp.extend_from_slice(&sender.0);
    arp.extend_from_slice(&sender.1);
    arp.extend_from_slice(&target.0);
    arp.extend_from_slice(&target.1);
    arp
}

/// An IPv4 packet carrying an ICMP echo request (RFC 792).
fn icmp_echo_request(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(data);
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// A guest driver on the device, with an event loop of its own for the tap.
struct Guest {
    driver: MmioDriver<NetDevice>,
    rx: DriverQueue,
    tx: DriverQueue,
    /// Posted receive chains: head → buffers.
    rx_chains: std::collections::HashMap<u16, Vec<Desc>>,
    next_rx_buffer: u64,
    epoll: Epoll,
    mac: [u8; 6],
}

impl Guest {
    fn new(device: NetDevice) -> Self {
        // What the VMM's event loop does with a device's host fd.
        let epoll = Epoll::new().unwrap();
        for (index, (fd, events)) in device.host_event_fds().into_iter().enumerate() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(events, index as u64),
                )
                .unwrap();
        }
        let mut guest = Guest {
            driver: MmioDriver::new(device, MEM_SIZE),
            rx: DriverQueue::new(0x1000, QUEUE_SIZE),
            tx: DriverQueue::new(0x2000, QUEUE_SIZE),
            rx_chains: Default::default(),
            next_rx_buffer: RX_BUFFERS,
            epoll,
            mac: [0; 6],
        };
        // A minimal driver: the MAC and the link status, no ring extensions.
        let features =
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS);
        let driver = &mut guest.driver;
        assert_eq!(driver.negotiate(features), 1 | DRIVER | FEATURES_OK);
        driver.setup_queue(RX_QUEUE as u32, &guest.rx);
        driver.setup_queue(TX_QUEUE as u32, &guest.tx);
        assert_eq!(driver.driver_ok(), 1 | DRIVER | FEATURES_OK | DRIVER_OK);
        let config = driver.read_config(0, 8);
        guest.mac = config[..6].try_into().unwrap();
        assert_eq!(&config[6..], [1, 0], "link up");
        guest
    }

    fn mem(&self) -> &GuestMemoryMmap {
        &self.driver.mem
    }

    /// Posts `count` receive chains (without notifying): whole buffers, and buffers with the
    /// header apart, as drivers post them.
    fn post_rx(&mut self, count: usize) {
        for i in 0..count {
            let addr = self.next_rx_buffer;
            self.next_rx_buffer += u64::from(RX_BUFFER_SIZE);
            if self.next_rx_buffer >= TX_BUFFERS {
                self.next_rx_buffer = RX_BUFFERS;
            }
            let descs: Vec<Desc> = if i % 2 == 0 {
                vec![(addr, RX_BUFFER_SIZE, true)]
            } else {
                vec![(addr, 12, true), (addr + 12, RX_BUFFER_SIZE - 12, true)]
            };
            let head = self.rx.add_chain(&self.driver.mem, &descs);
            self.rx_chains.insert(head, descs);
        }
    }

    /// Sends `frame`, with the header in a descriptor of its own or not.
    fn send(&mut self, frame: &[u8], header_apart: bool) {
        let mut packet = vec![0u8; VNET_HDR_SIZE];
        packet.extend_from_slice(frame);
        self.mem()
            .write_slice(&packet, GuestAddress(TX_BUFFERS))
            .unwrap();
        let descs: Vec<Desc> = if header_apart {
            vec![
                (TX_BUFFERS, 12, false),
                (TX_BUFFERS + 12, frame.len() as u32, false),
            ]
        } else {
            vec![(TX_BUFFERS, packet.len() as u32, false)]
        };
        let head = self.tx.add_chain(&self.driver.mem, &descs);
        self.driver.notify(TX_QUEUE as u32);
        assert_eq!(self.tx.pop_used(&self.driver.mem), Some((head, 0)));
        assert!(self.driver.take_used_interrupt());
    }

    /// The next received frame the device returned, checked for its header; its buffers go
    /// back to the device.
    fn pop_frame(&mut self) -> Option<Vec<u8>> {
        let (head, len) = self.rx.pop_used(&self.driver.mem)?;
        let descs = self.rx_chains.remove(&head).unwrap();
        let mut bytes = Vec::new();
        for (addr, len, _) in descs {
            let mut part = vec![0u8; len as usize];
            self.mem()
                .read_slice(&mut part, GuestAddress(addr))
                .unwrap();
            bytes.extend_from_slice(&part);
        }
        let len = len as usize;
        assert!(len > VNET_HDR_SIZE + 14, "used length {len}");
        assert_eq!(&bytes[..VNET_HDR_SIZE], &guest_header());
        self.post_rx(1);
        Some(bytes[VNET_HDR_SIZE..len].to_vec())
    }

    /// Runs the event loop's side until a frame `wanted` accepts arrives; answers ARP
    /// requests for the guest's address on the way, as a guest's stack would.
    fn receive(&mut self, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(frame) = self.pop_frame() {
                assert!(self.driver.take_used_interrupt(), "no RX interrupt");
                if wanted(&frame) {
                    return frame;
                }
                if is_arp(&frame, 1) && frame[38..42] == GUEST_IP {
                    let sender: [u8; 6] = frame[22..28].try_into().unwrap();
                    let ip: [u8; 4] = frame[28..32].try_into().unwrap();
                    let reply = arp(2, (self.mac, GUEST_IP), (sender, ip));
                    self.send(&ethernet(sender, self.mac, ETH_P_ARP, &reply), true);
                }
            }
            assert!(Instant::now() < deadline, "the expected frame never came");
            self.wait_for_tap(Duration::from_millis(100));
        }
    }

    /// One round of the event loop: waits up to `limit` for the tap; returns whether it
    /// turned readable (and the device was told).
    fn wait_for_tap(&mut self, limit: Duration) -> bool {
        let mut events = [EpollEvent::default(); 1];
        let ready = self
            .epoll
            .wait(limit.as_millis() as i32, &mut events)
            .unwrap();
        if ready > 0 {
            let event = events[0];
            self.driver
                .device()
                .handle_host_event(event.data() as usize, event.event_set());
        }
        ready > 0
    }
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

fn is_arp(frame: &[u8], op: u16) -> bool {
    frame.len() >= 42 && ethertype(frame) == ETH_P_ARP && frame[20..22] == op.to_be_bytes()
}

#[test]
fn arp_and_ping_through_a_real_tap_in_a_private_netns() {
    in_private_netns(|| {
        disable_ipv6_in_this_netns();
        // The device's own open path creates the tap in this namespace.
        let device = NetDevice::open(TAP_NAME, MacAddress::for_device_index(0)).unwrap();
        let tap_mac = configure_interface(TAP_NAME, HOST_IP);
        let mut guest = Guest::new(device);
        assert_eq!(guest.mac, [2, 0, 0, 0, 0, 1]);
        let guest_mac = guest.mac;

        // Who has 10.77.0.1? Sent before the guest has any receive buffer.
        let request = arp(1, (guest_mac, GUEST_IP), ([0; 6], HOST_IP));
        guest.send(&ethernet([0xff; 6], guest_mac, ETH_P_ARP, &request), true);
        assert!(
            guest.wait_for_tap(Duration::from_secs(5)),
            "the kernel never answered the ARP request"
        );
        // Nowhere to put the reply: it stays on the tap, and the event loop is not woken
        // again for it.
        assert_eq!(guest.rx.pop_used(&guest.driver.mem), None);
        assert!(!guest.driver.take_used_interrupt());
        assert!(!guest.wait_for_tap(Duration::from_millis(200)));

        // The driver posts buffers and notifies: the reply comes off the tap right then.
        guest.post_rx(8);
        guest.driver.notify(RX_QUEUE as u32);
        assert!(guest.driver.take_used_interrupt());
        let reply = guest.pop_frame().expect("the ARP reply waited on the tap");
        assert_eq!(reply.len(), 42, "{reply:02x?}");
        assert_eq!(&reply[..6], &guest_mac, "to the guest");
        assert_eq!(&reply[6..12], &tap_mac, "from the tap");
        assert!(is_arp(&reply, 2), "{reply:02x?}");
        assert_eq!(&reply[22..28], &tap_mac, "10.77.0.1 is at the tap's MAC");
        assert_eq!(&reply[28..32], &HOST_IP);
        assert_eq!(&reply[32..38], &guest_mac);
        assert_eq!(&reply[38..42], &GUEST_IP);

        // Ping 10.77.0.1, header and frame in one descriptor this time.
        let data: Vec<u8> = (0..56u8).collect();
        let ping = icmp_echo_request(GUEST_IP, HOST_IP, 0x4855, 7, &data);
        guest.send(&ethernet(tap_mac, guest_mac, ETH_P_IP, &ping), false);
        let pong = guest.receive(|frame| {
            frame.len() >= 34 && ethertype(frame) == ETH_P_IP && frame[23] == 1 && frame[34] == 0
        });
        assert_eq!(&pong[..6], &guest_mac);
        assert_eq!(&pong[6..12], &tap_mac);
        let ip = &pong[14..];
        assert_eq!(&ip[12..16], &HOST_IP);
        assert_eq!(&ip[16..20], &GUEST_IP);
        assert_eq!(checksum(&ip[..20]), 0, "IPv4 header checksum");
        let icmp = &ip[20..usize::from(u16::from_be_bytes([ip[2], ip[3]]))];
        assert_eq!(&icmp[..2], [0, 0], "echo reply");
        assert_eq!(&icmp[4..8], [0x48, 0x55, 0, 7], "id and sequence");
        assert_eq!(&icmp[8..], &data[..]);
        assert_eq!(checksum(icmp), 0, "ICMP checksum");
    });
    // The tap lived and died in the private namespace.
    assert!(!std::path::Path::new("/sys/class/net")
        .join(TAP_NAME)
        .exists());
}

/// Opens `/dev/net/tun` as another program would (blocking) and attaches it to the tap `name`
/// with `flags`, creating it in this thread's namespace.
fn attach_tap(name: &str, flags: libc::c_int) -> OwnedFd {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let mut request = ifreq(name);
    request.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    tun.into()
}

#[test]
fn a_tap_opened_elsewhere_and_passed_by_descriptor_carries_frames() {
    in_private_netns(|| {
        disable_ipv6_in_this_netns();
        let opened = attach_tap(
            TAP_NAME,
            libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
        );
        let fd = std::os::fd::IntoRawFd::into_raw_fd(opened);
        let tap = super::Tap::from_fd(fd).unwrap();
        assert_eq!(tap.name(), TAP_NAME);
        assert_eq!(tap.as_raw_fd(), fd);
        // What opening by name sets, set on the passed descriptor too.
        // SAFETY: fcntl and ioctl on the descriptor the tap owns; the header size is one int.
        let (status, descriptor, mut header_size) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
                0 as libc::c_int,
            )
        };
        assert_ne!(status & libc::O_NONBLOCK, 0, "non-blocking");
        assert_ne!(descriptor & libc::FD_CLOEXEC, 0, "close-on-exec");
        // SAFETY: as above.
        let rc = unsafe { libc::ioctl(fd, libc::TUNGETVNETHDRSZ, &mut header_size) };
        assert_eq!(rc, 0);
        assert_eq!(header_size as usize, VNET_HDR_SIZE);
        // Nothing waiting: a read returns at once instead of blocking the thread.
        let err = tap.read_frame(&mut [0; 2048]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);

        let tap_mac = configure_interface(TAP_NAME, HOST_IP);
        let mut guest = Guest::new(NetDevice::new(tap, MacAddress::for_device_index(0)));
        let guest_mac = guest.mac;
        guest.post_rx(4);
        guest.driver.notify(RX_QUEUE as u32);
        let request = arp(1, (guest_mac, GUEST_IP), ([0; 6], HOST_IP));
        guest.send(&ethernet([0xff; 6], guest_mac, ETH_P_ARP, &request), false);
        let reply = guest.receive(|frame| is_arp(frame, 2));
        assert_eq!(&reply[22..28], &tap_mac, "10.77.0.1 is at the tap's MAC");
        assert_eq!(&reply[38..42], &GUEST_IP);
    });
}

#[test]
fn a_passed_descriptor_that_is_no_usable_tap_is_refused_and_left_open() {
    in_private_netns(|| {
        let refused = |fd: &OwnedFd| super::Tap::from_fd(fd.as_raw_fd()).unwrap_err().to_string();
        let without_header = attach_tap("hullnohdr0", libc::IFF_TAP | libc::IFF_NO_PI);
        let err = refused(&without_header);
        assert!(
            err.contains("hullnohdr0") && err.contains("lacks IFF_VNET_HDR"),
            "{err}"
        );
        let tun = attach_tap("hulltun0", libc::IFF_TUN | libc::IFF_VNET_HDR);
        let err = refused(&tun);
        assert!(
            err.contains("hulltun0") && err.contains("lacks IFF_TAP"),
            "{err}"
        );
        let unattached: OwnedFd = std::fs::File::open("/dev/net/tun").unwrap().into();
        let err = refused(&unattached);
        assert!(
            err.contains("is not a tap") && err.contains("TUNGETIFF"),
            "{err}"
        );
        let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(refused(&file).contains("is not a tap"));
        // Each refused descriptor is still open and still the caller's.
        for fd in [&without_header, &tun, &unattached, &file] {
            // SAFETY: F_GETFD on a descriptor the test owns.
            assert!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) } >= 0);
        }
        let closed = file.as_raw_fd();
        drop(file);
        let err = super::Tap::from_fd(closed).unwrap_err().to_string();
        assert!(
            err.contains(&format!("Tap fd {closed} is not open")),
            "{err}"
        );
    });
}
