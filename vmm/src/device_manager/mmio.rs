//! virtio-mmio devices: each gets a 4 KiB register window and an IRQ, and is announced to
//! the guest kernel with `virtio_mmio.device=4K@<addr>:<irq>` on its command line.
//!
//! The window base and the IRQ range come from the caller (the memory layout lives in
//! `arch`), so this module writes no guest address of its own.

use std::io;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::bus::{Bus, BusDevice, BusError};
use crate::devices::virtio::mmio::{MmioTransport, VirtioDevice};
use crate::devices::Interrupt;

/// Size of one device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Errors of virtio-mmio device registration.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("No IRQ left for another virtio-mmio device (all of {first}..={last} are taken)")]
    OutOfIrqs { first: u32, last: u32 },
    #[error("No room for another virtio-mmio window below {end:#x}")]
    OutOfMmioSpace { end: u64 },
    #[error("Cannot set up the interrupt for IRQ {irq}")]
    Interrupt {
        irq: u32,
        #[source]
        source: io::Error,
    },
    #[error("Cannot map the virtio-mmio window")]
    Bus(#[from] BusError),
}

/// Where one device was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Guest physical address of the register window.
    pub addr: u64,
    /// Size of the window.
    pub len: u64,
    /// The device's IRQ (GSI).
    pub irq: u32,
    /// The virtio device type.
    pub device_type: u32,
}

impl MmioDeviceInfo {
    /// The kernel command-line entry announcing the device.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.len >> 10,
            self.addr,
            self.irq
        )
    }
}

impl<D: VirtioDevice + ?Sized> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}

/// Places virtio devices on the MMIO bus.
#[derive(Debug)]
pub struct MmioDeviceManager {
    bus: Bus,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    next_addr: u64,
    /// End of the MMIO window area (exclusive).
    end: u64,
    irqs: RangeInclusive<u32>,
    next_irq: u64,
    devices: Vec<MmioDeviceInfo>,
}

impl MmioDeviceManager {
    /// Windows are allocated upwards from `mmio_base` within `mmio_size` bytes, IRQs in order
    /// from `irqs`.
    pub fn new(
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        mmio_base: u64,
        mmio_size: u64,
        irqs: RangeInclusive<u32>,
    ) -> Self {
        MmioDeviceManager {
            bus: Bus::new(),
            mem,
            next_addr: mmio_base,
            end: mmio_base.saturating_add(mmio_size),
            next_irq: u64::from(*irqs.start()),
            irqs,
            devices: Vec::new(),
        }
    }

    /// Puts `device` behind a virtio-mmio transport at the next free window and IRQ.
    /// `interrupt_for` makes the interrupt for the IRQ it is given (in the VMM: an `EventFd`
    /// registered as that GSI's irqfd). Nothing is allocated if a step fails.
    pub fn register_virtio_device<D, F>(
        &mut self,
        device: Arc<Mutex<D>>,
        interrupt_for: F,
    ) -> Result<MmioDeviceInfo, MmioError>
    where
        D: VirtioDevice + 'static,
        F: FnOnce(u32) -> io::Result<Arc<dyn Interrupt>>,
    {
        let irq = self.free_irq()?;
        let addr = self.free_window()?;
        let line = interrupt_for(irq).map_err(|source| MmioError::Interrupt { irq, source })?;
        let device_type = device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .device_type();
        let transport = MmioTransport::new(self.mem.clone(), device, line);
        self.bus
            .insert(Arc::new(Mutex::new(transport)), addr, MMIO_WINDOW_SIZE)?;

        self.next_irq += 1;
        self.next_addr = addr + MMIO_WINDOW_SIZE;
        let info = MmioDeviceInfo {
            addr,
            len: MMIO_WINDOW_SIZE,
            irq,
            device_type,
        };
        self.devices.push(info);
        Ok(info)
    }

    fn free_irq(&self) -> Result<u32, MmioError> {
        let out_of_irqs = MmioError::OutOfIrqs {
            first: *self.irqs.start(),
            last: *self.irqs.end(),
        };
        if self.irqs.is_empty() || self.next_irq > u64::from(*self.irqs.end()) {
            return Err(out_of_irqs);
        }
        u32::try_from(self.next_irq).map_err(|_| out_of_irqs)
    }

    fn free_window(&self) -> Result<u64, MmioError> {
        match self.next_addr.checked_add(MMIO_WINDOW_SIZE) {
            Some(window_end) if window_end <= self.end => Ok(self.next_addr),
            _ => Err(MmioError::OutOfMmioSpace { end: self.end }),
        }
    }

    /// The devices registered so far, in order.
    pub fn devices(&self) -> &[MmioDeviceInfo] {
        &self.devices
    }

    /// One `virtio_mmio.device=` entry per device, to append to the kernel command line.
    pub fn kernel_cmdline_entries(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(MmioDeviceInfo::cmdline_entry)
            .collect()
    }

    /// The MMIO bus holding the windows; vCPUs get a clone of it.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The MMIO bus, to map other devices next to the virtio windows.
    pub fn bus_mut(&mut self) -> &mut Bus {
        &mut self.bus
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::{ActivateError, VirtioInterrupt};
    use crate::devices::{CountingInterrupt, EventFdInterrupt};
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    const BASE: u64 = 0xd000_0000;

    /// A device with one queue that records notifications.
    struct Blinker {
        device_type: u32,
        interrupt: Option<VirtioInterrupt>,
    }

    impl VirtioDevice for Blinker {
        fn device_type(&self) -> u32 {
            self.device_type
        }

        fn queue_max_sizes(&self) -> &[u16] {
            &[4]
        }

        fn avail_features(&self) -> u64 {
            0
        }

        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0x5a);
        }

        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

        fn activate(
            &mut self,
            _mem: GuestMemoryAtomic<GuestMemoryMmap>,
            _queues: Vec<Queue>,
            interrupt: VirtioInterrupt,
        ) -> Result<(), ActivateError> {
            self.interrupt = Some(interrupt);
            Ok(())
        }

        fn process_queue(&mut self, _index: usize) {
            if let Some(interrupt) = &self.interrupt {
                interrupt.signal_used_queue().unwrap();
            }
        }

        fn reset(&mut self) {
            self.interrupt = None;
        }
    }

    fn blinker(device_type: u32) -> Arc<Mutex<Blinker>> {
        Arc::new(Mutex::new(Blinker {
            device_type,
            interrupt: None,
        }))
    }

    fn manager(mmio_size: u64, irqs: RangeInclusive<u32>) -> MmioDeviceManager {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        MmioDeviceManager::new(GuestMemoryAtomic::new(mem), BASE, mmio_size, irqs)
    }

    fn counting(_irq: u32) -> io::Result<Arc<dyn Interrupt>> {
        Ok(Arc::new(CountingInterrupt::default()))
    }

    #[test]
    fn windows_and_irqs_are_allocated_in_order_with_cmdline_entries() {
        let mut manager = manager(0x10_0000, 5..=23);
        let first = manager
            .register_virtio_device(blinker(19), counting)
            .unwrap();
        let second = manager
            .register_virtio_device(blinker(26), counting)
            .unwrap();
        assert_eq!(
            first,
            MmioDeviceInfo {
                addr: 0xd000_0000,
                len: 0x1000,
                irq: 5,
                device_type: 19
            }
        );
        assert_eq!((second.addr, second.irq), (0xd000_1000, 6));
        assert_eq!(manager.devices(), &[first, second]);
        assert_eq!(
            manager.kernel_cmdline_entries(),
            vec![
                "virtio_mmio.device=4K@0xd0000000:5",
                "virtio_mmio.device=4K@0xd0001000:6"
            ]
        );
    }

    #[test]
    fn the_bus_reaches_each_transport() {
        let mut manager = manager(0x10_0000, 5..=23);
        manager
            .register_virtio_device(blinker(19), counting)
            .unwrap();
        manager
            .register_virtio_device(blinker(26), counting)
            .unwrap();
        let bus = manager.bus().clone();
        let mut data = [0u8; 4];
        assert!(bus.read(BASE, &mut data));
        assert_eq!(&data, b"virt");
        assert!(bus.read(BASE + 0x1008, &mut data));
        assert_eq!(u32::from_le_bytes(data), 26);
        assert!(bus.read(BASE + 0x1100, &mut data));
        assert_eq!(data, [0x5a; 4]);
        assert!(!bus.read(BASE + 0x2000, &mut data));
    }

    #[test]
    fn running_out_of_irqs_is_an_error_and_allocates_nothing() {
        let mut manager = manager(0x10_0000, 5..=23);
        for irq in 5..=23 {
            let info = manager
                .register_virtio_device(blinker(19), counting)
                .unwrap();
            assert_eq!(info.irq, irq);
        }
        let err = manager
            .register_virtio_device(blinker(19), counting)
            .unwrap_err();
        assert!(matches!(err, MmioError::OutOfIrqs { first: 5, last: 23 }));
        assert_eq!(manager.devices().len(), 19);
        assert_eq!(manager.kernel_cmdline_entries().len(), 19);

        let mut empty = manager_with_irqs(RangeInclusive::new(7, 6));
        assert!(matches!(
            empty.register_virtio_device(blinker(19), counting),
            Err(MmioError::OutOfIrqs { .. })
        ));
        let mut top = manager_with_irqs(u32::MAX..=u32::MAX);
        assert_eq!(
            top.register_virtio_device(blinker(19), counting)
                .unwrap()
                .irq,
            u32::MAX
        );
        assert!(matches!(
            top.register_virtio_device(blinker(19), counting),
            Err(MmioError::OutOfIrqs { .. })
        ));
    }

    fn manager_with_irqs(irqs: RangeInclusive<u32>) -> MmioDeviceManager {
        manager(0x10_0000, irqs)
    }

    #[test]
    fn running_out_of_mmio_space_is_an_error() {
        let mut manager = manager(0x2800, 5..=23);
        manager
            .register_virtio_device(blinker(19), counting)
            .unwrap();
        manager
            .register_virtio_device(blinker(19), counting)
            .unwrap();
        assert!(matches!(
            manager.register_virtio_device(blinker(19), counting),
            Err(MmioError::OutOfMmioSpace { end: 0xd000_2800 })
        ));
    }

    #[test]
    fn a_failed_interrupt_or_a_taken_window_allocates_nothing() {
        let mut manager = manager(0x10_0000, 5..=23);
        let err = manager
            .register_virtio_device(blinker(19), |_| Err(io::Error::other("no irqfd")))
            .unwrap_err();
        assert!(matches!(err, MmioError::Interrupt { irq: 5, .. }));

        // Something else already sits where the next window would go.
        struct Rom;
        impl BusDevice for Rom {
            fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
            fn write(&mut self, _offset: u64, _data: &[u8]) {}
        }
        manager
            .bus_mut()
            .insert(Arc::new(Mutex::new(Rom)), BASE, 0x10)
            .unwrap();
        assert!(matches!(
            manager.register_virtio_device(blinker(19), counting),
            Err(MmioError::Bus(BusError::Overlap { .. }))
        ));
        assert!(manager.devices().is_empty());
    }

    #[test]
    fn the_device_interrupt_comes_from_the_callback() {
        let mut manager = manager(0x10_0000, 5..=23);
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irqfd = evt.try_clone().unwrap();
        let mut seen_irq = None;
        manager
            .register_virtio_device(blinker(19), |irq| {
                seen_irq = Some(irq);
                Ok(Arc::new(EventFdInterrupt::new(irqfd)))
            })
            .unwrap();
        assert_eq!(seen_irq, Some(5));

        // Drive the device to DRIVER_OK over the bus and notify its queue.
        let bus = manager.bus().clone();
        let write =
            |offset: u64, value: u32| assert!(bus.write(BASE + offset, &value.to_le_bytes()));
        write(0x070, 1);
        write(0x070, 3);
        write(0x024, 1);
        write(0x020, 1);
        write(0x070, 0xb);
        write(0x070, 0xf);
        assert!(evt.read().is_err(), "no interrupt yet");
        write(0x050, 0);
        assert_eq!(evt.read().unwrap(), 1);
        let mut status = [0u8; 4];
        assert!(bus.read(BASE + 0x060, &mut status));
        assert_eq!(u32::from_le_bytes(status), 1);
    }
}
