//! Serves the vsock device to QEMU as a vhost-user backend (`vhost-user-vsock-device`).
//!
//! This layer only adapts: vhost-user hands over guest memory and vrings, the device core does
//! the work. The muxer's epoll fd is one more listener in the daemon's event loop, so host
//! sockets and queue kicks are handled by the same worker thread.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use tracing::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as VhostError, Listener};
use vhost_user_backend::{
    Error as DaemonError, ShutdownHandle, VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::EventFd;

use super::device::{DeviceError, VsockDevice, NUM_QUEUES, RX_QUEUE, TX_QUEUE};
use super::VsockConfig;

/// Event-loop token of the muxer's epoll fd (tokens up to `NUM_QUEUES` are the daemon's).
const HOST_EVENTS: u16 = NUM_QUEUES as u16 + 1;
/// Largest virtqueue the backend accepts.
const MAX_QUEUE_SIZE: usize = 1024;

/// Errors serving the vsock device over vhost-user.
#[derive(Debug, thiserror::Error)]
pub enum VsockBackendError {
    #[error("Cannot set up the vsock device")]
    Device(#[from] DeviceError),
    #[error("Cannot bind the vhost-user socket {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: VhostError,
    },
    #[error("Cannot start the vhost-user daemon: {0}")]
    Daemon(String),
    #[error("Cannot watch the hybrid vsock sockets")]
    WatchHostSockets(#[source] io::Error),
    #[error("Cannot start the vhost-user thread")]
    Spawn(#[source] io::Error),
    #[error("Serving QEMU over vhost-user failed: {0}")]
    Serve(String),
    #[error("The vhost-user thread panicked")]
    Panicked,
}

/// The device as a vhost-user backend.
struct VhostUserVsock {
    device: VsockDevice,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
}

impl VhostUserVsock {
    /// Runs TX before RX: the guest's packets may produce replies.
    fn process_queues(&mut self, vrings: &[VringRwLock]) {
        let Some(atomic) = &self.mem else {
            return;
        };
        let mem = atomic.memory();
        for index in [TX_QUEUE, RX_QUEUE] {
            let Some(vring) = vrings.get(index) else {
                continue;
            };
            let mut state = vring.get_mut();
            if !state.is_enabled() || !state.get_queue().ready() {
                continue;
            }
            let result = if index == TX_QUEUE {
                self.device.process_tx(&*mem, state.get_queue_mut())
            } else {
                self.device.process_rx(&*mem, state.get_queue_mut())
            };
            match result {
                Ok(true) => {
                    if let Err(e) = state.signal_used_queue() {
                        warn!(queue = index, "cannot notify the vsock driver: {e}");
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(queue = index, "vsock queue processing failed: {e}"),
            }
        }
    }
}

impl VhostUserBackendMut for VhostUserVsock {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // Each queue tracks EVENT_IDX itself; the device only calls its notification methods.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.device.config_space();
        let start = offset as usize;
        // An empty reply tells the frontend the request was out of range.
        match start.checked_add(size as usize) {
            Some(end) if end <= config.len() => config[start..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                warn!("cannot create the vhost-user worker exit event: {e}");
                None
            }
        }
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if device_event == HOST_EVENTS {
            self.device.process_host_events();
        }
        // Errors are logged, not returned: an error would end the worker and kill the device.
        self.process_queues(vrings);
        Ok(())
    }
}

type Daemon = VhostUserDaemon<Arc<Mutex<VhostUserVsock>>>;

/// Shared between the handle and the serving thread.
#[derive(Default)]
struct Control {
    stopping: bool,
    frontend: Option<ShutdownHandle>,
}

fn lock(control: &Mutex<Control>) -> MutexGuard<'_, Control> {
    control
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Binds the hybrid-vsock Unix socket at `config.uds_path` right away (so host clients can
/// connect before the guest is up; their `CONNECT` waits until the guest driver is ready or they
/// time out), binds the vhost-user socket at `vhost_user_socket` (QEMU connects to it as a
/// client with `-chardev socket,id=x,path=...` + `-device vhost-user-vsock-device,chardev=x`),
/// and serves in background threads until QEMU disconnects or the handle is stopped or dropped.
/// Both socket files are removed when serving ends.
pub fn serve_vhost_user(
    vhost_user_socket: &Path,
    config: VsockConfig,
) -> Result<VsockBackendHandle, VsockBackendError> {
    let device = VsockDevice::new(&config)?;
    // The vhost crate's listener removes a stale file first, and its file when dropped.
    let listener =
        Listener::new(vhost_user_socket, true).map_err(|source| VsockBackendError::Bind {
            path: vhost_user_socket.to_owned(),
            source,
        })?;
    start(device, listener, config.guest_cid)
}

/// Serves the device on sockets the caller bound and listens on (`hull-vmm vsock`): QEMU
/// connects to `vhost_user`, host clients to `hybrid`, whose path is `config.uds_path`
/// (guest-initiated connections go to `<uds_path>_P`). The caller removes the socket files.
pub fn serve_vhost_user_on(
    vhost_user: UnixListener,
    hybrid: UnixListener,
    config: VsockConfig,
) -> Result<VsockBackendHandle, VsockBackendError> {
    let device = VsockDevice::with_listener(&config, hybrid)?;
    start(device, Listener::from(vhost_user), config.guest_cid)
}

fn start(
    device: VsockDevice,
    listener: Listener,
    guest_cid: u64,
) -> Result<VsockBackendHandle, VsockBackendError> {
    let host_events_fd = device.host_events_fd();
    let backend = Arc::new(Mutex::new(VhostUserVsock { device, mem: None }));
    let daemon = VhostUserDaemon::new(
        format!("hull-vsock-{guest_cid}"),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| VsockBackendError::Daemon(e.to_string()))?;
    // One worker thread serves all queues, so there is exactly one epoll handler.
    for handler in daemon.get_epoll_handlers() {
        handler
            .register_listener(host_events_fd, EventSet::IN, u64::from(HOST_EVENTS))
            .map_err(VsockBackendError::WatchHostSockets)?;
    }
    // Written to stop a serving thread that still waits for QEMU.
    let stop = Arc::new(
        EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK).map_err(VsockBackendError::Spawn)?,
    );
    let thread_stop = stop.clone();
    let control = Arc::new(Mutex::new(Control::default()));
    let thread_control = control.clone();
    let finished = Arc::new(
        EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK).map_err(VsockBackendError::Spawn)?,
    );
    let thread_finished = finished.clone();
    let thread = thread::Builder::new()
        .name(format!("hull-vsock-{guest_cid}"))
        .spawn(move || {
            let result = serve(daemon, listener, &thread_control, &thread_stop);
            let _ = thread_finished.write(1);
            result
        })
        .map_err(VsockBackendError::Spawn)?;
    Ok(VsockBackendHandle {
        guest_cid,
        stop,
        control,
        finished,
        thread: Some(thread),
    })
}

/// Serves one frontend connection, then tears everything down.
fn serve(
    mut daemon: Daemon,
    mut listener: Listener,
    control: &Mutex<Control>,
    stop: &EventFd,
) -> Result<(), VsockBackendError> {
    let result = match wait_for_frontend(&listener, stop) {
        Ok(true) => daemon.start(&mut listener).and_then(|()| {
            {
                let mut control = lock(control);
                if control.stopping {
                    daemon.request_shutdown();
                } else {
                    control.frontend = daemon.shutdown_handle();
                }
            }
            daemon.wait()
        }),
        Ok(false) => Ok(()),
        Err(e) => Err(DaemonError::CreateBackendListener(VhostError::SocketError(
            e,
        ))),
    };
    let stopping = lock(control).stopping;
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    // Joins the worker thread and drops the device, which removes the hybrid vsock socket.
    drop(daemon);
    // Removes the vhost-user socket file.
    drop(listener);
    match result {
        Ok(()) => Ok(()),
        Err(DaemonError::HandleRequest(VhostError::Disconnected | VhostError::PartialMessage)) => {
            Ok(())
        }
        Err(e) if stopping => {
            debug!("vhost-user vsock stopped: {e}");
            Ok(())
        }
        Err(e) => Err(VsockBackendError::Serve(e.to_string())),
    }
}

/// Waits until QEMU connects (true) or `stop` is written (false). The accept comes after,
/// so stopping never has to disturb the listening socket, which may be the caller's too.
fn wait_for_frontend(listener: &Listener, stop: &EventFd) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: both descriptors are owned by the caller and outlive this function.
    let (listening, stopping) = unsafe {
        (
            BorrowedFd::borrow_raw(listener.as_raw_fd()),
            BorrowedFd::borrow_raw(stop.as_raw_fd()),
        )
    };
    loop {
        let mut fds = [
            PollFd::new(stopping, PollFlags::POLLIN),
            PollFd::new(listening, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) if fds[0].any() == Some(true) => return Ok(false),
            Ok(_) if fds[1].any() == Some(true) => return Ok(true),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A running vhost-user vsock backend. Stopping (or dropping) it disconnects QEMU, stops the
/// threads and removes the socket files `serve_vhost_user` bound (not the `<uds>_P` sockets:
/// those belong to their listeners).
pub struct VsockBackendHandle {
    guest_cid: u64,
    /// Stops a serving thread that still waits for QEMU.
    stop: Arc<EventFd>,
    control: Arc<Mutex<Control>>,
    /// Written once serving has ended.
    finished: Arc<EventFd>,
    thread: Option<JoinHandle<Result<(), VsockBackendError>>>,
}

impl VsockBackendHandle {
    /// Stops serving and waits for the threads to finish.
    pub fn stop(mut self) -> Result<(), VsockBackendError> {
        self.shutdown()
    }

    /// Whether serving has ended (QEMU disconnected or serving failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// An eventfd that becomes readable once serving has ended, to wait for that along with
    /// other events.
    pub fn finished_fd(&self) -> RawFd {
        self.finished.as_raw_fd()
    }

    fn shutdown(&mut self) -> Result<(), VsockBackendError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        {
            let mut control = lock(&self.control);
            control.stopping = true;
            match &control.frontend {
                Some(frontend) => frontend.shutdown(),
                // Still waiting for QEMU; harmless if the thread is already past it.
                None => {
                    let _ = self.stop.write(1);
                }
            }
        }
        thread.join().map_err(|_| VsockBackendError::Panicked)?
    }
}

impl Drop for VsockBackendHandle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            warn!("stopping the vhost-user vsock backend failed: {e}");
        }
    }
}

impl std::fmt::Debug for VsockBackendHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockBackendHandle")
            .field("guest_cid", &self.guest_cid)
            .field("running", &!self.is_finished())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::VhostBackend;

    struct Paths {
        dir: PathBuf,
    }

    impl Paths {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("hull-vmm-vu-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Paths { dir }
        }
        fn vhost(&self) -> PathBuf {
            self.dir.join("vhost.sock")
        }
        fn config(&self) -> VsockConfig {
            VsockConfig {
                guest_cid: 42,
                uds_path: self.dir.join("vsock"),
            }
        }
    }

    impl Drop for Paths {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn binds_both_sockets_and_stop_removes_them() {
        let paths = Paths::new("stop");
        let handle = serve_vhost_user(&paths.vhost(), paths.config()).unwrap();
        assert!(paths.vhost().exists());
        assert!(paths.config().uds_path.exists());
        // Host clients can connect before QEMU and the guest are there.
        let _early_client = UnixStream::connect(&paths.config().uds_path).unwrap();
        assert!(!handle.is_finished());
        handle.stop().unwrap();
        assert!(!paths.vhost().exists());
        assert!(!paths.config().uds_path.exists());
    }

    #[test]
    fn drop_removes_the_sockets() {
        let paths = Paths::new("drop");
        let handle = serve_vhost_user(&paths.vhost(), paths.config()).unwrap();
        drop(handle);
        assert!(!paths.vhost().exists());
        assert!(!paths.config().uds_path.exists());
    }

    #[test]
    fn bad_guest_cid_is_refused() {
        let paths = Paths::new("cid");
        let config = VsockConfig {
            guest_cid: 2,
            ..paths.config()
        };
        let err = serve_vhost_user(&paths.vhost(), config).unwrap_err();
        assert!(matches!(
            err,
            VsockBackendError::Device(DeviceError::InvalidGuestCid(2))
        ));
        assert!(!paths.vhost().exists());
    }

    #[test]
    fn config_reads_outside_the_config_space_are_refused() {
        let paths = Paths::new("config");
        let backend = VhostUserVsock {
            device: VsockDevice::new(&paths.config()).unwrap(),
            mem: None,
        };
        assert_eq!(backend.get_config(0, 8), 42u64.to_le_bytes());
        assert_eq!(backend.get_config(0, 4), [42, 0, 0, 0]);
        assert!(backend.get_config(4, 8).is_empty());
        assert!(backend.get_config(u32::MAX, 2).is_empty());
    }

    #[test]
    fn frontend_negotiates_and_reads_the_guest_cid() {
        let paths = Paths::new("frontend");
        let handle = serve_vhost_user(&paths.vhost(), paths.config()).unwrap();
        let mut frontend = Frontend::connect(paths.vhost(), NUM_QUEUES as u64).unwrap();
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        assert_ne!(features & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(
            features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        frontend.set_features(features).unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        assert!(protocol.contains(VhostUserProtocolFeatures::CONFIG));
        frontend
            .set_protocol_features(VhostUserProtocolFeatures::CONFIG)
            .unwrap();
        let (_, config) = frontend
            .get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8])
            .unwrap();
        assert_eq!(config, 42u64.to_le_bytes());
        let (_, high) = frontend
            .get_config(4, 4, VhostUserConfigFlags::empty(), &[0u8; 4])
            .unwrap();
        assert_eq!(high, [0u8; 4]);

        // QEMU going away ends serving and removes the sockets.
        drop(frontend);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !handle.is_finished() {
            assert!(Instant::now() < deadline, "backend kept serving");
            thread::sleep(Duration::from_millis(5));
        }
        assert!(!paths.vhost().exists());
        assert!(!paths.config().uds_path.exists());
        handle.stop().unwrap();
    }
}
