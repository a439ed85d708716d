//! The 8250/16550A UART on COM1, emulated by `vm-superio`.
//!
//! Guest output goes to any `Write` (the VMM's console log); host input is queued with
//! [`SerialDevice::enqueue_input`]. The interrupt is raised through [`Interrupt`].

use std::io::{self, Write};
use std::sync::Arc;

use tracing::warn;
use vm_superio::serial::{Error as UartError, NoEvents};
use vm_superio::{Serial, Trigger};

use crate::devices::Interrupt;

/// COM1's I/O port base.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IRQ line.
pub const COM1_IRQ: u32 = 4;
/// Number of ports the UART decodes.
pub const SERIAL_PORT_LEN: u64 = 8;

/// Errors of the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("The serial input FIFO is full")]
    InputFull,
    #[error("Cannot raise the serial interrupt")]
    Interrupt(#[source] io::Error),
}

/// Adapts an [`Interrupt`] to `vm-superio`'s trigger.
struct IrqTrigger(Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// The UART, reached at offsets 0..8 from [`COM1_PORT`].
pub struct SerialDevice<W: Write> {
    uart: Serial<IrqTrigger, NoEvents, W>,
    /// Whether the output already failed once; later failures are not logged again.
    output_failed: bool,
}

impl<W: Write> SerialDevice<W> {
    /// A UART writing guest output to `out` and raising `interrupt`.
    pub fn new(interrupt: Arc<dyn Interrupt>, out: W) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(interrupt), out),
            output_failed: false,
        }
    }

    /// A guest read at `offset` from the port base. Only byte accesses are decoded.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) if u64::from(offset) < SERIAL_PORT_LEN => {
                *byte = self.uart.read(offset)
            }
            (_, data) => warn!(offset, len = data.len(), "ignoring bad serial read"),
        }
    }

    /// A guest write at `offset` from the port base. Only byte accesses are decoded.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), [value]) = (u8::try_from(offset), data) else {
            warn!(offset, len = data.len(), "ignoring bad serial write");
            return;
        };
        if u64::from(offset) >= SERIAL_PORT_LEN {
            warn!(offset, "ignoring serial write past the UART's ports");
            return;
        }
        match self.uart.write(offset, *value) {
            Ok(()) => {}
            Err(UartError::IOError(e)) => {
                // The guest cannot be blocked on a full or broken log: drop the byte.
                if !self.output_failed {
                    warn!(error = %e, "serial output failed; dropping guest output");
                    self.output_failed = true;
                }
            }
            Err(e) => warn!(error = %e, "serial write failed"),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> Result<usize, SerialError> {
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => Ok(n),
            Err(UartError::FullFifo) => Err(SerialError::InputFull),
            Err(UartError::Trigger(e)) => Err(SerialError::Interrupt(e)),
            Err(UartError::IOError(e)) => Err(SerialError::Interrupt(e)),
        }
    }

    /// Where guest output goes.
    pub fn writer(&self) -> &W {
        self.uart.writer()
    }
}

impl<W: Write> std::fmt::Debug for SerialDevice<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice")
            .field("output_failed", &self.output_failed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::CountingInterrupt;

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LSR_DATA_READY: u8 = 0x01;
    const LSR_THR_EMPTY: u8 = 0x20;

    fn serial() -> (SerialDevice<Vec<u8>>, Arc<CountingInterrupt>) {
        let irq = Arc::new(CountingInterrupt::default());
        (SerialDevice::new(irq.clone(), Vec::new()), irq)
    }

    fn read(serial: &mut SerialDevice<Vec<u8>>, offset: u64) -> u8 {
        read_any(serial, offset)
    }

    fn read_any<W: Write>(serial: &mut SerialDevice<W>, offset: u64) -> u8 {
        let mut byte = [0xff];
        serial.read(offset, &mut byte);
        byte[0]
    }

    #[test]
    fn output_reaches_the_writer_and_raises_the_irq_when_enabled() {
        let (mut serial, irq) = serial();
        serial.write(DATA, b"h");
        assert_eq!(irq.count(), 0, "THR-empty interrupt is disabled");
        serial.write(IER, &[IER_THRE]);
        assert_eq!(irq.count(), 1, "enabling THRE with an empty THR interrupts");
        // The pending interrupt is THR empty (IIR id 0b001 in bits 1..3); reading IIR acks it.
        assert_eq!(read(&mut serial, IIR) & 0x0f, 0x02);
        assert_eq!(read(&mut serial, IIR) & 0x0f, 0x01, "no interrupt pending");
        serial.write(DATA, b"i");
        assert_eq!(irq.count(), 2);
        // Not acked yet: no new edge.
        serial.write(DATA, b"!");
        assert_eq!(irq.count(), 2);
        assert_eq!(read(&mut serial, IIR) & 0x0f, 0x02);
        serial.write(DATA, b"\n");
        assert_eq!(irq.count(), 3);
        assert_eq!(serial.writer(), b"hi!\n");
        assert_ne!(read(&mut serial, LSR) & LSR_THR_EMPTY, 0);
    }

    #[test]
    fn input_is_read_back_and_raises_the_irq() {
        let (mut serial, irq) = serial();
        serial.write(IER, &[IER_RDA]);
        assert_eq!(serial.enqueue_input(b"ok").unwrap(), 2);
        assert_eq!(irq.count(), 1);
        assert_ne!(read(&mut serial, LSR) & LSR_DATA_READY, 0);
        assert_eq!(read(&mut serial, DATA), b'o');
        assert_eq!(read(&mut serial, DATA), b'k');
        assert_eq!(read(&mut serial, LSR) & LSR_DATA_READY, 0);
        let fifo = vec![b'x'; 64];
        assert_eq!(serial.enqueue_input(&fifo).unwrap(), 64);
        assert!(matches!(
            serial.enqueue_input(b"y"),
            Err(SerialError::InputFull)
        ));
    }

    #[test]
    fn bad_accesses_are_ignored() {
        let (mut serial, irq) = serial();
        serial.write(LCR, &[0x03]);
        serial.write(DATA, b"ab");
        serial.write(SERIAL_PORT_LEN, b"a");
        serial.write(u64::MAX, b"a");
        assert!(serial.writer().is_empty());
        let mut wide = [0xff; 2];
        serial.read(LCR, &mut wide);
        assert_eq!(wide, [0, 0]);
        assert_eq!(read(&mut serial, LCR), 0x03);
        assert_eq!(read(&mut serial, 0x100), 0);
        assert_eq!(irq.count(), 0);
    }

    /// A writer that always fails, like a log on a full disk.
    struct BrokenLog;

    impl Write for BrokenLog {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failing_output_does_not_stop_the_guest() {
        let irq = Arc::new(CountingInterrupt::default());
        let mut serial = SerialDevice::new(irq.clone(), BrokenLog);
        serial.write(IER, &[IER_THRE]);
        assert_eq!(read_any(&mut serial, IIR) & 0x0f, 0x02);
        serial.write(DATA, b"x");
        assert!(serial.output_failed);
        // The THR still drains, so the guest's driver keeps going.
        assert_eq!(irq.count(), 2);
        assert_eq!(read_any(&mut serial, IIR) & 0x0f, 0x02);
        serial.write(DATA, b"y");
        assert_eq!(irq.count(), 3);
    }
}
