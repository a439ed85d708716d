//! The vhost-user session with virtiofsd, as its frontend.
//!
//! At VMM start ([`Virtiofsd::connect`]): `SET_OWNER`, the backend's virtio features,
//! protocol features (`REPLY_ACK` so every request is answered, `MQ` to check it has both
//! queues) and the memory table: every guest RAM region with the memfd and its offset in it.
//! With the driver ([`Virtiofsd::start`]): `SET_FEATURES` with what the driver acked, then
//! per ring its size, base, addresses (in the VMM's address space, which the memory table
//! lets the backend translate), call and kick eventfds, and enable. [`Virtiofsd::stop`]
//! takes rings back with `GET_VRING_BASE`, which stops them in the backend.
//!
//! Requests run on the thread that drives the device (a vCPU, when the guest sets
//! DRIVER_OK or resets the device). A virtiofsd that exits or crashes ends them at once
//! (end of file, or EPIPE). A request that fails on the socket leaves the session out of
//! step (a late reply would be taken for the next request's), so the session is then closed
//! for good. A virtiofsd that stays alive but never answers holds the vCPU until it is
//! killed: the vhost crate retries a timed-out receive, so a socket timeout cannot help.

use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, warn};
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{FsError, NUM_QUEUES};

/// A refused connection is tried this many times, this far apart (one second in all).
const CONNECT_ATTEMPTS: u32 = 20;
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// What the frontend asks for beyond the virtio features.
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::REPLY_ACK.union(VhostUserProtocolFeatures::MQ);

/// One vring as the driver set it up, with addresses already in the VMM's address space.
#[derive(Debug)]
pub(super) struct VringSetup<'a> {
    pub index: usize,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Where the backend starts reading the available ring.
    pub next_avail: u16,
    pub call: &'a EventFd,
    pub kick: &'a EventFd,
}

/// A connected, owned virtiofsd.
pub(super) struct Virtiofsd {
    socket: PathBuf,
    frontend: Frontend,
    /// A second handle on the socket, to shut it down once the session is out of step.
    stream: UnixStream,
    /// The backend's virtio feature bits, `VHOST_USER_F_PROTOCOL_FEATURES` included.
    features: u64,
    /// Closed: the socket failed or virtiofsd hung up. Nothing more is sent.
    closed: bool,
}

impl Virtiofsd {
    /// Connects to `socket` and does what does not wait for the guest: ownership, features,
    /// protocol features and the memory table of `memory`.
    pub fn connect(socket: &Path, memory: &GuestMemoryMmap) -> Result<Self, FsError> {
        let connect_error = |source| FsError::Connect {
            socket: socket.to_owned(),
            source,
        };
        let stream = connect_when_listening(socket).map_err(connect_error)?;
        let handle = stream.try_clone().map_err(connect_error)?;
        let mut backend = Virtiofsd {
            socket: socket.to_owned(),
            frontend: Frontend::from_stream(stream, NUM_QUEUES as u64),
            stream: handle,
            features: 0,
            closed: false,
        };
        backend.handshake(memory)?;
        Ok(backend)
    }

    fn handshake(&mut self, memory: &GuestMemoryMmap) -> Result<(), FsError> {
        self.request("SET_OWNER", |f| f.set_owner())?;
        self.features = self.request("GET_FEATURES", |f| f.get_features())?;
        if self.features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(self.unsupported("VIRTIO_F_VERSION_1"));
        }
        if self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = self.request("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            let acked = offered & WANTED_PROTOCOL_FEATURES;
            self.request("SET_PROTOCOL_FEATURES", |f| f.set_protocol_features(acked))?;
            if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request without a reply of its own is now acknowledged, so a
                // request virtiofsd refuses fails here instead of silently.
                self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if acked.contains(VhostUserProtocolFeatures::MQ) {
                let queues = self.request("GET_QUEUE_NUM", |f| f.get_queue_num())?;
                if queues < NUM_QUEUES as u64 {
                    return Err(self.unsupported(&format!(
                        "{NUM_QUEUES} queues (hiprio and one request queue; it has {queues})"
                    )));
                }
            }
        }
        let regions = memory
            .iter()
            .map(|region| {
                VhostUserMemoryRegionInfo::from_guest_region(region)
                    .map_err(|_| FsError::MemoryNotShared(region.start_addr().0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.request("SET_MEM_TABLE", |f| f.set_mem_table(&regions).map(|_| ()))?;
        debug!(
            socket = %self.socket.display(),
            features = self.features,
            "connected to virtiofsd"
        );
        Ok(())
    }

    /// The backend's virtio feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The fd of the vhost-user socket, to watch for virtiofsd hanging up.
    pub fn socket_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Notes that virtiofsd is gone; later requests fail at once.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            // A virtiofsd still there sees the end of the session and exits.
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// Acks the driver's `driver_features` (the backend's own protocol bit added back, which
    /// makes rings wait for SET_VRING_ENABLE) and starts `vrings`. `started` gets the index
    /// of each ring from its first request on, so a failure part-way can be undone.
    pub fn start(
        &mut self,
        driver_features: u64,
        vrings: &[VringSetup<'_>],
        started: &mut Vec<usize>,
    ) -> Result<(), FsError> {
        let protocol = self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let features = (driver_features & self.features) | protocol;
        self.request("SET_FEATURES", |f| f.set_features(features))?;
        for vring in vrings {
            let index = vring.index;
            started.push(index);
            self.request("SET_VRING_NUM", |f| f.set_vring_num(index, vring.size))?;
            self.request("SET_VRING_BASE", |f| {
                f.set_vring_base(index, vring.next_avail)
            })?;
            let addresses = VringConfigData {
                queue_max_size: vring.size,
                queue_size: vring.size,
                flags: 0,
                desc_table_addr: vring.desc,
                used_ring_addr: vring.used,
                avail_ring_addr: vring.avail,
                log_addr: None,
            };
            self.request("SET_VRING_ADDR", |f| f.set_vring_addr(index, &addresses))?;
            // The call fd first, so the ring has it as soon as the kick starts it.
            self.request("SET_VRING_CALL", |f| f.set_vring_call(index, vring.call))?;
            self.request("SET_VRING_KICK", |f| f.set_vring_kick(index, vring.kick))?;
            if protocol != 0 {
                self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(index, true))?;
            }
        }
        Ok(())
    }

    /// Stops the rings in `started`: disabled, then `GET_VRING_BASE`, after which virtiofsd
    /// no longer touches them. Every ring is tried; the first failure is returned.
    pub fn stop(&mut self, started: &[usize]) -> Result<(), FsError> {
        let protocol = self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        let mut result = Ok(());
        for &index in started {
            let mut stop = || {
                if protocol {
                    self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(index, false))?;
                }
                self.request("GET_VRING_BASE", |f| f.get_vring_base(index))
            };
            if let Err(e) = stop() {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Runs one request, unless the session is closed; a failure on the socket closes it.
    fn request<T>(
        &mut self,
        request: &'static str,
        send: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, FsError> {
        if self.closed {
            return Err(FsError::BackendGone {
                socket: self.socket.clone(),
            });
        }
        send(&mut self.frontend).map_err(|source| {
            if breaks_session(&source) {
                warn!(
                    socket = %self.socket.display(),
                    request,
                    error = %source,
                    "closing the vhost-user session with virtiofsd"
                );
                self.close();
            }
            FsError::Request {
                socket: self.socket.clone(),
                request,
                source,
            }
        })
    }

    fn unsupported(&self, what: &str) -> FsError {
        FsError::Unsupported {
            socket: self.socket.clone(),
            what: what.to_owned(),
        }
    }
}

/// Connects to `socket`. virtiofsd creates its socket file a moment before it listens on
/// it, so a refused connection is tried again for a short while; a missing file is not.
fn connect_when_listening(socket: &Path) -> std::io::Result<UnixStream> {
    let mut attempts = CONNECT_ATTEMPTS;
    loop {
        match UnixStream::connect(socket) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && attempts > 1 => {
                attempts -= 1;
                std::thread::sleep(CONNECT_RETRY_DELAY);
            }
            result => return result,
        }
    }
}

/// Whether an error leaves the session unusable: anything that happened on the socket (a
/// reply may still be on its way, and would be taken for the next one's). A request the
/// backend refused, or one the frontend did not send, leaves it in step.
fn breaks_session(error: &vhost::Error) -> bool {
    use vhost::vhost_user::Error as E;
    match error {
        vhost::Error::VhostUserProtocol(e) => !matches!(
            e,
            E::BackendInternalError
                | E::InvalidParam
                | E::InvalidOperation(_)
                | E::InactiveFeature(_)
                | E::InactiveOperation(_)
                | E::FeatureMismatch
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost::vhost_user::Error as E;

    #[test]
    fn only_socket_failures_end_the_session() {
        let user = |e| vhost::Error::VhostUserProtocol(e);
        for (error, breaks) in [
            (user(E::BackendInternalError), false),
            (user(E::InvalidParam), false),
            (
                user(E::InactiveOperation(VhostUserProtocolFeatures::MQ)),
                false,
            ),
            (user(E::Disconnected), true),
            (user(E::PartialMessage), true),
            (user(E::InvalidMessage), true),
            (
                user(E::SocketBroken(std::io::Error::from_raw_os_error(
                    libc::EPIPE,
                ))),
                true,
            ),
            (
                user(E::SocketRetry(std::io::Error::from_raw_os_error(
                    libc::EAGAIN,
                ))),
                true,
            ),
            (vhost::Error::InvalidGuestMemory, true),
        ] {
            assert_eq!(breaks_session(&error), breaks, "{error}");
        }
    }
}
