//! `hull-vmm vsock`, the vsock device served to QEMU in a confined process of its own,
//! driven as QEMU and a guest driver would drive it: the test binds both listening sockets
//! and passes them, speaks vhost-user as the frontend (memory table on a memfd, vrings with
//! kick and call eventfds), and plays the guest's virtio-vsock driver on split rings in that
//! memory. A host client connects with `CONNECT <port>` and exchanges data both ways, the
//! guest connects out to `<uds>_<port>` inside the jail, and /proc shows the process
//! jailed, without capabilities and filtered on every thread. It exits 0 when the frontend
//! goes away, or on SIGTERM.
//!
//! Needs root (mount namespace, pivot, uid change).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_vmm::devices::virtio::vsock::packet::{
    PacketHeader, HEADER_SIZE, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW, TYPE_STREAM,
};
use hull_vmm::devices::virtio::vsock::{NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use hull_vmm::vstate::memory::create_guest_memory;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

mod common;
#[allow(dead_code)]
#[path = "../src/devices/virtio/test_support/queue.rs"]
mod queue;

use common::{pass_fds, status_field, Vmm, VMM};
use queue::DriverQueue;

const NOBODY: u32 = 65534;
const GUEST_CID: u64 = 3;
const HOST_CID: u64 = 2;
const QUEUE_SIZE: u16 = 64;
const MEM_SIZE: usize = 4 << 20;
/// Buffers are carved from here to the end of guest memory, round robin.
const DATA_START: u64 = 0x1_0000;
const BUF_SIZE: u32 = 4096;

/// A jail directory with the two sockets the backend is given, bound by the test as the
/// shim binds them.
struct Sockets {
    dir: tempfile::TempDir,
    vhost_user: UnixListener,
    hybrid: UnixListener,
}

impl Sockets {
    fn bind() -> Sockets {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("jail")).unwrap();
        let vhost_user = UnixListener::bind(dir.path().join("vhost-user.sock")).unwrap();
        let hybrid = UnixListener::bind(dir.path().join("jail/vsock.sock")).unwrap();
        Sockets {
            dir,
            vhost_user,
            hybrid,
        }
    }

    fn jail(&self) -> PathBuf {
        self.dir.path().join("jail")
    }

    fn vhost_user_path(&self) -> PathBuf {
        self.dir.path().join("vhost-user.sock")
    }

    /// `hull-vmm vsock` with the sockets as descriptors 3 and 4 and `extra` arguments.
    fn command(&self, extra: &[&str]) -> Command {
        self.command_with("vsock.sock", "3", extra)
    }

    fn command_with(&self, uds: &str, guest_cid: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(VMM);
        command
            .args([
                "vsock",
                "--vhost-user-fd",
                "3",
                "--hybrid-fd",
                "4",
                "--uds",
                uds,
                "--guest-cid",
                guest_cid,
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        pass_fds(
            &mut command,
            &[
                (self.vhost_user.as_raw_fd(), 3),
                (self.hybrid.as_raw_fd(), 4),
            ],
        );
        command
    }

    /// The backend jailed in the jail directory as nobody.
    fn spawn_jailed(&self) -> Vmm {
        let jail = self.jail();
        Vmm::start(&mut self.command(&[
            "--jail",
            jail.to_str().unwrap(),
            "--uid",
            "65534",
            "--gid",
            "65534",
        ]))
    }
}

/// The frontend's and the guest driver's side of the device.
struct Guest {
    /// Dropping it is QEMU going away.
    _frontend: Frontend,
    mem: GuestMemoryMmap,
    rx: DriverQueue,
    tx: DriverQueue,
    kicks: [EventFd; 2],
    _calls: [EventFd; 2],
    next_buf: u64,
}

impl Guest {
    /// Connects as QEMU does and sets the device up: features, memory table, RX and TX
    /// rings; then offers RX buffers.
    fn connect(vhost_user: &Path) -> Guest {
        let stream = UnixStream::connect(vhost_user).unwrap();
        let frontend = Frontend::from_stream(stream, NUM_QUEUES as u64);
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
        frontend
            .set_features(features & ((1 << VIRTIO_F_VERSION_1) | protocol_bit))
            .unwrap();
        let mut frontend = frontend;
        let protocol = frontend.get_protocol_features().unwrap();
        frontend
            .set_protocol_features(protocol & VhostUserProtocolFeatures::CONFIG)
            .unwrap();
        let mem = create_guest_memory(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|region| VhostUserMemoryRegionInfo::from_guest_region(region).unwrap())
            .collect();
        frontend.set_mem_table(&regions).unwrap();
        let rx = DriverQueue::new(0x1000, QUEUE_SIZE);
        let tx = DriverQueue::new(0x2000, QUEUE_SIZE);
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kicks = [eventfd(), eventfd()];
        let calls = [eventfd(), eventfd()];
        for (slot, (index, queue)) in [(RX_QUEUE, &rx), (TX_QUEUE, &tx)].into_iter().enumerate() {
            let host = |addr: u64| mem.get_host_address(GuestAddress(addr)).unwrap() as u64;
            frontend.set_vring_num(index, QUEUE_SIZE).unwrap();
            frontend.set_vring_base(index, 0).unwrap();
            frontend
                .set_vring_addr(
                    index,
                    &VringConfigData {
                        queue_max_size: QUEUE_SIZE,
                        queue_size: QUEUE_SIZE,
                        flags: 0,
                        desc_table_addr: host(queue.desc),
                        used_ring_addr: host(queue.used),
                        avail_ring_addr: host(queue.avail),
                        log_addr: None,
                    },
                )
                .unwrap();
            frontend.set_vring_call(index, &calls[slot]).unwrap();
            frontend.set_vring_kick(index, &kicks[slot]).unwrap();
            frontend.set_vring_enable(index, true).unwrap();
        }
        let mut guest = Guest {
            _frontend: frontend,
            mem,
            rx,
            tx,
            kicks,
            _calls: calls,
            next_buf: DATA_START,
        };
        guest.offer_rx_buffers();
        guest
    }

    fn alloc(&mut self) -> u64 {
        if self.next_buf + u64::from(BUF_SIZE) > MEM_SIZE as u64 {
            self.next_buf = DATA_START;
        }
        let addr = self.next_buf;
        self.next_buf += u64::from(BUF_SIZE);
        addr
    }

    /// Tops the RX ring up and notifies the device.
    fn offer_rx_buffers(&mut self) {
        while self.rx.posted() < 16 {
            let addr = self.alloc();
            self.rx.add_chain(&self.mem, &[(addr, BUF_SIZE, true)]);
        }
        self.kicks[0].write(1).unwrap();
    }

    /// The next packet for the guest that is not a credit update.
    fn recv(&mut self) -> (PacketHeader, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((_, descs, len)) = self.rx.pop_used_chain(&self.mem) {
                let (addr, _, _) = descs[0];
                let mut raw = vec![0u8; len as usize];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                self.offer_rx_buffers();
                let header = PacketHeader::from_bytes(raw[..HEADER_SIZE].try_into().unwrap());
                if header.op == OP_CREDIT_UPDATE {
                    continue;
                }
                return (header, raw.split_off(HEADER_SIZE));
            }
            assert!(Instant::now() < deadline, "no packet for the guest in 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends one packet on the TX ring and waits for the device to take it.
    fn send(&mut self, header: PacketHeader, data: &[u8]) {
        let header = PacketHeader {
            len: data.len() as u32,
            ..header
        };
        let addr = self.alloc();
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(addr + HEADER_SIZE as u64))
            .unwrap();
        let len = (HEADER_SIZE + data.len()) as u32;
        self.tx.add_chain(&self.mem, &[(addr, len, false)]);
        self.kicks[1].write(1).unwrap();
        self.tx.wait_used(&self.mem, Duration::from_secs(10));
    }
}

/// A stream connection as the guest sees it.
fn guest_header(guest_port: u32, host_port: u32, op: u16) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..PacketHeader::default()
    }
}

fn read_exactly(stream: &mut UnixStream, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    stream.read_exact(&mut data).unwrap();
    data
}

#[test]
fn jailed_backend_serves_host_and_guest_connections_and_exits_with_the_frontend() {
    let sockets = Sockets::bind();
    // The host service the guest connects to, reachable by the jailed uid.
    let service = UnixListener::bind(sockets.jail().join("vsock.sock_5200")).unwrap();
    std::os::unix::fs::chown(
        sockets.jail().join("vsock.sock_5200"),
        Some(NOBODY),
        Some(NOBODY),
    )
    .unwrap();
    let mut backend = sockets.spawn_jailed();
    let pid = backend.child.id();
    let mut guest = Guest::connect(&sockets.vhost_user_path());

    // Host to guest: CONNECT, the guest accepts, data both ways.
    let mut host = UnixStream::connect(sockets.jail().join("vsock.sock")).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();
    let (request, _) = guest.recv();
    assert_eq!(request.op, OP_REQUEST);
    assert_eq!((request.src_cid, request.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(request.dst_port, 1234);
    let host_port = request.src_port;
    guest.send(guest_header(1234, host_port, OP_RESPONSE), &[]);
    let mut line = String::new();
    BufReader::new(&mut host).read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {host_port}\n"));
    host.write_all(b"ping").unwrap();
    let (packet, data) = guest.recv();
    assert_eq!((packet.op, packet.dst_port), (OP_RW, 1234));
    assert_eq!(data, b"ping");
    guest.send(guest_header(1234, host_port, OP_RW), b"pong");
    assert_eq!(read_exactly(&mut host, 4), b"pong");

    // Guest to host: to <uds>_5200, which the jailed backend reaches by its jail path.
    guest.send(guest_header(5000, 5200, OP_REQUEST), &[]);
    service.set_nonblocking(false).unwrap();
    let (mut served, _) = service.accept().unwrap();
    served
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (response, _) = guest.recv();
    assert_eq!(
        (response.op, response.src_port, response.dst_port),
        (OP_RESPONSE, 5200, 5000)
    );
    guest.send(guest_header(5000, 5200, OP_RW), b"hello");
    assert_eq!(read_exactly(&mut served, 5), b"hello");
    served.write_all(b"hi from the host").unwrap();
    let (packet, data) = guest.recv();
    assert_eq!((packet.op, packet.dst_port), (OP_RW, 5000));
    assert_eq!(data, b"hi from the host");

    // Confined: nobody, no capabilities, no new privileges, filtered on every thread, in
    // mount and network namespaces of its own whose only mount is the jail directory.
    let ids = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    assert_eq!(status_field(pid, "Uid:"), ids);
    assert_eq!(status_field(pid, "Gid:"), ids);
    assert_eq!(status_field(pid, "Groups:"), "");
    for field in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"] {
        assert_eq!(status_field(pid, field), "0000000000000000", "{field}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
        threads += 1;
    }
    // The main thread, the serving thread, the vhost-user request loop, the vring worker.
    assert_eq!(threads, 4, "threads of the backend");
    let namespace =
        |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    for kind in ["mnt", "net"] {
        assert_ne!(namespace(&pid.to_string(), kind), namespace("self", kind));
    }
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert_eq!(mountinfo.lines().count(), 1, "{mountinfo}");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(fds < 32, "{fds} descriptors open");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.lines().any(
            |l| l.starts_with("Max core file size") && l.split_whitespace().nth(4) == Some("0")
        ),
        "{limits}"
    );

    // QEMU going away ends the backend, with status 0.
    drop(guest);
    let status = backend
        .wait_for(Duration::from_secs(10))
        .expect("the backend outlived its frontend");
    let stderr = backend.stderr();
    assert_eq!(status.code(), Some(0), "{status:?}: {stderr}");
}

#[test]
fn sigterm_stops_the_backend_with_status_0() {
    let sockets = Sockets::bind();
    // Before QEMU comes, and while it is connected.
    for connect in [false, true] {
        let mut backend = sockets.spawn_jailed();
        let guest = connect.then(|| Guest::connect(&sockets.vhost_user_path()));
        let pid = backend.child.id();
        // Its filter is installed before it serves: wait for it, so the signal cannot come
        // before the signalfd takes it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while status_field(pid, "Seccomp:") != "2" {
            assert!(
                Instant::now() < deadline,
                "the backend never confined itself"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = backend
            .wait_for(Duration::from_secs(10))
            .expect("SIGTERM did not stop the backend");
        let stderr = backend.stderr();
        assert_eq!(
            status.code(),
            Some(0),
            "connected: {connect}, {status:?}: {stderr}"
        );
        drop(guest);
    }
}

#[test]
fn bad_arguments_are_refused_and_named() {
    let sockets = Sockets::bind();
    let not_listening = UnixStream::pair().unwrap().0;
    let run = |command: &mut Command| {
        let (status, stderr) = Vmm::start(command).wait(Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{stderr}");
        stderr
    };
    // A socket that is not listening, in place of the hybrid one.
    let mut command = Command::new(VMM);
    command
        .args([
            "vsock",
            "--vhost-user-fd",
            "3",
            "--hybrid-fd",
            "4",
            "--uds",
            "v",
            "--guest-cid",
            "3",
        ])
        .stderr(Stdio::piped());
    pass_fds(
        &mut command,
        &[
            (sockets.vhost_user.as_raw_fd(), 3),
            (not_listening.as_raw_fd(), 4),
        ],
    );
    let stderr = run(&mut command);
    assert!(
        stderr.contains("--hybrid-fd 4") && stderr.contains("not a listening Unix stream socket"),
        "{stderr}"
    );
    let stderr = run(&mut sockets.command_with("vsock.sock", "2", &[]));
    assert!(stderr.contains("--guest-cid 2"), "{stderr}");
    let jailed = ["--jail", "/tmp", "--uid", "1", "--gid", "1"];
    let stderr = run(&mut sockets.command_with("/tmp/v.sock", "3", &jailed));
    assert!(
        stderr.contains("--uds /tmp/v.sock") && stderr.contains("relative to the jail"),
        "{stderr}"
    );
    for (extra, named) in [
        (
            &["--jail", "/nonexistent", "--uid", "1", "--gid", "1"][..],
            "/nonexistent",
        ),
        (&["--jail", "/tmp", "--uid", "0", "--gid", "1"], "uid = 0"),
        (&["--jail", "/tmp", "--uid", "1"], "--gid"),
        (&["--uid", "1", "--gid", "1"], "--jail"),
    ] {
        let stderr = run(&mut sockets.command(extra));
        assert!(stderr.contains(named), "{extra:?}: {stderr}");
    }
}
