//! The virtio-mmio transport, virtio 1.x ("modern", register layout Version 2).
//!
//! [`MmioTransport`] emulates the register window of one device: feature negotiation, the
//! driver status state machine, virtqueue setup and notifications, interrupt status and the
//! device configuration space. The device behind it implements [`VirtioDevice`] and only sees
//! ready-made `virtio_queue::Queue`s once the driver sets DRIVER_OK.
//!
//! Guest accesses are never trusted: accesses of the wrong size, to unknown offsets, to
//! read-only or write-only registers, or out of order with the status state machine are
//! logged and ignored.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};

use crate::devices::Interrupt;

/// `MagicValue`: "virt" in little-endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// `Version` of the register layout: 2 is virtio 1.x ("modern").
pub const MMIO_VERSION: u32 = 2;
/// `VendorID` reported to the driver: "HULL" in little-endian.
pub const MMIO_VENDOR_ID: u32 = 0x4c4c_5548;
/// Offset of the device configuration space in the register window.
pub const MMIO_CONFIG_SPACE_OFFSET: u64 = 0x100;

// Register offsets (virtio 1.x, 4.2.2). The `*_LOW`/`*_HIGH` pairs hold 64-bit addresses.
const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;

const ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

/// Errors of device activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("Virtqueue {index} is misconfigured")]
    InvalidQueue {
        index: usize,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("Virtqueue {0} does not fit in guest memory")]
    QueueOutsideMemory(usize),
    #[error("The {device} device needs {expected} virtqueues, the transport gave {actual}")]
    QueueCount {
        device: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error(
        "The driver did not enable {device} virtqueue {index} ({queue}), which the device needs"
    )]
    QueueNotReady {
        device: &'static str,
        index: usize,
        queue: &'static str,
    },
    /// The process behind a vhost-user device refused or failed (the message says which).
    #[error("{0}")]
    Backend(String),
}

/// A virtio device as the transport sees it.
pub trait VirtioDevice: Send {
    /// The virtio device type (`VIRTIO_ID_*`).
    fn device_type(&self) -> u32;

    /// The maximum size of each virtqueue (powers of two); its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers. The transport always adds `VIRTIO_F_VERSION_1`.
    fn avail_features(&self) -> u64;

    /// Called once the driver's feature set is accepted (FEATURES_OK), before `activate`.
    fn ack_features(&mut self, _features: u64) {}

    /// Reads config space at `offset` into `data`, which arrives zeroed: bytes beyond the
    /// config space stay zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes config space at `offset`. Devices with a read-only config space ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device when the driver sets DRIVER_OK. `queues` has one entry per queue
    /// max size, configured as the driver left them; queues it did not enable are not ready.
    fn activate(
        &mut self,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError>;

    /// The driver notified queue `index` (always below the number of queues) of new buffers.
    fn process_queue(&mut self, index: usize);

    /// The driver reset the device: drop the queues, memory and interrupt from `activate`.
    /// Also called when the device was never activated.
    fn reset(&mut self);
}

/// Takes the queues the transport handed to [`VirtioDevice::activate`]: checks there are `N`
/// and that the driver enabled each queue of `required` (index and name); the driver may
/// leave the others unused. Sizes and ring addresses were checked by the transport.
/// `device` names the device in the errors.
pub fn take_queues<const N: usize>(
    device: &'static str,
    queues: Vec<Queue>,
    required: &[(usize, &'static str)],
) -> Result<[Queue; N], ActivateError> {
    let actual = queues.len();
    let queues = <[Queue; N]>::try_from(queues).map_err(|_| ActivateError::QueueCount {
        device,
        expected: N,
        actual,
    })?;
    for &(index, queue) in required {
        if !queues[index].ready() {
            return Err(ActivateError::QueueNotReady {
                device,
                index,
                queue,
            });
        }
    }
    Ok(queues)
}

/// Hands every chain the driver made available on `queue` to `handle` and returns it to the
/// driver with the length `handle` says it wrote, malformed chains too (or the driver would
/// leak the buffers); `device` names the device in logs. Returns whether the driver wants an
/// interrupt for what was used. A driver whose available index runs ahead of what can be
/// popped is given up on after two empty rounds, so it cannot hold a vCPU thread here.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    device: &'static str,
    mut handle: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> bool {
    let mut used = false;
    let mut idle_rounds = 0;
    loop {
        if queue.disable_notification(mem).is_err() {
            return used;
        }
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = handle(chain);
            if let Err(e) = queue.add_used(mem, head, written) {
                warn!(device, error = %e, "cannot return a chain to the driver");
                return used;
            }
            used = true;
            popped = true;
        }
        idle_rounds = if popped { 0 } else { idle_rounds + 1 };
        match queue.enable_notification(mem) {
            Ok(true) if idle_rounds < 2 => {}
            Ok(true) => {
                warn!(device, "the available ring index is out of range");
                break;
            }
            Ok(false) => break,
            Err(e) => {
                warn!(device, error = %e, "the queue failed");
                break;
            }
        }
    }
    used && queue.needs_notification(mem).unwrap_or(true)
}

/// [`VirtioDevice::read_config`] for a device whose config space is the bytes `config`.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let len = data.len().min(config.len() - start);
    data[..len].copy_from_slice(&config[start..start + len]);
}

/// Interrupt state a transport shares with its device.
#[derive(Debug, Default)]
struct InterruptState {
    status: AtomicU32,
    config_generation: AtomicU32,
    /// The device failed on its own (its backend went away): the transport shows
    /// DEVICE_NEEDS_RESET from the next register access until the driver resets it.
    needs_reset: AtomicBool,
}

/// How a device interrupts the driver: sets the transport's `InterruptStatus` and raises the
/// device's interrupt line.
#[derive(Clone)]
pub struct VirtioInterrupt {
    state: Arc<InterruptState>,
    line: Arc<dyn Interrupt>,
}

impl VirtioInterrupt {
    fn new(line: Arc<dyn Interrupt>) -> Self {
        VirtioInterrupt {
            state: Arc::default(),
            line,
        }
    }

    /// Tells the driver the device put buffers in a used ring.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.state
            .status
            .fetch_or(VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        self.line.trigger()
    }

    /// Tells the driver the configuration space changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.state.config_generation.fetch_add(1, Ordering::SeqCst);
        self.state
            .status
            .fetch_or(VIRTIO_MMIO_INT_CONFIG, Ordering::SeqCst);
        self.line.trigger()
    }

    /// Tells the driver the device can no longer work until it is reset: DEVICE_NEEDS_RESET
    /// in the status, and a configuration change interrupt (virtio 1.x, 2.1.2). For devices
    /// that fail outside activation, e.g. when their backend dies.
    pub fn signal_needs_reset(&self) -> io::Result<()> {
        self.state.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config_change()
    }

    /// The pending interrupt reasons (`InterruptStatus`).
    pub fn status(&self) -> u32 {
        self.state.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.state.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.state.status.store(0, Ordering::SeqCst);
        self.state.needs_reset.store(false, Ordering::SeqCst);
    }

    fn needs_reset(&self) -> bool {
        self.state.needs_reset.load(Ordering::SeqCst)
    }

    fn config_generation(&self) -> u32 {
        self.state.config_generation.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for VirtioInterrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioInterrupt")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// One virtqueue's registers, as the driver wrote them.
#[derive(Clone, Copy, Debug, Default)]
struct QueueRegisters {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegisters {
    fn new(max_size: u16) -> Self {
        QueueRegisters {
            max_size,
            size: max_size,
            ..Default::default()
        }
    }

    /// Builds the queue the device gets; checks a ready queue lies in guest memory.
    fn to_queue<M: GuestMemory>(
        self,
        index: usize,
        mem: &M,
        event_idx: bool,
    ) -> Result<Queue, ActivateError> {
        let invalid = |source| ActivateError::InvalidQueue { index, source };
        let mut queue = Queue::new(self.max_size).map_err(invalid)?;
        if !self.ready {
            return Ok(queue);
        }
        queue.try_set_size(self.size).map_err(invalid)?;
        queue
            .try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(invalid)?;
        queue
            .try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(invalid)?;
        queue
            .try_set_used_ring_address(GuestAddress(self.device))
            .map_err(invalid)?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err(ActivateError::QueueOutsideMemory(index));
        }
        Ok(queue)
    }
}

/// Replaces the low or high half of a 64-bit register.
fn set_half(register: &mut u64, high: bool, value: u32) {
    let value = u64::from(value);
    *register = if high {
        (*register & 0xffff_ffff) | (value << 32)
    } else {
        (*register & !0xffff_ffff) | value
    };
}

/// The virtio-mmio register window of one device.
pub struct MmioTransport<D: VirtioDevice + ?Sized> {
    device: Arc<Mutex<D>>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    interrupt: VirtioInterrupt,
    activated: bool,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver acked a feature bit above 63, which no device offers.
    driver_features_overflow: bool,
    queue_sel: u32,
    queues: Vec<QueueRegisters>,
}

impl<D: VirtioDevice + ?Sized> MmioTransport<D> {
    /// Puts `device` behind a register window; `line` is the device's interrupt.
    pub fn new(
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        device: Arc<Mutex<D>>,
        line: Arc<dyn Interrupt>,
    ) -> Self {
        let queues = lock(&device)
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueRegisters::new(max))
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt: VirtioInterrupt::new(line),
            activated: false,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_overflow: false,
            queue_sel: 0,
            queues,
        }
    }

    /// The device behind the transport.
    pub fn device(&self) -> &Arc<Mutex<D>> {
        &self.device
    }

    /// The driver status (`Status` register).
    pub fn driver_status(&self) -> u32 {
        match self.interrupt.needs_reset() {
            true => self.status | NEEDS_RESET,
            false => self.status,
        }
    }

    /// Folds a device's own DEVICE_NEEDS_RESET into the status before the driver sees it.
    fn take_needs_reset(&mut self) {
        if self.interrupt.needs_reset() {
            self.status |= NEEDS_RESET;
        }
    }

    /// Whether the device was activated (DRIVER_OK accepted) and not reset since.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device's interrupt: `InterruptStatus` and the line.
    pub fn interrupt(&self) -> &VirtioInterrupt {
        &self.interrupt
    }

    fn device_features(&self) -> u64 {
        lock(&self.device).avail_features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegisters> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        self.take_needs_reset();
        if offset >= MMIO_CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - MMIO_CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 {
            warn!(
                offset,
                len = data.len(),
                "ignoring virtio-mmio register read of wrong size"
            );
            return;
        }
        let value = match offset {
            MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VERSION => MMIO_VERSION,
            DEVICE_ID => lock(&self.device).device_type(),
            VENDOR_ID => MMIO_VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            QUEUE_READY => self.selected_queue().is_some_and(|q| q.ready).into(),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status,
            CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                warn!(
                    offset,
                    "ignoring read of write-only or unknown virtio-mmio register"
                );
                return;
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.take_needs_reset();
        if offset >= MMIO_CONFIG_SPACE_OFFSET {
            if self.status & DRIVER == 0 || self.status & FAILED != 0 {
                warn!(
                    offset,
                    status = self.status,
                    "ignoring config write outside driver setup"
                );
                return;
            }
            lock(&self.device).write_config(offset - MMIO_CONFIG_SPACE_OFFSET, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn!(
                offset,
                len = data.len(),
                "ignoring virtio-mmio register write of wrong size"
            );
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM | QUEUE_READY | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW
            | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                self.write_queue_register(offset, value)
            }
            QUEUE_NOTIFY => self.notify(value),
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.write_status(value),
            MAGIC_VALUE | VERSION | DEVICE_ID | VENDOR_ID | DEVICE_FEATURES | QUEUE_NUM_MAX
            | INTERRUPT_STATUS | CONFIG_GENERATION => {
                warn!(offset, "ignoring write to read-only virtio-mmio register")
            }
            _ => warn!(offset, "ignoring write to unknown virtio-mmio register"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (DRIVER | FEATURES_OK | FAILED) != DRIVER {
            warn!(
                status = self.status,
                "ignoring driver features outside feature negotiation"
            );
            return;
        }
        match self.driver_features_sel {
            0 => set_half(&mut self.driver_features, false, value),
            1 => set_half(&mut self.driver_features, true, value),
            _ => self.driver_features_overflow |= value != 0,
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if self.status & (FEATURES_OK | DRIVER_OK | FAILED | NEEDS_RESET) != FEATURES_OK {
            warn!(
                offset,
                status = self.status,
                "ignoring virtqueue setup outside queue setup"
            );
            return;
        }
        let queue_sel = self.queue_sel;
        let Some(queue) = self.selected_queue() else {
            warn!(
                queue_sel,
                "ignoring setup of a virtqueue the device does not have"
            );
            return;
        };
        match offset {
            // Out-of-range sizes become 0, which activation refuses.
            QUEUE_NUM => queue.size = u16::try_from(value).unwrap_or(0),
            QUEUE_READY => queue.ready = value == 1,
            QUEUE_DESC_LOW => set_half(&mut queue.desc, false, value),
            QUEUE_DESC_HIGH => set_half(&mut queue.desc, true, value),
            QUEUE_DRIVER_LOW => set_half(&mut queue.driver, false, value),
            QUEUE_DRIVER_HIGH => set_half(&mut queue.driver, true, value),
            QUEUE_DEVICE_LOW => set_half(&mut queue.device, false, value),
            QUEUE_DEVICE_HIGH => set_half(&mut queue.device, true, value),
            _ => unreachable!("only queue registers are dispatched here"),
        }
    }

    fn notify(&mut self, index: u32) {
        if !self.activated {
            warn!(
                index,
                "ignoring queue notification before the device is activated"
            );
            return;
        }
        let index = index as usize;
        if index >= self.queues.len() {
            warn!(
                index,
                "ignoring notification of a virtqueue the device does not have"
            );
            return;
        }
        lock(&self.device).process_queue(index);
    }

    /// Follows the driver through ACKNOWLEDGE, DRIVER, FEATURES_OK and DRIVER_OK, one bit at
    /// a time (virtio 1.x, 3.1.1); 0 resets the device, FAILED is accepted at any point.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            warn!(
                old,
                new = value,
                "ignoring status write that clears bits without a reset"
            );
            return;
        }
        match value & !old {
            0 => {}
            FAILED => {
                warn!(status = old, "the driver gave up on the device");
                self.status = value;
            }
            ACKNOWLEDGE if old == 0 => self.status = value,
            DRIVER if old == ACKNOWLEDGE => self.status = value,
            FEATURES_OK if old == ACKNOWLEDGE | DRIVER => self.accept_features(value),
            DRIVER_OK if old == ACKNOWLEDGE | DRIVER | FEATURES_OK => {
                self.status = value;
                self.activate();
            }
            _ => warn!(
                old,
                new = value,
                "ignoring invalid driver status transition"
            ),
        }
    }

    /// Sets FEATURES_OK only if the driver took a subset of what the device offers; the
    /// driver reads the status back to learn the outcome.
    fn accept_features(&mut self, status: u32) {
        let offered = self.device_features();
        let unsupported = self.driver_features & !offered;
        if unsupported != 0 || self.driver_features_overflow {
            warn!(
                unsupported,
                "refusing FEATURES_OK: the driver acked features not offered"
            );
            return;
        }
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            warn!("refusing FEATURES_OK: a virtio-mmio version 2 driver must ack VERSION_1");
            return;
        }
        lock(&self.device).ack_features(self.driver_features);
        self.status = status;
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = {
            let mem = self.mem.memory();
            self.queues
                .iter()
                .enumerate()
                .map(|(index, regs)| regs.to_queue(index, &*mem, event_idx))
                .collect::<Result<Vec<_>, _>>()
        };
        let result = queues.and_then(|queues| {
            lock(&self.device).activate(self.mem.clone(), queues, self.interrupt.clone())
        });
        match result {
            Ok(()) => {
                debug!("virtio-mmio device activated");
                self.activated = true;
            }
            Err(e) => {
                warn!(error = %e, "cannot activate virtio device; it needs a reset");
                self.status |= NEEDS_RESET;
                if let Err(e) = self.interrupt.signal_config_change() {
                    warn!(error = %e, "cannot interrupt the driver");
                }
            }
        }
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_overflow = false;
        self.queue_sel = 0;
        for queue in &mut self.queues {
            *queue = QueueRegisters::new(queue.max_size);
        }
        self.interrupt.clear();
    }
}

impl<D: VirtioDevice + ?Sized> fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .field("activated", &self.activated)
            .field("driver_features", &self.driver_features)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// Locks a device; a panic while it was held does not stop the VM's other users of it.
fn lock<D: ?Sized>(device: &Mutex<D>) -> MutexGuard<'_, D> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::CountingInterrupt;
    use vm_memory::GuestMemoryMmap;

    const FAKE_DEVICE_TYPE: u32 = 42;
    const FAKE_FEATURES: u64 = (1 << 3) | (1 << 35);
    const MEM_SIZE: usize = 1 << 20;

    /// What activation handed the fake device, per queue: (size, ready, desc, avail, used,
    /// event_idx).
    type QueueSnapshot = (u16, bool, u64, u64, u64, bool);

    #[derive(Default)]
    struct FakeDevice {
        features: u64,
        config: Vec<u8>,
        acked: Option<u64>,
        activated: Option<Vec<QueueSnapshot>>,
        interrupt: Option<VirtioInterrupt>,
        notified: Vec<usize>,
        config_writes: Vec<(u64, Vec<u8>)>,
        resets: usize,
        refuse_activation: bool,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            FAKE_DEVICE_TYPE
        }

        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }

        fn avail_features(&self) -> u64 {
            self.features
        }

        fn ack_features(&mut self, features: u64) {
            self.acked = Some(features);
        }

        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let start = (offset as usize).min(self.config.len());
            let end = (start + data.len()).min(self.config.len());
            data[..end - start].copy_from_slice(&self.config[start..end]);
        }

        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.config_writes.push((offset, data.to_vec()));
        }

        fn activate(
            &mut self,
            _mem: GuestMemoryAtomic<GuestMemoryMmap>,
            queues: Vec<Queue>,
            interrupt: VirtioInterrupt,
        ) -> Result<(), ActivateError> {
            if self.refuse_activation {
                return Err(ActivateError::QueueNotReady {
                    device: "fake",
                    index: 1,
                    queue: "second",
                });
            }
            self.activated = Some(
                queues
                    .iter()
                    .map(|q| {
                        (
                            q.size(),
                            q.ready(),
                            q.desc_table(),
                            q.avail_ring(),
                            q.used_ring(),
                            q.event_idx_enabled(),
                        )
                    })
                    .collect(),
            );
            self.interrupt = Some(interrupt);
            Ok(())
        }

        fn process_queue(&mut self, index: usize) {
            self.notified.push(index);
        }

        fn reset(&mut self) {
            self.activated = None;
            self.interrupt = None;
            self.resets += 1;
        }
    }

    struct Fixture {
        transport: MmioTransport<FakeDevice>,
        device: Arc<Mutex<FakeDevice>>,
        line: Arc<CountingInterrupt>,
    }

    impl Fixture {
        fn new() -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
            Self::with(mem, FAKE_FEATURES)
        }

        fn with(mem: GuestMemoryMmap, features: u64) -> Self {
            let device = Arc::new(Mutex::new(FakeDevice {
                features,
                config: (1..=12).collect(),
                ..Default::default()
            }));
            let line = Arc::new(CountingInterrupt::default());
            let transport =
                MmioTransport::new(GuestMemoryAtomic::new(mem), device.clone(), line.clone());
            Fixture {
                transport,
                device,
                line,
            }
        }

        fn read(&mut self, offset: u64) -> u32 {
            let mut data = [0xffu8; 4];
            self.transport.read(offset, &mut data);
            u32::from_le_bytes(data)
        }

        fn write(&mut self, offset: u64, value: u32) {
            self.transport.write(offset, &value.to_le_bytes());
        }

        fn device(&self) -> MutexGuard<'_, FakeDevice> {
            self.device.lock().unwrap()
        }

        /// ACKNOWLEDGE, DRIVER, the given features, FEATURES_OK; returns the status read back.
        fn negotiate(&mut self, features: u64) -> u32 {
            self.write(STATUS, ACKNOWLEDGE);
            self.write(STATUS, ACKNOWLEDGE | DRIVER);
            self.write(DRIVER_FEATURES_SEL, 0);
            self.write(DRIVER_FEATURES, features as u32);
            self.write(DRIVER_FEATURES_SEL, 1);
            self.write(DRIVER_FEATURES, (features >> 32) as u32);
            self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
            self.read(STATUS)
        }

        fn setup_queue(&mut self, index: u32, size: u32, desc: u64, driver: u64, device: u64) {
            self.write(QUEUE_SEL, index);
            self.write(QUEUE_NUM, size);
            self.write(QUEUE_DESC_LOW, desc as u32);
            self.write(QUEUE_DESC_HIGH, (desc >> 32) as u32);
            self.write(QUEUE_DRIVER_LOW, driver as u32);
            self.write(QUEUE_DRIVER_HIGH, (driver >> 32) as u32);
            self.write(QUEUE_DEVICE_LOW, device as u32);
            self.write(QUEUE_DEVICE_HIGH, (device >> 32) as u32);
            self.write(QUEUE_READY, 1);
        }

        /// Negotiates VERSION_1 and EVENT_IDX, sets up both queues and sets DRIVER_OK.
        fn activate(&mut self) {
            let features = (1 << VIRTIO_F_VERSION_1) | (1 << 3);
            assert_ne!(self.negotiate(features) & FEATURES_OK, 0);
            self.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
            self.setup_queue(1, 8, 0x4000, 0x5000, 0x6000);
            self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
            assert!(self.transport.is_activated());
        }
    }

    #[test]
    fn take_queues_names_the_device_and_the_missing_queue() {
        let queue = |ready| {
            let mut queue = Queue::new(16).unwrap();
            queue.set_ready(ready);
            queue
        };
        let err = take_queues::<2>("virtio-test", vec![queue(true)], &[]).unwrap_err();
        assert!(
            matches!(
                err,
                ActivateError::QueueCount {
                    device: "virtio-test",
                    expected: 2,
                    actual: 1
                }
            ),
            "{err:?}"
        );
        let required = [(0, "rx"), (1, "tx")];
        let err = take_queues::<2>("virtio-test", vec![queue(true), queue(false)], &required)
            .unwrap_err()
            .to_string();
        assert!(err.contains("virtio-test virtqueue 1 (tx)"), "{err}");
        // A queue no one requires may stay unused.
        let [first, second] = take_queues::<2>(
            "virtio-test",
            vec![queue(true), queue(false)],
            &required[..1],
        )
        .unwrap();
        assert!(first.ready() && !second.ready());
    }

    #[test]
    fn read_config_space_copies_what_lies_inside() {
        let config = [1, 2, 3, 4];
        let mut data = [0; 4];
        read_config_space(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        let mut data = [0; 2];
        read_config_space(&config, 4, &mut data);
        read_config_space(&config, u64::MAX, &mut data);
        assert_eq!(data, [0, 0]);
    }

    #[test]
    fn identification_registers() {
        let mut f = Fixture::new();
        assert_eq!(f.read(MAGIC_VALUE), 0x7472_6976);
        assert_eq!(&f.read(MAGIC_VALUE).to_le_bytes(), b"virt");
        assert_eq!(f.read(VERSION), 2);
        assert_eq!(f.read(DEVICE_ID), FAKE_DEVICE_TYPE);
        assert_eq!(f.read(VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(f.read(STATUS), 0);
        assert_eq!(f.read(INTERRUPT_STATUS), 0);
    }

    #[test]
    fn device_features_are_selected_by_bank_and_include_version_1() {
        let mut f = Fixture::new();
        f.write(DEVICE_FEATURES_SEL, 0);
        assert_eq!(f.read(DEVICE_FEATURES), 1 << 3);
        f.write(DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            f.read(DEVICE_FEATURES),
            (1 << 3) | (1 << (VIRTIO_F_VERSION_1 - 32))
        );
        f.write(DEVICE_FEATURES_SEL, 2);
        assert_eq!(f.read(DEVICE_FEATURES), 0);
    }

    #[test]
    fn features_ok_accepts_a_subset_of_the_offer() {
        let mut f = Fixture::new();
        let features = (1 << VIRTIO_F_VERSION_1) | (1 << 35);
        let status = f.negotiate(features);
        assert_eq!(status, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(f.device().acked, Some(features));
        // Features are frozen once FEATURES_OK is set.
        f.write(DRIVER_FEATURES_SEL, 0);
        f.write(DRIVER_FEATURES, 1 << 3);
        f.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(f.device().acked, Some(features));
    }

    #[test]
    fn features_ok_is_refused_for_unsupported_features() {
        let mut f = Fixture::new();
        let status = f.negotiate((1 << VIRTIO_F_VERSION_1) | (1 << 4));
        assert_eq!(status, ACKNOWLEDGE | DRIVER);
        assert_eq!(f.device().acked, None);
        // The driver gives up; the device can still be reset and negotiated again.
        f.write(STATUS, ACKNOWLEDGE | DRIVER | FAILED);
        assert_eq!(f.read(STATUS), ACKNOWLEDGE | DRIVER | FAILED);
        f.write(STATUS, 0);
        assert_eq!(
            f.negotiate(1 << VIRTIO_F_VERSION_1) & FEATURES_OK,
            FEATURES_OK
        );
    }

    #[test]
    fn features_ok_is_refused_without_version_1_or_with_high_banks() {
        let mut f = Fixture::new();
        assert_eq!(f.negotiate(1 << 3) & FEATURES_OK, 0);

        let mut f = Fixture::new();
        f.write(STATUS, ACKNOWLEDGE);
        f.write(STATUS, ACKNOWLEDGE | DRIVER);
        f.write(DRIVER_FEATURES_SEL, 1);
        f.write(DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
        f.write(DRIVER_FEATURES_SEL, 2);
        f.write(DRIVER_FEATURES, 1);
        f.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(f.read(STATUS), ACKNOWLEDGE | DRIVER);
    }

    #[test]
    fn driver_features_before_driver_status_are_ignored() {
        let mut f = Fixture::new();
        f.write(DRIVER_FEATURES_SEL, 1);
        f.write(DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
        f.write(STATUS, ACKNOWLEDGE);
        f.write(STATUS, ACKNOWLEDGE | DRIVER);
        f.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        // VERSION_1 was written too early, so it was never acked.
        assert_eq!(f.read(STATUS), ACKNOWLEDGE | DRIVER);
    }

    #[test]
    fn status_steps_must_come_in_order() {
        let mut f = Fixture::new();
        f.write(STATUS, ACKNOWLEDGE | DRIVER);
        assert_eq!(f.read(STATUS), 0);
        f.write(STATUS, ACKNOWLEDGE);
        f.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(f.read(STATUS), ACKNOWLEDGE);
        f.write(STATUS, ACKNOWLEDGE | DRIVER);
        f.write(STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
        assert_eq!(f.read(STATUS), ACKNOWLEDGE | DRIVER);
        // Clearing a bit without a reset is not a transition.
        f.write(STATUS, DRIVER);
        assert_eq!(f.read(STATUS), ACKNOWLEDGE | DRIVER);
        assert!(!f.transport.is_activated());
    }

    #[test]
    fn queue_registers_then_driver_ok_activate_the_device() {
        let mut f = Fixture::new();
        f.write(QUEUE_SEL, 0);
        assert_eq!(f.read(QUEUE_NUM_MAX), 16);
        assert_eq!(f.read(QUEUE_READY), 0);
        f.write(QUEUE_SEL, 1);
        assert_eq!(f.read(QUEUE_NUM_MAX), 8);
        f.write(QUEUE_SEL, 2);
        assert_eq!(f.read(QUEUE_NUM_MAX), 0, "no third queue");

        let features = (1 << VIRTIO_F_VERSION_1) | (1 << 3);
        assert_ne!(f.negotiate(features) & FEATURES_OK, 0);
        f.setup_queue(0, 8, 0x1_0000, 0x1_1000, 0x1_2000);
        f.write(QUEUE_SEL, 0);
        assert_eq!(f.read(QUEUE_READY), 1);
        assert!(f.device().activated.is_none(), "not before DRIVER_OK");

        f.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(f.transport.is_activated());
        assert_eq!(
            f.read(STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        );
        let queues = f.device().activated.clone().unwrap();
        assert_eq!(
            queues,
            vec![
                (8, true, 0x1_0000, 0x1_1000, 0x1_2000, false),
                (8, false, 0, 0, 0, false),
            ]
        );
    }

    #[test]
    fn event_idx_and_high_address_halves_reach_the_queue() {
        let high = 0x2_0000_0000u64;
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MEM_SIZE),
            (GuestAddress(high), MEM_SIZE),
        ])
        .unwrap();
        let mut f = Fixture::with(mem, FAKE_FEATURES | (1 << VIRTIO_RING_F_EVENT_IDX));
        let features = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);
        assert_ne!(f.negotiate(features) & FEATURES_OK, 0);
        f.setup_queue(1, 4, high, high + 0x1000, high + 0x2000);
        f.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        let queues = f.device().activated.clone().unwrap();
        assert_eq!(
            queues[1],
            (4, true, high, high + 0x1000, high + 0x2000, true)
        );
    }

    #[test]
    fn queue_registers_outside_queue_setup_are_ignored() {
        let mut f = Fixture::new();
        // Before FEATURES_OK.
        f.write(STATUS, ACKNOWLEDGE);
        f.write(STATUS, ACKNOWLEDGE | DRIVER);
        f.write(QUEUE_SEL, 0);
        f.write(QUEUE_READY, 1);
        assert_eq!(f.read(QUEUE_READY), 0);
        f.write(STATUS, 0);

        f.activate();
        // After DRIVER_OK.
        f.write(QUEUE_SEL, 0);
        f.write(QUEUE_READY, 0);
        f.write(QUEUE_DESC_LOW, 0x8000);
        assert_eq!(f.read(QUEUE_READY), 1);
        // Setup of a queue that does not exist.
        f.write(STATUS, 0);
        assert_eq!(
            f.negotiate(1 << VIRTIO_F_VERSION_1) & FEATURES_OK,
            FEATURES_OK
        );
        f.write(QUEUE_SEL, 7);
        f.write(QUEUE_READY, 1);
        assert_eq!(f.read(QUEUE_READY), 0);
    }

    #[test]
    fn invalid_queue_setup_fails_activation_with_needs_reset() {
        let mut f = Fixture::new();
        assert_ne!(f.negotiate(1 << VIRTIO_F_VERSION_1) & FEATURES_OK, 0);
        // Not a power of two.
        f.setup_queue(0, 12, 0x1000, 0x2000, 0x3000);
        f.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(!f.transport.is_activated());
        assert_ne!(f.read(STATUS) & NEEDS_RESET, 0);
        assert_eq!(f.read(INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(f.read(CONFIG_GENERATION), 1);
        assert_eq!(f.line.count(), 1);
        assert!(f.device().activated.is_none());

        // Rings outside guest memory.
        f.write(STATUS, 0);
        assert_ne!(f.negotiate(1 << VIRTIO_F_VERSION_1) & FEATURES_OK, 0);
        f.setup_queue(0, 16, 0x1000, 0x2000, MEM_SIZE as u64);
        f.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(!f.transport.is_activated());
        assert_ne!(f.read(STATUS) & NEEDS_RESET, 0);
    }

    #[test]
    fn device_refusing_activation_needs_reset() {
        let mut f = Fixture::new();
        f.device().refuse_activation = true;
        assert_ne!(f.negotiate(1 << VIRTIO_F_VERSION_1) & FEATURES_OK, 0);
        f.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(!f.transport.is_activated());
        assert_ne!(f.read(STATUS) & NEEDS_RESET, 0);
        f.write(QUEUE_NOTIFY, 0);
        assert!(f.device().notified.is_empty());
    }

    #[test]
    fn notify_processes_the_queue_only_when_active() {
        let mut f = Fixture::new();
        f.write(QUEUE_NOTIFY, 0);
        assert!(f.device().notified.is_empty());
        f.activate();
        f.write(QUEUE_NOTIFY, 1);
        f.write(QUEUE_NOTIFY, 0);
        f.write(QUEUE_NOTIFY, 2);
        assert_eq!(f.device().notified, vec![1, 0]);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let mut f = Fixture::new();
        f.activate();
        let interrupt = f.device().interrupt.clone().unwrap();
        interrupt.signal_used_queue().unwrap();
        assert_eq!(f.read(INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
        assert_eq!(f.line.count(), 1);
        interrupt.signal_config_change().unwrap();
        assert_eq!(
            f.read(INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG
        );
        assert_eq!(f.read(CONFIG_GENERATION), 1);
        assert_eq!(f.line.count(), 2);
        f.write(INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(f.read(INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        f.write(INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(f.read(INTERRUPT_STATUS), 0);
        // The status register is read-only.
        f.write(INTERRUPT_STATUS, 3);
        assert_eq!(f.read(INTERRUPT_STATUS), 0);
    }

    #[test]
    fn a_device_failing_on_its_own_needs_a_reset() {
        let mut f = Fixture::new();
        f.activate();
        let interrupt = f.device().interrupt.clone().unwrap();
        interrupt.signal_needs_reset().unwrap();
        let status = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        assert_eq!(f.read(STATUS), status | NEEDS_RESET);
        assert_eq!(f.transport.driver_status(), status | NEEDS_RESET);
        assert_eq!(f.read(INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(f.read(CONFIG_GENERATION), 1);
        assert_eq!(f.line.count(), 1);
        // The driver may give up on it, keeping the bit...
        f.write(STATUS, status | NEEDS_RESET | FAILED);
        assert_eq!(f.read(STATUS), status | NEEDS_RESET | FAILED);
        // ...and a reset clears it, so the device can be set up again.
        f.write(STATUS, 0);
        assert_eq!(f.read(STATUS), 0);
        f.activate();
        assert_eq!(f.read(STATUS), status);
    }

    #[test]
    fn writing_zero_status_resets_everything() {
        let mut f = Fixture::new();
        f.activate();
        let interrupt = f.device().interrupt.clone().unwrap();
        interrupt.signal_used_queue().unwrap();
        let resets = f.device().resets;

        f.write(STATUS, 0);
        assert_eq!(f.device().resets, resets + 1);
        assert!(f.device().activated.is_none());
        assert!(!f.transport.is_activated());
        assert_eq!(f.read(STATUS), 0);
        assert_eq!(f.read(INTERRUPT_STATUS), 0);
        for (index, max) in [(0, 16), (1, 8)] {
            f.write(QUEUE_SEL, index);
            assert_eq!(f.read(QUEUE_READY), 0);
            assert_eq!(f.read(QUEUE_NUM_MAX), max);
        }
        f.write(QUEUE_NOTIFY, 0);
        assert!(f.device().notified.is_empty());

        // A fresh negotiation and activation work, with the reset queue defaults.
        assert_ne!(f.negotiate(1 << VIRTIO_F_VERSION_1) & FEATURES_OK, 0);
        f.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(
            f.device().activated.clone().unwrap(),
            vec![(16, false, 0, 0, 0, false), (8, false, 0, 0, 0, false)]
        );
    }

    #[test]
    fn bad_accesses_are_ignored() {
        let mut f = Fixture::new();
        // Wrong sizes.
        let mut short = [0xffu8; 2];
        f.transport.read(MAGIC_VALUE, &mut short);
        assert_eq!(short, [0, 0]);
        let mut long = [0xffu8; 8];
        f.transport.read(MAGIC_VALUE, &mut long);
        assert_eq!(long, [0; 8]);
        f.transport.write(STATUS, &[ACKNOWLEDGE as u8]);
        assert_eq!(f.read(STATUS), 0);
        // Unknown and write-only registers read as zero.
        assert_eq!(f.read(0x0b0), 0);
        assert_eq!(f.read(0x002), 0);
        assert_eq!(f.read(QUEUE_NOTIFY), 0);
        assert_eq!(f.read(DRIVER_FEATURES), 0);
        assert_eq!(f.read(QUEUE_DESC_LOW), 0);
        // Writes to read-only registers change nothing.
        f.write(MAGIC_VALUE, 0);
        f.write(DEVICE_ID, 7);
        f.write(QUEUE_NUM_MAX, 1024);
        f.write(0x0b0, 1);
        assert_eq!(f.read(MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(f.read(DEVICE_ID), FAKE_DEVICE_TYPE);
        assert_eq!(f.read(QUEUE_NUM_MAX), 16);
        // Config writes before the driver takes over are dropped.
        f.transport.write(MMIO_CONFIG_SPACE_OFFSET, &[1]);
        assert!(f.device().config_writes.is_empty());
    }

    #[test]
    fn config_space_reads_and_writes() {
        let mut f = Fixture::new();
        assert_eq!(
            f.read(MMIO_CONFIG_SPACE_OFFSET),
            u32::from_le_bytes([1, 2, 3, 4])
        );
        let mut byte = [0u8; 1];
        f.transport.read(MMIO_CONFIG_SPACE_OFFSET + 5, &mut byte);
        assert_eq!(byte, [6]);
        let mut wide = [0u8; 8];
        f.transport.read(MMIO_CONFIG_SPACE_OFFSET + 4, &mut wide);
        assert_eq!(wide, [5, 6, 7, 8, 9, 10, 11, 12]);
        // Past the end of the device's config space: zeroes.
        f.transport.read(MMIO_CONFIG_SPACE_OFFSET + 10, &mut wide);
        assert_eq!(wide, [11, 12, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f.read(MMIO_CONFIG_SPACE_OFFSET + 0x200), 0);

        f.write(STATUS, ACKNOWLEDGE);
        f.write(STATUS, ACKNOWLEDGE | DRIVER);
        f.transport.write(MMIO_CONFIG_SPACE_OFFSET + 2, &[9, 9]);
        assert_eq!(f.device().config_writes, vec![(2, vec![9, 9])]);
    }
}
