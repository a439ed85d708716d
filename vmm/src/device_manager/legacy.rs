//! The legacy devices on the port I/O bus: COM1, the i8042 and the CMOS RTC.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::bus::{Bus, BusDevice, BusError};
use crate::devices::legacy::{
    CmosRtc, I8042Device, SerialDevice, COM1_PORT, I8042_PORT, I8042_PORT_LEN, RTC_PORT,
    RTC_PORT_LEN, SERIAL_PORT_LEN,
};
use crate::devices::Interrupt;

/// Errors of legacy device setup.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("Cannot map a legacy device on the port I/O bus")]
    Bus(#[from] BusError),
}

/// Where guest serial output goes (the VMM's console log).
pub type SerialOutput = Box<dyn Write + Send>;

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        SerialDevice::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        SerialDevice::write(self, offset, data);
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        I8042Device::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        I8042Device::write(self, offset, data);
    }
}

impl BusDevice for CmosRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        CmosRtc::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        CmosRtc::write(self, offset, data);
    }
}

/// COM1, the i8042 and the CMOS RTC on their own port I/O bus.
#[derive(Debug)]
pub struct LegacyDeviceManager {
    io_bus: Bus,
    serial: Arc<Mutex<SerialDevice<SerialOutput>>>,
    i8042: Arc<Mutex<I8042Device>>,
}

impl LegacyDeviceManager {
    /// COM1 at 0x3f8 writing to `serial_out` and raising `serial_interrupt` (IRQ 4), and the
    /// i8042 at 0x60..=0x64 signalling `reset_evt` when the guest resets the CPU, and the RTC
    /// at 0x70..=0x71.
    pub fn new(
        serial_out: SerialOutput,
        serial_interrupt: Arc<dyn Interrupt>,
        reset_evt: EventFd,
    ) -> Result<Self, LegacyError> {
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_interrupt, serial_out)));
        let i8042 = Arc::new(Mutex::new(I8042Device::new(reset_evt)));
        let mut io_bus = Bus::new();
        io_bus.insert(serial.clone(), u64::from(COM1_PORT), SERIAL_PORT_LEN)?;
        io_bus.insert(i8042.clone(), u64::from(I8042_PORT), I8042_PORT_LEN)?;
        io_bus.insert(
            Arc::new(Mutex::new(CmosRtc::new())),
            u64::from(RTC_PORT),
            RTC_PORT_LEN,
        )?;
        Ok(LegacyDeviceManager {
            io_bus,
            serial,
            i8042,
        })
    }

    /// The port I/O bus; vCPUs get a clone of it.
    pub fn io_bus(&self) -> &Bus {
        &self.io_bus
    }

    /// The port I/O bus, to map other port devices.
    pub fn io_bus_mut(&mut self) -> &mut Bus {
        &mut self.io_bus
    }

    /// COM1, for host input (`enqueue_input`).
    pub fn serial(&self) -> &Arc<Mutex<SerialDevice<SerialOutput>>> {
        &self.serial
    }

    /// The i8042.
    pub fn i8042(&self) -> &Arc<Mutex<I8042Device>> {
        &self.i8042
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::devices::legacy::COM1_IRQ;
    use crate::devices::CountingInterrupt;

    /// A `Write` whose bytes the test can still see after handing it over.
    #[derive(Clone, Default)]
    struct SharedLog(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedLog {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_port_io_reaches_the_serial_log_and_the_reset_event() {
        let log = SharedLog::default();
        let irq = Arc::new(CountingInterrupt::default());
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let manager = LegacyDeviceManager::new(
            Box::new(log.clone()),
            irq.clone(),
            reset.try_clone().unwrap(),
        )
        .unwrap();
        assert_eq!(COM1_IRQ, 4);
        let bus = manager.io_bus().clone();

        assert!(bus.write(0x3f9, &[0x02]), "IER: THR empty");
        let mut iir = [0u8];
        for byte in b"boot ok\n" {
            // Like a driver: take the THR-empty interrupt (reading IIR), then send a byte.
            assert!(bus.read(0x3fa, &mut iir));
            assert_eq!(iir[0] & 0x0f, 0x02);
            assert!(bus.write(0x3f8, &[*byte]));
        }
        assert_eq!(log.0.lock().unwrap().as_slice(), b"boot ok\n");
        assert_eq!(irq.count(), 9);

        assert!(reset.read().is_err());
        let mut status = [0u8];
        assert!(bus.read(0x64, &mut status));
        assert_eq!(status[0] & 0x01, 0, "output buffer empty");
        assert!(bus.write(0x64, &[0xfe]));
        assert_eq!(reset.read().unwrap(), 1);

        // The RTC: status D says the clock is valid; no update is ever in progress.
        assert!(bus.write(0x70, &[0x0d]));
        assert!(bus.read(0x71, &mut status));
        assert_eq!(status[0], 0x80);
        assert!(bus.write(0x70, &[0x0a]));
        assert!(bus.read(0x71, &mut status));
        assert_eq!(status[0] & 0x80, 0);

        assert!(!bus.write(0x3f0, &[0]), "nothing at 0x3f0");
        assert!(!bus.read(0x65, &mut status), "nothing at 0x65");
    }
}
