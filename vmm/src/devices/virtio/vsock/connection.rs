//! One stream connection between a guest vsock socket and a host Unix stream.
//!
//! The connection owns the host stream and all per-connection protocol state: the handshake,
//! credit accounting in both directions, the buffer for guest data the host has not read yet,
//! and half-closes. It never touches guest memory; the muxer feeds it guest packets and asks it
//! for packets to send, and it tells the muxer which host events it wants to hear about.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use tracing::debug;
use vmm_sys_util::epoll::EventSet;

use super::packet::{
    PacketHeader, MAX_PACKET_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::HOST_CID;

/// Receive buffer the device advertises to the guest for each connection: guest data the host
/// has not read yet is kept up to this size.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;

/// Once the guest believes less than this much of our buffer is free, tell it about the room
/// the host has made by reading. One maximum-size packet: below that the guest may stall.
const CREDIT_UPDATE_THRESHOLD: u32 = MAX_PACKET_DATA as u32;

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// A host client asked for a guest port; waiting for the guest's RESPONSE or RST.
    LocalInit,
    /// Data flows (possibly half-closed).
    Established,
    /// The guest closed both directions; host-bound data is still being flushed, then RST.
    Closing,
}

/// What the muxer must do with the connection after it handled an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the connection.
    Keep,
    /// Tell the guest RST and forget the connection.
    Reset,
    /// Forget the connection without telling the guest (it already reset it).
    Forget,
}

/// Result of asking a connection for its next packet to the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// A packet to send; for `OP_RW` the data is at the start of the buffer given.
    Packet(PacketHeader),
    /// Nothing to send now.
    Nothing,
    /// The host stream failed: reset the connection.
    Reset,
}

/// Control packets waiting to go to the guest.
#[derive(Debug, Default)]
struct Pending {
    request: bool,
    response: bool,
    credit_update: bool,
}

/// A vsock connection bridged to a host Unix stream.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    state: ConnState,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,

    // Host to guest: the guest's receive buffer and how much we have sent into it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    /// The host stream reported readable and has not returned WouldBlock since.
    host_readable: bool,
    /// The host stream reached EOF; the guest was (or is being) told SHUTDOWN_SEND.
    host_eof: bool,

    // Guest to host: data received, delivered and buffered in between.
    tx_buf: VecDeque<u8>,
    /// Leading bytes of `tx_buf` the device wrote itself (the `OK` line): outside credit.
    tx_prefix: usize,
    tx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    guest_shut_send: bool,
    guest_shut_rcv: bool,
    host_write_shut: bool,

    pending: Pending,
}

impl Connection {
    /// A connection a host client asked for with `CONNECT <peer_port>`; the guest gets a REQUEST.
    pub fn host_initiated(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        let mut conn = Self::new(
            stream,
            ConnState::LocalInit,
            guest_cid,
            local_port,
            peer_port,
        );
        conn.pending.request = true;
        conn
    }

    /// A connection the guest asked for with `request`, already connected on the host side;
    /// the guest gets a RESPONSE.
    pub fn guest_initiated(stream: UnixStream, guest_cid: u64, request: &PacketHeader) -> Self {
        let mut conn = Self::new(
            stream,
            ConnState::Established,
            guest_cid,
            request.dst_port,
            request.src_port,
        );
        conn.update_peer_credit(request);
        conn.pending.response = true;
        conn
    }

    fn new(
        stream: UnixStream,
        state: ConnState,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        Connection {
            stream,
            state,
            guest_cid,
            local_port,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            host_readable: false,
            host_eof: false,
            tx_buf: VecDeque::new(),
            tx_prefix: 0,
            tx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_shut: false,
            pending: Pending::default(),
        }
    }

    /// Bytes the device may still send to the guest.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn update_peer_credit(&mut self, hdr: &PacketHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Whether host data may be forwarded to the guest at all (ignoring credit and readiness).
    fn host_to_guest_open(&self) -> bool {
        self.state == ConnState::Established && !self.host_eof && !self.guest_shut_rcv
    }

    /// Whether the connection should watch the host stream for readability.
    fn wants_host_read(&self) -> bool {
        self.host_to_guest_open() && !self.host_readable && self.peer_credit() > 0
    }

    /// Host events to watch: `None` to stop watching the stream entirely.
    ///
    /// Epoll always reports hang-ups, level-triggered. When reading is parked (no guest credit,
    /// or data already known to be waiting for RX buffers) a hang-up cannot be acted on yet, so
    /// the stream is not watched at all until reading resumes.
    pub fn interest(&self) -> Option<EventSet> {
        if self.state == ConnState::LocalInit {
            return Some(EventSet::empty());
        }
        let mut events = EventSet::empty();
        if self.wants_host_read() {
            events |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            events |= EventSet::OUT;
        }
        let read_parked =
            self.host_to_guest_open() && (self.host_readable || self.peer_credit() == 0);
        if events.is_empty() && read_parked {
            None
        } else {
            Some(events)
        }
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_rx_work(&self) -> bool {
        self.pending.request
            || self.pending.response
            || self.pending.credit_update
            || (self.host_readable && self.host_to_guest_open() && self.peer_credit() > 0)
    }

    /// Handles a packet the guest sent on this connection.
    pub fn on_guest_packet(&mut self, hdr: &PacketHeader, data: &[u8]) -> Verdict {
        self.update_peer_credit(hdr);
        match (self.state, hdr.op) {
            (_, OP_RST) => Verdict::Forget,
            (ConnState::LocalInit, OP_RESPONSE) => {
                self.state = ConnState::Established;
                let line = format!("OK {}\n", self.local_port);
                self.tx_prefix = line.len();
                self.tx_buf.extend(line.as_bytes());
                self.flush_tx()
            }
            (ConnState::LocalInit, _) => Verdict::Reset,
            (_, OP_RW) => self.accept_guest_data(data),
            (_, OP_CREDIT_UPDATE) => Verdict::Keep,
            (_, OP_CREDIT_REQUEST) => {
                self.pending.credit_update = true;
                Verdict::Keep
            }
            (_, OP_SHUTDOWN) => self.guest_shutdown(hdr.flags),
            // REQUEST or RESPONSE on a connected socket, or an unknown op.
            _ => Verdict::Reset,
        }
    }

    fn accept_guest_data(&mut self, data: &[u8]) -> Verdict {
        if self.guest_shut_send {
            debug!(
                port = self.local_port,
                "guest sent data after shutting down sending"
            );
            return Verdict::Reset;
        }
        let buffered = (self.tx_cnt - self.fwd_cnt).0 as usize;
        if buffered + data.len() > CONN_BUF_ALLOC as usize {
            debug!(port = self.local_port, "guest sent more than its credit");
            return Verdict::Reset;
        }
        self.tx_cnt += data.len() as u32;
        let mut rest = data;
        if self.tx_buf.is_empty() {
            match self.stream.write(data) {
                Ok(n) => {
                    self.fwd_cnt += n as u32;
                    rest = &data[n..];
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    debug!(port = self.local_port, "host stream write failed: {e}");
                    return Verdict::Reset;
                }
            }
        }
        self.tx_buf.extend(rest);
        self.note_fwd_progress();
        Verdict::Keep
    }

    fn guest_shutdown(&mut self, flags: u32) -> Verdict {
        self.guest_shut_send |= flags & SHUTDOWN_SEND != 0;
        self.guest_shut_rcv |= flags & SHUTDOWN_RCV != 0;
        if self.guest_shut_send && self.guest_shut_rcv {
            self.state = ConnState::Closing;
        }
        // Acts on the new flags: shuts the host stream's write side, or finishes a close.
        self.flush_tx()
    }

    /// Writes buffered guest data to the host stream, then applies a pending half- or full close.
    fn flush_tx(&mut self) -> Verdict {
        while !self.tx_buf.is_empty() {
            let (a, b) = self.tx_buf.as_slices();
            match self
                .stream
                .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            {
                Ok(0) => return Verdict::Reset,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    let own = n.min(self.tx_prefix);
                    self.tx_prefix -= own;
                    self.fwd_cnt += (n - own) as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(port = self.local_port, "host stream write failed: {e}");
                    return Verdict::Reset;
                }
            }
        }
        self.note_fwd_progress();
        if !self.tx_buf.is_empty() {
            return Verdict::Keep;
        }
        if self.state == ConnState::Closing {
            // Everything the guest sent is delivered; RST completes the guest's close.
            return Verdict::Reset;
        }
        if self.guest_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                debug!(port = self.local_port, "host stream shutdown failed: {e}");
                return Verdict::Reset;
            }
        }
        Verdict::Keep
    }

    /// Queues a credit update if the host freed buffer space the guest may be waiting for.
    fn note_fwd_progress(&mut self) {
        if self.fwd_cnt == self.last_fwd_cnt_sent {
            return;
        }
        let unacked = (self.tx_cnt - self.last_fwd_cnt_sent).0;
        let guest_view_free = CONN_BUF_ALLOC.saturating_sub(unacked);
        if guest_view_free < CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }

    /// Handles readiness of the host stream.
    pub fn on_host_event(&mut self, events: EventSet) -> Verdict {
        if events.contains(EventSet::OUT) && !self.tx_buf.is_empty() {
            let verdict = self.flush_tx();
            if verdict != Verdict::Keep {
                return verdict;
            }
        }
        if events.contains(EventSet::IN) && self.wants_host_read() {
            // Read later, when the guest has RX buffers; a hang-up is seen as EOF then.
            self.host_readable = true;
        } else if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // Nothing left to read that the guest will take: the host is gone.
            return if self.pending.request {
                Verdict::Forget
            } else {
                Verdict::Reset
            };
        }
        Verdict::Keep
    }

    /// Produces the next packet for the guest, reading host data into `buf` for `OP_RW`.
    pub fn next_rx_packet(&mut self, buf: &mut [u8]) -> RxOutcome {
        if self.pending.request {
            self.pending.request = false;
            return RxOutcome::Packet(self.header(OP_REQUEST, 0, 0));
        }
        if self.pending.response {
            self.pending.response = false;
            return RxOutcome::Packet(self.header(OP_RESPONSE, 0, 0));
        }
        let credit = self.peer_credit() as usize;
        if self.host_readable && self.host_to_guest_open() && credit > 0 && !buf.is_empty() {
            let max = buf.len().min(credit);
            match self.stream.read(&mut buf[..max]) {
                Ok(0) => {
                    self.host_eof = true;
                    self.host_readable = false;
                    return RxOutcome::Packet(self.header(OP_SHUTDOWN, SHUTDOWN_SEND, 0));
                }
                Ok(n) => {
                    self.rx_cnt += n as u32;
                    return RxOutcome::Packet(self.header(OP_RW, 0, n as u32));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.host_readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(port = self.local_port, "host stream read failed: {e}");
                    return RxOutcome::Reset;
                }
            }
        }
        if self.pending.credit_update {
            return RxOutcome::Packet(self.header(OP_CREDIT_UPDATE, 0, 0));
        }
        RxOutcome::Nothing
    }

    /// A header from this connection's host end; it carries our latest credit, so it also
    /// answers any pending credit update.
    fn header(&mut self, op: u16, flags: u32, len: u32) -> PacketHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
