//! Drives the device core as a guest driver would: descriptor chains in guest memory, the
//! device's queues, and real host Unix sockets on the other side.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::connection::CONN_BUF_ALLOC;
use super::packet::*;
use super::{VsockConfig, VsockDevice, HOST_CID};
use crate::devices::virtio::test_support::{Desc, DriverQueue};

const GUEST_CID: u64 = 3;
const QUEUE_SIZE: u16 = 256;
const MEM_SIZE: usize = 32 << 20;
/// Guest buffers are carved from here to the end of memory, round robin.
const DATA_START: u64 = 1 << 20;
/// RX buffer size the harness posts unless a test asks otherwise.
const RX_BUF: u32 = 4096;

/// A directory removed when the test ends.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "hull-vmm-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A guest driver talking to a `VsockDevice`, with the host side in a temp directory.
struct Harness {
    mem: GuestMemoryMmap,
    device: VsockDevice,
    rx: DriverQueue,
    tx: DriverQueue,
    /// The device's side of `rx` and `tx`: the device core takes its queues directly.
    rx_queue: Queue,
    tx_queue: Queue,
    next_buf: u64,
    dir: TestDir,
    /// RX buffers are topped up to this many before each RX pass.
    rx_buffers: usize,
    rx_buf_size: u32,
}

impl Harness {
    fn new() -> Self {
        let dir = TestDir::new();
        let device = VsockDevice::new(&VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: dir.0.join("vsock"),
        })
        .unwrap();
        let rx = DriverQueue::new(0, QUEUE_SIZE);
        let tx = DriverQueue::new(0x10000, QUEUE_SIZE);
        Harness {
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
            device,
            rx_queue: rx.device_queue(),
            tx_queue: tx.device_queue(),
            rx,
            tx,
            next_buf: DATA_START,
            dir,
            rx_buffers: 8,
            rx_buf_size: RX_BUF,
        }
    }

    fn uds(&self) -> PathBuf {
        self.dir.0.join("vsock")
    }

    fn alloc(&mut self, len: u32) -> u64 {
        if self.next_buf + u64::from(len) > MEM_SIZE as u64 {
            self.next_buf = DATA_START;
        }
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64);
        addr
    }

    /// Queues a TX chain built from `parts` (bytes, device-writable), lets the device process
    /// it, and checks the chain came back.
    fn send_chain(&mut self, parts: &[(&[u8], bool)]) {
        let bufs: Vec<Desc> = parts
            .iter()
            .map(|&(bytes, writable)| {
                let addr = self.alloc(bytes.len() as u32);
                self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
                (addr, bytes.len() as u32, writable)
            })
            .collect();
        self.send_bufs(&bufs);
    }

    fn send_bufs(&mut self, bufs: &[Desc]) {
        let head = self.tx.add_chain(&self.mem, bufs);
        self.device
            .process_tx(&self.mem, &mut self.tx_queue)
            .unwrap();
        let (used, len) = self.tx.pop_used(&self.mem).expect("TX chain not returned");
        assert_eq!((used, len), (head, 0));
        assert!(self.tx.pop_used(&self.mem).is_none());
    }

    /// Sends a packet with header and data in one descriptor.
    fn send(&mut self, hdr: PacketHeader, data: &[u8]) {
        let mut raw = hdr.to_bytes().to_vec();
        raw.extend_from_slice(data);
        self.send_chain(&[(&raw, false)]);
    }

    fn send_op(&mut self, conn: &GuestConn, op: u16, flags: u32) {
        self.send(conn.header(op, flags, 0), &[]);
    }

    fn send_data(&mut self, conn: &mut GuestConn, data: &[u8]) {
        let hdr = conn.header(OP_RW, 0, data.len() as u32);
        conn.tx_cnt += data.len() as u32;
        self.send(hdr, data);
    }

    /// One pass of the device's event loop, then the next packet the guest received, if any.
    fn recv_now(&mut self) -> Option<(PacketHeader, Vec<u8>)> {
        if let Some(packet) = self.take_rx() {
            return Some(packet);
        }
        while self.rx.posted() < self.rx_buffers {
            let addr = self.alloc(self.rx_buf_size);
            self.rx
                .add_chain(&self.mem, &[(addr, self.rx_buf_size, true)]);
        }
        self.device.process_host_events();
        self.device
            .process_rx(&self.mem, &mut self.rx_queue)
            .unwrap();
        self.take_rx()
    }

    fn take_rx(&mut self) -> Option<(PacketHeader, Vec<u8>)> {
        let (_, bufs, len) = self.rx.pop_used_chain(&self.mem)?;
        let mut raw = Vec::new();
        for (addr, buf_len, _) in bufs {
            let mut part = vec![0u8; buf_len as usize];
            self.mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
            raw.extend_from_slice(&part);
        }
        raw.truncate(len as usize);
        let hdr = PacketHeader::from_bytes(raw[..HEADER_SIZE].try_into().unwrap());
        assert_eq!(hdr.len as usize, raw.len() - HEADER_SIZE);
        Some((hdr, raw.split_off(HEADER_SIZE)))
    }

    /// Waits (briefly) for the next packet for the guest.
    fn recv(&mut self) -> (PacketHeader, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(packet) = self.recv_now() {
                return packet;
            }
            assert!(Instant::now() < deadline, "no packet for the guest");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next packet that is not a credit update (those may come at any time).
    fn recv_skipping_credit(&mut self) -> (PacketHeader, Vec<u8>) {
        loop {
            let packet = self.recv();
            if packet.0.op != OP_CREDIT_UPDATE {
                return packet;
            }
        }
    }

    /// Asserts the guest gets nothing, after letting host events settle.
    fn expect_silence(&mut self) {
        for _ in 0..3 {
            if let Some((hdr, _)) = self.recv_now() {
                panic!("unexpected packet for the guest: {hdr:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A host client connects with `CONNECT port`; the guest accepts with `buf_alloc`.
    fn host_connect(&mut self, port: u32, buf_alloc: u32) -> (UnixStream, GuestConn) {
        let mut host = UnixStream::connect(self.uds()).unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let (req, _) = self.recv();
        assert_eq!(req.op, OP_REQUEST);
        assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(req.dst_port, port);
        assert_eq!(req.type_, TYPE_STREAM);
        let conn = GuestConn::new(port, req.src_port, buf_alloc);
        self.send_op(&conn, OP_RESPONSE, 0);
        let line = read_line(&mut host);
        assert_eq!(line, format!("OK {}\n", req.src_port));
        (host, conn)
    }
}

/// The guest's end of one connection.
struct GuestConn {
    guest_port: u32,
    host_port: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    tx_cnt: u32,
}

impl GuestConn {
    fn new(guest_port: u32, host_port: u32, buf_alloc: u32) -> Self {
        GuestConn {
            guest_port,
            host_port,
            buf_alloc,
            fwd_cnt: 0,
            tx_cnt: 0,
        }
    }

    fn header(&self, op: u16, flags: u32, len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: self.guest_port,
            dst_port: self.host_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    fn assert_from_host(&self, hdr: &PacketHeader) {
        assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(
            (hdr.src_port, hdr.dst_port),
            (self.host_port, self.guest_port)
        );
    }
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while stream.read(&mut byte).unwrap() == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// Asserts the device closed the stream (a close with unread data shows as a reset).
fn assert_closed(stream: &mut UnixStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("stream still open: {other:?}"),
    }
}

/// Reads until EOF; panics if the stream stays open.
fn read_to_eof(stream: &mut UnixStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    out
}

fn read_exact(stream: &mut UnixStream, len: usize) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = vec![0u8; len];
    stream.read_exact(&mut out).unwrap();
    out
}

/// Reads whatever the stream holds right now.
fn drain_available(stream: &mut UnixStream) -> Vec<u8> {
    stream.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("host read failed: {e}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn listen(path: &Path) -> UnixListener {
    UnixListener::bind(path).unwrap()
}

#[test]
fn hybrid_handshake_and_data_both_ways() {
    let mut h = Harness::new();
    let (mut host, mut conn) = h.host_connect(1024, 64 * 1024);
    assert!(conn.host_port >= 1 << 30);

    host.write_all(b"ping from host").unwrap();
    let (hdr, data) = h.recv();
    conn.assert_from_host(&hdr);
    assert_eq!(hdr.op, OP_RW);
    assert_eq!(data, b"ping from host");
    assert_eq!(hdr.buf_alloc, CONN_BUF_ALLOC);

    h.send_data(&mut conn, b"pong from guest");
    assert_eq!(read_exact(&mut host, 15), b"pong from guest");
    assert_eq!(h.device.connection_count(), 1);
}

#[test]
fn data_sent_right_after_connect_is_not_eaten_by_the_handshake() {
    let mut h = Harness::new();
    let mut host = UnixStream::connect(h.uds()).unwrap();
    host.write_all(b"CONNECT 7\nearly bytes").unwrap();
    let (req, _) = h.recv();
    assert_eq!(req.op, OP_REQUEST);
    let conn = GuestConn::new(7, req.src_port, 4096);
    h.send_op(&conn, OP_RESPONSE, 0);
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));
    let (hdr, data) = h.recv();
    assert_eq!(hdr.op, OP_RW);
    assert_eq!(data, b"early bytes");
}

#[test]
fn host_connect_refused_by_guest_closes_the_client() {
    let mut h = Harness::new();
    let mut host = UnixStream::connect(h.uds()).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let (req, _) = h.recv();
    assert_eq!(req.op, OP_REQUEST);
    let conn = GuestConn::new(1024, req.src_port, 4096);
    h.send_op(&conn, OP_RST, 0);
    assert_eq!(read_to_eof(&mut host), b"");
    assert_eq!(h.device.connection_count(), 0);
}

#[test]
fn malformed_connect_lines_close_the_client() {
    let mut h = Harness::new();
    let lines: [&[u8]; 4] = [
        b"CONNECT abc\n",
        b"HELLO 1024\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 1111111111111111111111111111111111111111",
    ];
    for line in lines {
        let mut host = UnixStream::connect(h.uds()).unwrap();
        host.write_all(line).unwrap();
        h.expect_silence();
        assert_closed(&mut host);
    }
    // A client that leaves before finishing its line is forgotten too.
    let mut host = UnixStream::connect(h.uds()).unwrap();
    host.write_all(b"CONN").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    h.expect_silence();
    assert_eq!(read_to_eof(&mut host), b"");
    assert_eq!(h.device.connection_count(), 0);
}

#[test]
fn client_leaving_before_the_guest_answers_is_reset() {
    let mut h = Harness::new();
    let mut host = UnixStream::connect(h.uds()).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let (req, _) = h.recv();
    drop(host);
    let (rst, _) = h.recv();
    assert_eq!(rst.op, OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (req.src_port, 1024));
    assert_eq!(h.device.connection_count(), 0);
    // The late answer finds no connection and is refused.
    let conn = GuestConn::new(1024, req.src_port, 4096);
    h.send_op(&conn, OP_RESPONSE, 0);
    assert_eq!(h.recv().0.op, OP_RST);
}

#[test]
fn tx_chain_layouts_are_all_understood() {
    let mut h = Harness::new();
    let listener = listen(&h.dir.0.join("vsock_5000"));
    let mut conn = GuestConn::new(40000, 5000, 4096);
    h.send_op(&conn, OP_REQUEST, 0);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(h.recv().0.op, OP_RESPONSE);

    // Header alone, then data over three descriptors.
    let data = pattern(300, 1);
    let hdr = conn.header(OP_RW, 0, 300).to_bytes();
    conn.tx_cnt += 300;
    h.send_chain(&[
        (&hdr, false),
        (&data[..1], false),
        (&data[1..200], false),
        (&data[200..], false),
    ]);
    assert_eq!(read_exact(&mut host, 300), data);

    // Header split across descriptors, the last one holding its tail and the data.
    let data = pattern(100, 2);
    let mut raw = conn.header(OP_RW, 0, 100).to_bytes().to_vec();
    raw.extend_from_slice(&data);
    h.send_chain(&[
        (&raw[..3], false),
        (&raw[3..30], false),
        (&raw[30..], false),
    ]);
    assert_eq!(read_exact(&mut host, 100), data);

    // Header and data in one descriptor, with spare bytes after the data.
    let data = pattern(50, 3);
    let mut raw = conn.header(OP_RW, 0, 50).to_bytes().to_vec();
    raw.extend_from_slice(&data);
    raw.extend_from_slice(&[0xee; 20]);
    h.send_chain(&[(&raw, false)]);
    assert_eq!(read_exact(&mut host, 50), data);
}

#[test]
fn rx_packets_fill_chains_of_several_descriptors() {
    let mut h = Harness::new();
    // The only RX buffer goes to the REQUEST, so the chain below gets the data.
    h.rx_buffers = 1;
    let (mut host, conn) = h.host_connect(1024, 64 * 1024);
    h.rx_buffers = 0;
    let data = pattern(1000, 9);
    host.write_all(&data).unwrap();
    // One chain: a descriptor smaller than the header, then two data descriptors.
    let bufs = [
        (h.alloc(20), 20, true),
        (h.alloc(100), 100, true),
        (h.alloc(2000), 2000, true),
    ];
    h.rx.add_chain(&h.mem, &bufs);
    h.device.process_host_events();
    h.device.process_rx(&h.mem, &mut h.rx_queue).unwrap();
    let (hdr, got) = h.take_rx().unwrap();
    conn.assert_from_host(&hdr);
    assert_eq!(hdr.op, OP_RW);
    assert_eq!(got, data);
}

#[test]
fn malformed_tx_chains_are_dropped_and_returned() {
    let mut h = Harness::new();
    let listener = listen(&h.dir.0.join("vsock_6000"));
    let conn = GuestConn::new(41000, 6000, 4096);
    h.send_op(&conn, OP_REQUEST, 0);
    let (mut host, _) = listener.accept().unwrap();
    assert_eq!(h.recv().0.op, OP_RESPONSE);

    // Too short for a header.
    h.send_chain(&[(&[0u8; 43], false)]);
    // Device-writable descriptor in a TX chain.
    let hdr = conn.header(OP_RW, 0, 4).to_bytes();
    h.send_chain(&[(&hdr, false), (b"abcd", true)]);
    // Buffer outside guest memory.
    h.send_bufs(&[(MEM_SIZE as u64 - 8, 44, false)]);
    h.send_bufs(&[(u64::MAX - 8, 44, false)]);
    // None of these reached the connection.
    h.expect_silence();
    assert_eq!(h.device.connection_count(), 1);

    // A header announcing more data than the chain holds resets the connection.
    let mut raw = conn.header(OP_RW, 0, 100).to_bytes().to_vec();
    raw.extend_from_slice(&[1u8; 10]);
    h.send_chain(&[(&raw, false)]);
    let (rst, _) = h.recv();
    assert_eq!(rst.op, OP_RST);
    conn.assert_from_host(&rst);
    assert_eq!(read_to_eof(&mut host), b"");
    assert_eq!(h.device.connection_count(), 0);
}

#[test]
fn non_stream_packets_reset_their_connection() {
    let mut h = Harness::new();
    let (mut host, conn) = h.host_connect(1024, 4096);
    let mut hdr = conn.header(OP_RW, 0, 0);
    hdr.type_ = 2;
    h.send(hdr, &[]);
    let (rst, _) = h.recv();
    assert_eq!(rst.op, OP_RST);
    conn.assert_from_host(&rst);
    assert_eq!(read_to_eof(&mut host), b"");
    assert_eq!(h.device.connection_count(), 0);
}

#[test]
fn packets_with_foreign_addresses_are_ignored() {
    let mut h = Harness::new();
    let (_host, conn) = h.host_connect(1024, 4096);
    let mut hdr = conn.header(OP_RST, 0, 0);
    hdr.src_cid = 7;
    h.send(hdr, &[]);
    let mut hdr = conn.header(OP_RST, 0, 0);
    hdr.dst_cid = 5;
    h.send(hdr, &[]);
    h.expect_silence();
    assert_eq!(h.device.connection_count(), 1);
}

#[test]
fn guest_connects_to_a_host_listener() {
    let mut h = Harness::new();
    let listener = listen(&h.dir.0.join("vsock_1025"));
    let mut conn = GuestConn::new(50000, 1025, 4096);
    h.send_op(&conn, OP_REQUEST, 0);
    let (mut host, _) = listener.accept().unwrap();
    let (resp, _) = h.recv();
    assert_eq!(resp.op, OP_RESPONSE);
    conn.assert_from_host(&resp);

    h.send_data(&mut conn, b"stdout bytes");
    assert_eq!(read_exact(&mut host, 12), b"stdout bytes");
    host.write_all(b"stdin bytes").unwrap();
    let (hdr, data) = h.recv();
    assert_eq!(hdr.op, OP_RW);
    assert_eq!(data, b"stdin bytes");
}

#[test]
fn guest_connect_to_nobody_is_refused() {
    let mut h = Harness::new();
    let conn = GuestConn::new(50001, 4321, 4096);
    h.send_op(&conn, OP_REQUEST, 0);
    let (rst, _) = h.recv();
    assert_eq!(rst.op, OP_RST);
    conn.assert_from_host(&rst);
    assert_eq!(h.device.connection_count(), 0);
    // Packets for unknown connections are refused too, but a RST is not answered.
    h.send_op(&conn, OP_RW, 0);
    assert_eq!(h.recv().0.op, OP_RST);
    h.send_op(&conn, OP_RST, 0);
    h.expect_silence();
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let mut h = Harness::new();
    let guest_buf = 8192u32;
    let (mut host, mut conn) = h.host_connect(1024, guest_buf);
    let data = pattern(20_000, 4);
    host.write_all(&data).unwrap();

    let mut received = Vec::new();
    while received.len() < data.len() {
        // Take everything the current credit allows.
        let window_end = conn.fwd_cnt as usize + guest_buf as usize;
        while received.len() < window_end.min(data.len()) {
            let (hdr, bytes) = h.recv();
            assert_eq!(hdr.op, OP_RW);
            received.extend_from_slice(&bytes);
        }
        assert!(received.len() <= window_end, "device overran the credit");
        // Credit exhausted: the device must stay quiet...
        h.expect_silence();
        // ...until the guest application consumed the data and says so.
        conn.fwd_cnt = received.len() as u32;
        h.send_op(&conn, OP_CREDIT_UPDATE, 0);
    }
    assert_eq!(received, data);
}

#[test]
fn guest_to_host_is_buffered_and_credited_as_the_host_reads() {
    let mut h = Harness::new();
    let (mut host, mut conn) = h.host_connect(1024, 64 * 1024);
    let data = pattern(2 << 20, 5);
    let mut peer_fwd_cnt = 0u32;
    let credit =
        |conn: &GuestConn, peer_fwd_cnt: u32| CONN_BUF_ALLOC - (conn.tx_cnt - peer_fwd_cnt);

    // The host does not read: send until the device stops granting credit.
    loop {
        let room = credit(&conn, peer_fwd_cnt) as usize;
        if room == 0 {
            break;
        }
        let sent = conn.tx_cnt as usize;
        let chunk = room.min(MAX_PACKET_DATA);
        h.send_data(&mut conn, &data[sent..sent + chunk]);
        h.send_op(&conn, OP_CREDIT_REQUEST, 0);
        let (update, _) = h.recv();
        assert_eq!(update.op, OP_CREDIT_UPDATE);
        assert_eq!(update.buf_alloc, CONN_BUF_ALLOC);
        peer_fwd_cnt = update.fwd_cnt;
        assert!(
            conn.tx_cnt < data.len() as u32,
            "host socket never filled up"
        );
    }
    // Everything the device has not delivered is buffered, and not acknowledged.
    assert_eq!(conn.tx_cnt - peer_fwd_cnt, CONN_BUF_ALLOC);
    h.expect_silence();

    // The host reads some: the device flushes and tells the guest on its own.
    let first = drain_available(&mut host);
    assert!(!first.is_empty() && first == data[..first.len()]);
    let (update, _) = h.recv();
    assert_eq!(update.op, OP_CREDIT_UPDATE);
    assert!(update.fwd_cnt > peer_fwd_cnt);
    peer_fwd_cnt = update.fwd_cnt;

    // Stream the rest with the host reading concurrently.
    let expected = data[first.len()..].to_vec();
    let reader = std::thread::spawn(move || {
        let got = read_exact(&mut host, expected.len());
        assert!(got == expected, "host received corrupted data");
        host
    });
    while (conn.tx_cnt as usize) < data.len() {
        let room = credit(&conn, peer_fwd_cnt) as usize;
        if room == 0 {
            let (update, _) = h.recv();
            conn.assert_from_host(&update);
            assert_eq!(update.op, OP_CREDIT_UPDATE);
            peer_fwd_cnt = update.fwd_cnt;
            continue;
        }
        let sent = conn.tx_cnt as usize;
        let chunk = room.min(MAX_PACKET_DATA).min(data.len() - sent);
        h.send_data(&mut conn, &data[sent..sent + chunk]);
        if let Some((update, _)) = h.recv_now() {
            assert_eq!(update.op, OP_CREDIT_UPDATE);
            peer_fwd_cnt = update.fwd_cnt;
        }
    }
    // Flush the tail: the device writes it as the host reads.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "host did not receive everything");
        h.recv_now();
        std::thread::sleep(Duration::from_millis(1));
    }
    reader.join().unwrap();
}

#[test]
fn guest_sending_beyond_its_credit_is_reset() {
    let mut h = Harness::new();
    let (_host, mut conn) = h.host_connect(1024, 4096);
    // Fill the device's buffer without the host reading (the socket absorbs part of it).
    let chunk = pattern(MAX_PACKET_DATA, 6);
    let mut reset = false;
    for _ in 0..64 {
        h.send_data(&mut conn, &chunk);
        while let Some((hdr, _)) = h.recv_now() {
            reset |= hdr.op == OP_RST;
        }
        if reset {
            break;
        }
    }
    assert!(reset, "device accepted unlimited data");
    assert_eq!(h.device.connection_count(), 0);
}

#[test]
fn host_half_close_reaches_the_guest_and_guest_can_still_send() {
    let mut h = Harness::new();
    let (mut host, mut conn) = h.host_connect(1024, 4096);
    host.write_all(b"last words").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    let (hdr, data) = h.recv();
    assert_eq!((hdr.op, data.as_slice()), (OP_RW, &b"last words"[..]));
    let (hdr, _) = h.recv();
    assert_eq!(hdr.op, OP_SHUTDOWN);
    assert_eq!(hdr.flags, SHUTDOWN_SEND);
    conn.assert_from_host(&hdr);

    h.send_data(&mut conn, b"reply after EOF");
    assert_eq!(read_exact(&mut host, 15), b"reply after EOF");

    // The guest closes too: its SHUTDOWN gets the final RST, the host sees EOF.
    h.send_op(&conn, OP_SHUTDOWN, SHUTDOWN_SEND | SHUTDOWN_RCV);
    let (hdr, _) = h.recv();
    assert_eq!(hdr.op, OP_RST);
    assert_eq!(read_to_eof(&mut host), b"");
    assert_eq!(h.device.connection_count(), 0);
}

#[test]
fn guest_half_close_reaches_the_host_after_buffered_data() {
    let mut h = Harness::new();
    let (mut host, mut conn) = h.host_connect(1024, 4096);
    h.send_data(&mut conn, b"stdout tail");
    h.send_op(&conn, OP_SHUTDOWN, SHUTDOWN_SEND);
    assert_eq!(read_to_eof(&mut host), b"stdout tail");
    h.expect_silence();

    // The host can still write to the guest.
    host.write_all(b"more input").unwrap();
    let (hdr, data) = h.recv();
    assert_eq!((hdr.op, data.as_slice()), (OP_RW, &b"more input"[..]));

    // Host closes its side too: both directions are done, the guest gets RST.
    drop(host);
    let (hdr, _) = h.recv();
    assert_eq!(hdr.op, OP_SHUTDOWN);
    let (hdr, _) = h.recv();
    assert_eq!(hdr.op, OP_RST);
    assert_eq!(h.device.connection_count(), 0);
}

#[test]
fn guest_full_close_flushes_buffered_data_before_reset() {
    let mut h = Harness::new();
    let (mut host, mut conn) = h.host_connect(1024, 4096);
    // More than the host socket buffer holds, so part stays in the device.
    let data = pattern(CONN_BUF_ALLOC as usize, 8);
    let mut sent = 0;
    while sent < data.len() {
        let chunk = (data.len() - sent).min(MAX_PACKET_DATA);
        h.send_data(&mut conn, &data[sent..sent + chunk]);
        sent += chunk;
    }
    h.send_op(&conn, OP_SHUTDOWN, SHUTDOWN_SEND | SHUTDOWN_RCV);
    let reader = std::thread::spawn(move || read_to_eof(&mut host));
    let (hdr, _) = h.recv_skipping_credit();
    assert_eq!(hdr.op, OP_RST);
    assert!(reader.join().unwrap() == data);
}

#[test]
fn guest_reset_closes_the_host_stream() {
    let mut h = Harness::new();
    let (mut host, conn) = h.host_connect(1024, 4096);
    h.send_op(&conn, OP_RST, 0);
    assert_eq!(read_to_eof(&mut host), b"");
    h.expect_silence();
    assert_eq!(h.device.connection_count(), 0);
}

#[test]
fn host_close_resets_the_guest() {
    let mut h = Harness::new();
    let (host, conn) = h.host_connect(1024, 4096);
    drop(host);
    let (hdr, _) = h.recv();
    assert_eq!(hdr.op, OP_SHUTDOWN);
    assert_eq!(hdr.flags, SHUTDOWN_SEND);
    let (hdr, _) = h.recv();
    assert_eq!(hdr.op, OP_RST);
    conn.assert_from_host(&hdr);
    assert_eq!(h.device.connection_count(), 0);
}

#[test]
fn credit_request_is_answered() {
    let mut h = Harness::new();
    let (_host, conn) = h.host_connect(1024, 4096);
    h.send_op(&conn, OP_CREDIT_REQUEST, 0);
    let (hdr, _) = h.recv();
    assert_eq!(hdr.op, OP_CREDIT_UPDATE);
    assert_eq!((hdr.buf_alloc, hdr.fwd_cnt), (CONN_BUF_ALLOC, 0));
}

#[test]
fn packets_wait_for_rx_buffers() {
    let mut h = Harness::new();
    h.rx_buffers = 0;
    let mut host = UnixStream::connect(h.uds()).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    h.expect_silence();
    // The guest driver comes up later.
    h.rx_buffers = 1;
    let (req, _) = h.recv();
    assert_eq!(req.op, OP_REQUEST);
}

#[test]
fn malformed_rx_chains_are_returned_empty() {
    let mut h = Harness::new();
    h.rx_buffers = 0;
    let mut host = UnixStream::connect(h.uds()).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let ro = h.alloc(64);
    h.rx.add_chain(&h.mem, &[(ro, 64, false)]);
    let short = h.alloc(40);
    h.rx.add_chain(&h.mem, &[(short, 40, true)]);
    let good = h.alloc(64);
    h.rx.add_chain(&h.mem, &[(good, 64, true)]);
    h.device.process_host_events();
    h.device.process_rx(&h.mem, &mut h.rx_queue).unwrap();
    assert_eq!(h.rx.pop_used(&h.mem).unwrap().1, 0);
    assert_eq!(h.rx.pop_used(&h.mem).unwrap().1, 0);
    let (hdr, _) = h.take_rx().unwrap();
    assert_eq!(hdr.op, OP_REQUEST);
}
