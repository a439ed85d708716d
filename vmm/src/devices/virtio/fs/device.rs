//! [`FsDevice`]: virtio-fs behind the virtio-mmio transport, with virtiofsd doing the work.
//!
//! - Kicks: one eventfd per queue, handed to virtiofsd with `SET_VRING_KICK`. A QueueNotify
//!   reaches [`VirtioDevice::process_queue`] on the vCPU thread, which writes the queue's
//!   eventfd; virtiofsd wakes on it.
//! - Calls: one eventfd per queue, handed over with `SET_VRING_CALL`. virtiofsd signals it
//!   when it used buffers; the VMM's event loop watches it ([`HostEvents`]) and raises the
//!   interrupt through the transport, which sets `InterruptStatus` (VRING) first. An irqfd
//!   would skip the event loop but leave the status bit unset.
//! - virtiofsd going away: the event loop also watches the vhost-user socket for the peer
//!   hanging up. The device then logs it and sets DEVICE_NEEDS_RESET; every later activation
//!   fails (and sets it again) without blocking.

use std::os::fd::{AsRawFd, RawFd};

use tracing::{debug, error, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{Virtiofsd, VringSetup};
use super::{
    config_space, validate_queue_size, FsConfig, FsError, CONFIG_SPACE_SIZE, NUM_QUEUES,
    VIRTIO_ID_FS,
};
use crate::devices::virtio::mmio::{
    read_config_space, take_queues, ActivateError, VirtioDevice, VirtioInterrupt,
};
use crate::devices::{HostEvents, Watch};

/// The virtio features the device may pass on from virtiofsd: the ones this transport and
/// the split rings it sets up can carry. Anything else virtiofsd offers (its vhost-user
/// protocol bit, dirty logging) is not for the guest.
const PASSED_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);

/// Index in [`HostEvents::host_event_fds`] of the vhost-user socket; the call eventfds come
/// first, at their queue's index.
const SOCKET_EVENT: usize = NUM_QUEUES;

/// virtio-fs (device type 26, queues hiprio and one request queue, config = tag) as a
/// vhost-user frontend.
pub struct FsDevice {
    backend: Virtiofsd,
    config: [u8; CONFIG_SPACE_SIZE],
    queue_max_sizes: [u16; NUM_QUEUES],
    kicks: [EventFd; NUM_QUEUES],
    calls: [EventFd; NUM_QUEUES],
    driver_features: u64,
    /// Rings virtiofsd was asked to start, to stop on reset (also after a failed activation).
    started: Vec<usize>,
    /// The driver's interrupt, while the device is active.
    interrupt: Option<VirtioInterrupt>,
}

impl FsDevice {
    /// Connects to virtiofsd and gives it guest memory, which must be file-backed
    /// (`vstate::memory`). Fails, naming the socket, if virtiofsd is not there.
    pub fn connect(config: &FsConfig, memory: &GuestMemoryMmap) -> Result<Self, FsError> {
        let config_bytes = config_space(&config.tag)?;
        validate_queue_size(config.queue_size)?;
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd);
        let kicks = [eventfd()?, eventfd()?];
        let calls = [eventfd()?, eventfd()?];
        let backend = Virtiofsd::connect(&config.socket, memory)?;
        Ok(FsDevice {
            backend,
            config: config_bytes,
            queue_max_sizes: [config.queue_size; NUM_QUEUES],
            kicks,
            calls,
            driver_features: 0,
            started: Vec::new(),
            interrupt: None,
        })
    }

    /// Whether the driver activated the device (and it was not reset since).
    pub fn is_active(&self) -> bool {
        self.interrupt.is_some()
    }

    /// Whether virtiofsd is gone: the device cannot work again.
    pub fn backend_gone(&self) -> bool {
        self.backend.is_closed()
    }

    fn start(&mut self, mem: &GuestMemoryMmap, queues: &[Queue]) -> Result<(), FsError> {
        let mut vrings = Vec::new();
        for (index, queue) in queues.iter().enumerate() {
            // The driver may leave a queue unused; virtiofsd then never sees it.
            if !queue.ready() {
                continue;
            }
            let host = |ring: &'static str, addr: u64| {
                mem.get_host_address(GuestAddress(addr))
                    .map(|ptr| ptr as u64)
                    .map_err(|_| FsError::RingOutsideMemory { index, ring, addr })
            };
            vrings.push(VringSetup {
                index,
                size: queue.size(),
                desc: host("descriptor table", queue.desc_table())?,
                avail: host("available ring", queue.avail_ring())?,
                used: host("used ring", queue.used_ring())?,
                next_avail: queue.next_avail(),
                call: &self.calls[index],
                kick: &self.kicks[index],
            });
        }
        self.backend
            .start(self.driver_features, &vrings, &mut self.started)
    }

    fn stop(&mut self) {
        if self.started.is_empty() || self.backend.is_closed() {
            self.started.clear();
            return;
        }
        if let Err(e) = self.backend.stop(&self.started) {
            warn!(error = %e, "cannot stop the virtio-fs rings");
        }
        self.started.clear();
    }

    /// virtiofsd used buffers of queue `index`.
    fn relay_call(&mut self, index: usize) {
        // Drained even when inactive: a late signal from before a reset means nothing now.
        let _ = self.calls[index].read();
        if let Some(interrupt) = &self.interrupt {
            if let Err(e) = interrupt.signal_used_queue() {
                warn!(error = %e, "cannot interrupt the virtio-fs driver");
            }
        }
    }

    fn backend_hung_up(&mut self) {
        error!(
            socket = %self.backend.socket().display(),
            "the vhost-user connection to virtiofsd is closed; the virtio-fs device needs a reset and will not work again"
        );
        self.backend.close();
        if let Some(interrupt) = &self.interrupt {
            if let Err(e) = interrupt.signal_needs_reset() {
                warn!(error = %e, "cannot interrupt the virtio-fs driver");
            }
        }
    }
}

impl VirtioDevice for FsDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn avail_features(&self) -> u64 {
        self.backend.features() & PASSED_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.driver_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            offset,
            len = data.len(),
            "ignoring write to the read-only virtio-fs config space"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        // Either queue may be left unused (`start` skips it).
        let queues: [Queue; NUM_QUEUES] = take_queues("virtio-fs", queues, &[])?;
        let guard = mem.memory();
        if let Err(e) = self.start(&guard, &queues) {
            return Err(ActivateError::Backend(e.to_string()));
        }
        // Buffers made available before DRIVER_OK got no notification that reached
        // virtiofsd: one kick per ring has it look.
        for &index in &self.started {
            let _ = self.kicks[index].write(1);
        }
        self.interrupt = Some(interrupt);
        debug!(
            socket = %self.backend.socket().display(),
            rings = ?self.started,
            "virtio-fs device activated"
        );
        Ok(())
    }

    fn process_queue(&mut self, index: usize) {
        let Some(kick) = self.kicks.get(index) else {
            warn!(index, "ignoring notification of unknown virtio-fs queue");
            return;
        };
        if let Err(e) = kick.write(1) {
            warn!(index, error = %e, "cannot kick virtiofsd");
        }
    }

    fn reset(&mut self) {
        self.interrupt = None;
        self.stop();
    }
}

impl HostEvents for FsDevice {
    fn host_event_fds(&self) -> Vec<(RawFd, EventSet)> {
        let mut fds: Vec<_> = self
            .calls
            .iter()
            .map(|call| (call.as_raw_fd(), EventSet::IN))
            .collect();
        // Only the hang-up: replies to requests are read by the thread that sent them.
        fds.push((self.backend.socket_fd(), EventSet::READ_HANG_UP));
        fds
    }

    fn handle_host_event(&mut self, index: usize, _events: EventSet) -> Watch {
        if index == SOCKET_EVENT {
            self.backend_hung_up();
            return Watch::Stop;
        }
        if index < NUM_QUEUES {
            self.relay_call(index);
        }
        Watch::Keep
    }
}

impl std::fmt::Debug for FsDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsDevice")
            .field("socket", &self.backend.socket())
            .field("active", &self.is_active())
            .field("backend_gone", &self.backend_gone())
            .finish()
    }
}
