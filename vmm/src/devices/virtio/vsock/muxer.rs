//! The hybrid vsock muxer: routes packets between the guest and host Unix streams.
//!
//! Host clients connect to the Unix socket at `uds_path` and write `CONNECT <port>\n` to reach
//! guest port `<port>`; connections the guest opens to host port P are bridged to the Unix
//! socket `<uds_path>_P`. All host sockets are non-blocking and watched by one epoll instance
//! whose fd the transport adds to its own event loop.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, RxOutcome, Verdict};
use super::packet::{PacketHeader, OP_REQUEST, OP_RST, TYPE_STREAM};
use super::HOST_CID;

/// Most connections open at once; further requests are refused with RST.
const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that have connected but not yet sent their `CONNECT` line.
const MAX_HANDSHAKES: usize = 256;
/// RSTs for unknown connections kept while the guest provides no RX buffers.
const MAX_QUEUED_RESETS: usize = 1024;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Host-side ports of host-initiated connections come from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Epoll token of the listening socket; stream tokens are their fds.
const LISTENER_TOKEN: u64 = u64::MAX;
/// Host events handled per call.
const EVENT_BATCH: usize = 64;

/// Errors setting up the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("Cannot bind the hybrid vsock socket {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    #[error("Cannot set up host socket polling")]
    Epoll(#[source] io::Error),
}

/// A connection, keyed by (host-side port, guest-side port).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

#[derive(Debug)]
struct ConnEntry {
    conn: Connection,
    registered: Option<EventSet>,
    queued_for_rx: bool,
}

/// A host client that has not finished its `CONNECT` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Removes the listening socket's file when the muxer goes away.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Routes vsock packets between the guest and host Unix streams.
#[derive(Debug)]
pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    epoll: Epoll,
    listener: UnixListener,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<ConnKey, ConnEntry>,
    by_fd: HashMap<RawFd, ConnKey>,
    rx_ready: VecDeque<ConnKey>,
    resets: VecDeque<PacketHeader>,
    next_local_port: u32,
    // Declared last so the file is removed after the listener is closed; `None` when the
    // caller bound the socket.
    _socket_file: Option<SocketFile>,
}

impl VsockMuxer {
    /// Binds the hybrid vsock socket at `uds_path`, replacing a stale socket file left there;
    /// the file is removed when the muxer goes away.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        remove_stale_socket(uds_path);
        let listener = UnixListener::bind(uds_path).map_err(|source| MuxerError::Bind {
            path: uds_path.to_owned(),
            source,
        })?;
        let socket_file = SocketFile(uds_path.to_owned());
        Self::build(guest_cid, listener, uds_path, Some(socket_file))
    }

    /// Serves `listener`, which the caller bound at `uds_path` (the name guest-initiated
    /// connections to port P are made from, as `<uds_path>_P`) and removes itself.
    pub fn with_listener(
        guest_cid: u64,
        listener: UnixListener,
        uds_path: &Path,
    ) -> Result<Self, MuxerError> {
        Self::build(guest_cid, listener, uds_path, None)
    }

    fn build(
        guest_cid: u64,
        listener: UnixListener,
        uds_path: &Path,
        socket_file: Option<SocketFile>,
    ) -> Result<Self, MuxerError> {
        listener
            .set_nonblocking(true)
            .map_err(|source| MuxerError::Bind {
                path: uds_path.to_owned(),
                source,
            })?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(VsockMuxer {
            guest_cid,
            uds_path: uds_path.to_owned(),
            epoll,
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            rx_ready: VecDeque::new(),
            resets: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            _socket_file: socket_file,
        })
    }

    /// The epoll fd that becomes readable when a host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether packets for the guest are waiting for RX buffers.
    pub fn has_pending_rx(&self) -> bool {
        !self.resets.is_empty() || !self.rx_ready.is_empty()
    }

    /// Handles ready host sockets without blocking.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        let count = match self.epoll.wait(0, &mut events) {
            Ok(count) => count,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("polling host vsock sockets failed: {e}");
                }
                return;
            }
        };
        for event in &events[..count] {
            let set = EventSet::from_bits_truncate(event.events());
            if event.data() == LISTENER_TOKEN {
                self.accept_host_clients();
                continue;
            }
            let fd = event.data() as RawFd;
            if let Some(&key) = self.by_fd.get(&fd) {
                if let Some(entry) = self.conns.get_mut(&key) {
                    let verdict = entry.conn.on_host_event(set);
                    self.settle(key, verdict);
                }
            } else if self.handshakes.contains_key(&fd) {
                self.advance_handshake(fd);
            }
        }
    }

    fn accept_host_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("accepting a hybrid vsock client failed: {e}");
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES {
                warn!("too many hybrid vsock clients waiting to send CONNECT, dropping one");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                warn!("hybrid vsock client setup failed: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            ) {
                warn!("cannot watch hybrid vsock client: {e}");
                continue;
            }
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
            // Clients usually write their line right after connecting.
            self.advance_handshake(fd);
        }
    }

    /// Reads the `CONNECT` line byte by byte so that no data after it is consumed here.
    fn advance_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break parse_connect_line(&hs.line),
                Ok(_) if hs.line.len() >= MAX_CONNECT_LINE => break None,
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        // Dropping a stream also removes it from the epoll set, but the fd is reused below.
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let Some(peer_port) = port else {
            debug!(
                line = %String::from_utf8_lossy(&hs.line),
                "closing hybrid vsock client: bad CONNECT line"
            );
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            warn!("too many vsock connections, refusing CONNECT {peer_port}");
            return;
        }
        let local_port = self.allocate_local_port();
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let conn = Connection::host_initiated(hs.stream, self.guest_cid, local_port, peer_port);
        self.insert(key, conn);
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            // Conns are capped far below the port space, so a free port is always found.
            if !self.conns.keys().any(|k| k.local_port == port) {
                return port;
            }
        }
    }

    fn insert(&mut self, key: ConnKey, conn: Connection) {
        self.by_fd.insert(conn.as_raw_fd(), key);
        self.conns.insert(
            key,
            ConnEntry {
                conn,
                registered: None,
                queued_for_rx: false,
            },
        );
        self.settle(key, Verdict::Keep);
    }

    /// Handles a well-formed packet from the guest.
    pub fn handle_guest_packet(&mut self, hdr: &PacketHeader, data: &[u8]) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            debug!(
                src_cid = hdr.src_cid,
                dst_cid = hdr.dst_cid,
                "dropping vsock packet with foreign addresses"
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            debug!(
                type_ = hdr.type_,
                "resetting vsock packet of unsupported type"
            );
            self.reset_from_guest(hdr);
            return;
        }
        let key = key_of(hdr);
        if let Some(entry) = self.conns.get_mut(&key) {
            let verdict = entry.conn.on_guest_packet(hdr, data);
            self.settle(key, verdict);
            return;
        }
        match hdr.op {
            OP_REQUEST => self.connect_guest_to_host(hdr),
            OP_RST => {}
            _ => self.queue_reset(key),
        }
    }

    /// Resets the connection a bad guest packet belongs to (or answers it with RST if there is
    /// none), unless the packet is itself a RST.
    pub fn reset_from_guest(&mut self, hdr: &PacketHeader) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            return;
        }
        let key = key_of(hdr);
        if self.conns.contains_key(&key) {
            self.settle(key, Verdict::Reset);
        } else if hdr.op != OP_RST {
            self.queue_reset(key);
        }
    }

    /// Resets the connection a packet for the guest came from, after it could not be delivered.
    pub fn reset_after_lost_packet(&mut self, hdr: &PacketHeader) {
        let key = ConnKey {
            local_port: hdr.src_port,
            peer_port: hdr.dst_port,
        };
        if hdr.op != OP_RST && self.conns.contains_key(&key) {
            self.settle(key, Verdict::Reset);
        }
    }

    fn connect_guest_to_host(&mut self, hdr: &PacketHeader) {
        let key = key_of(hdr);
        if self.conns.len() >= MAX_CONNECTIONS {
            warn!(
                port = hdr.dst_port,
                "too many vsock connections, refusing guest"
            );
            self.queue_reset(key);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let conn = Connection::guest_initiated(stream, self.guest_cid, hdr);
                self.insert(key, conn);
            }
            Err(e) => {
                debug!(path = %Path::new(&path).display(), "guest connect refused: {e}");
                self.queue_reset(key);
            }
        }
    }

    /// Applies a connection's verdict: forget it, or update its polling and RX scheduling.
    fn settle(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => {}
            Verdict::Reset => {
                self.remove(key);
                self.queue_reset(key);
                return;
            }
            Verdict::Forget => {
                self.remove(key);
                return;
            }
        }
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        let wanted = entry.conn.interest();
        if wanted != entry.registered {
            let fd = entry.conn.as_raw_fd();
            let result = match (entry.registered, wanted) {
                (None, Some(set)) => {
                    self.epoll
                        .ctl(ControlOperation::Add, fd, EpollEvent::new(set, fd as u64))
                }
                (Some(_), Some(set)) => self.epoll.ctl(
                    ControlOperation::Modify,
                    fd,
                    EpollEvent::new(set, fd as u64),
                ),
                (Some(_), None) => {
                    self.epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                }
                (None, None) => Ok(()),
            };
            if let Err(e) = result {
                warn!("cannot watch vsock host stream: {e}");
                self.remove(key);
                self.queue_reset(key);
                return;
            }
            entry.registered = wanted;
        }
        if entry.conn.has_rx_work() && !entry.queued_for_rx {
            entry.queued_for_rx = true;
            self.rx_ready.push_back(key);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(entry) = self.conns.remove(&key) {
            let fd = entry.conn.as_raw_fd();
            if entry.registered.is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            self.by_fd.remove(&fd);
        }
    }

    fn queue_reset(&mut self, key: ConnKey) {
        if self.resets.len() >= MAX_QUEUED_RESETS {
            debug!("RX backlog full, dropping a vsock RST");
            return;
        }
        self.resets.push_back(self.reset_header(key));
    }

    fn reset_header(&self, key: ConnKey) -> PacketHeader {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..PacketHeader::default()
        }
    }

    /// Produces the next packet for the guest; `OP_RW` data is written to the start of `buf`,
    /// at most `buf.len()` bytes.
    pub fn next_rx_packet(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        if let Some(header) = self.resets.pop_front() {
            return Some(header);
        }
        // Each queued connection gets one chance per call, so none can spin here.
        for _ in 0..self.rx_ready.len() {
            let key = self.rx_ready.pop_front()?;
            let Some(entry) = self.conns.get_mut(&key) else {
                continue;
            };
            entry.queued_for_rx = false;
            match entry.conn.next_rx_packet(buf) {
                RxOutcome::Packet(header) => {
                    self.settle(key, Verdict::Keep);
                    return Some(header);
                }
                RxOutcome::Nothing => self.settle(key, Verdict::Keep),
                RxOutcome::Reset => {
                    self.remove(key);
                    return Some(self.reset_header(key));
                }
            }
        }
        None
    }
}

fn key_of(hdr: &PacketHeader) -> ConnKey {
    ConnKey {
        local_port: hdr.dst_port,
        peer_port: hdr.src_port,
    }
}

/// Parses `CONNECT <port>` (the newline already stripped).
fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?.trim();
    port.parse().ok()
}

/// Connects to a Unix socket without ever blocking: a listener with a full backlog counts as
/// refusing, instead of stalling the device.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    connect(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    Ok(UnixStream::from(fd))
}

/// Removes a socket file nobody listens on any more, so a restarted backend can bind again.
fn remove_stale_socket(path: &Path) {
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect_line(b"CONNECT 52 "), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT"), None);
        assert_eq!(parse_connect_line(b"CONNECT -1"), None);
        assert_eq!(parse_connect_line(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect_line(b"connect 1024"), None);
        assert_eq!(parse_connect_line(b"HELLO"), None);
        assert_eq!(parse_connect_line(&[0xff, 0xfe]), None);
    }
}
