//! The i8042 keyboard controller, emulated for its CPU reset line.
//!
//! Writing 0xfe to the command port (0x64), or clearing the reset bit of the output port, is
//! how a guest asks for a reset (Linux `reboot=k`); the VMM treats it as the end of the VM
//! and learns of it through an `EventFd`. The controller commands a kernel's probe uses
//! (self test, control register, output port) answer like a controller with no keyboard
//! attached, so reads return consistent values and the probe does not wait for timeouts.

use std::os::unix::io::AsRawFd;

use tracing::{debug, warn};
use vmm_sys_util::eventfd::EventFd;

/// The controller's first I/O port (data); the command/status port is 0x64.
pub const I8042_PORT: u16 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;

// Controller commands.
const CMD_READ_CONTROL: u8 = 0x20;
const CMD_WRITE_CONTROL: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KEYBOARD_TEST: u8 = 0xab;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
const KEYBOARD_TEST_PASSED: u8 = 0x00;
/// Control register: keyboard interrupt enabled, system flag (POST passed), translation.
const CONTROL_DEFAULT: u8 = 0x01 | 0x04 | 0x40;
/// Output port: bit 0 low resets the CPU, bit 1 is the A20 gate.
const OUTPUT_PORT_RESET: u8 = 0x01;
const OUTPUT_PORT_DEFAULT: u8 = OUTPUT_PORT_RESET | 0x02;

/// The controller, reached at offsets 0 (data, port 0x60) and 4 (command/status, port 0x64)
/// from [`I8042_PORT`].
#[derive(Debug)]
pub struct I8042Device {
    reset_evt: EventFd,
    control: u8,
    output_port: u8,
    /// The one-byte output buffer the guest reads from the data port.
    output: Option<u8>,
    /// A command waiting for its parameter byte on the data port.
    pending: Option<u8>,
    last_was_command: bool,
}

impl I8042Device {
    /// A controller that signals `reset_evt` when the guest resets the CPU.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042Device {
            reset_evt,
            control: CONTROL_DEFAULT,
            output_port: OUTPUT_PORT_DEFAULT,
            output: None,
            pending: None,
            last_was_command: false,
        }
    }

    /// The event signalled on a CPU reset request.
    pub fn reset_evt(&self) -> &EventFd {
        &self.reset_evt
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM_FLAG;
        if self.output.is_some() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn request_reset(&self) {
        debug!("guest requested a CPU reset through the i8042");
        if let Err(e) = self.reset_evt.write(1) {
            warn!(error = %e, fd = self.reset_evt.as_raw_fd(), "cannot signal the reset");
        }
    }

    fn command(&mut self, command: u8) {
        self.last_was_command = true;
        self.pending = None;
        match command {
            CMD_READ_CONTROL => self.output = Some(self.control),
            CMD_WRITE_CONTROL | CMD_WRITE_OUTPUT_PORT => self.pending = Some(command),
            CMD_SELF_TEST => self.output = Some(SELF_TEST_PASSED),
            CMD_KEYBOARD_TEST => self.output = Some(KEYBOARD_TEST_PASSED),
            CMD_READ_OUTPUT_PORT => self.output = Some(self.output_port),
            CMD_RESET_CPU => self.request_reset(),
            // Enabling/disabling the ports and the rest need no emulation without devices.
            _ => debug!(command, "ignoring i8042 command"),
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match self.pending.take() {
            Some(CMD_WRITE_CONTROL) => self.control = value,
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = value;
                if value & OUTPUT_PORT_RESET == 0 {
                    self.request_reset();
                }
            }
            // Bytes for the keyboard: none is attached, so nothing answers.
            _ => debug!(value, "ignoring i8042 keyboard byte"),
        }
    }

    /// A guest read at `offset` from [`I8042_PORT`]. Only byte accesses are decoded.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let [byte] = data else {
            warn!(
                offset,
                len = data.len(),
                "ignoring i8042 read of wrong size"
            );
            return;
        };
        *byte = match offset {
            DATA_OFFSET => self.output.take().unwrap_or(0),
            COMMAND_OFFSET => self.status(),
            _ => 0,
        };
    }

    /// A guest write at `offset` from [`I8042_PORT`]. Only byte accesses are decoded.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else {
            warn!(
                offset,
                len = data.len(),
                "ignoring i8042 write of wrong size"
            );
            return;
        };
        match offset {
            DATA_OFFSET => self.data(*value),
            COMMAND_OFFSET => self.command(*value),
            _ => debug!(offset, "ignoring i8042 write to an unused port"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i8042() -> (I8042Device, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042Device::new(evt.try_clone().unwrap()), evt)
    }

    fn read(dev: &mut I8042Device, offset: u64) -> u8 {
        let mut byte = [0xff];
        dev.read(offset, &mut byte);
        byte[0]
    }

    #[test]
    fn reset_command_signals_the_event() {
        let (mut dev, evt) = i8042();
        assert!(evt.read().is_err(), "no reset yet");
        dev.write(COMMAND_OFFSET, &[0x20]);
        dev.write(DATA_OFFSET, &[0xfe]);
        assert!(evt.read().is_err(), "0xfe on the data port is not a reset");
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn clearing_the_output_port_reset_bit_signals_the_event() {
        let (mut dev, evt) = i8042();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[0x03]);
        assert!(evt.read().is_err());
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[0x02]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn probe_commands_answer_through_the_output_buffer() {
        let (mut dev, _evt) = i8042();
        assert_eq!(read(&mut dev, COMMAND_OFFSET), STATUS_SYSTEM_FLAG);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0, "empty buffer reads 0");

        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(
            read(&mut dev, COMMAND_OFFSET),
            STATUS_SYSTEM_FLAG | STATUS_OUTPUT_FULL | STATUS_LAST_WAS_COMMAND
        );
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_PASSED);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);

        dev.write(COMMAND_OFFSET, &[CMD_READ_CONTROL]);
        assert_eq!(read(&mut dev, DATA_OFFSET), CONTROL_DEFAULT);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CONTROL]);
        dev.write(DATA_OFFSET, &[0x30]);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_LAST_WAS_COMMAND, 0);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CONTROL]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x30);

        dev.write(COMMAND_OFFSET, &[CMD_KEYBOARD_TEST]);
        assert_eq!(read(&mut dev, DATA_OFFSET), KEYBOARD_TEST_PASSED);
        dev.write(COMMAND_OFFSET, &[CMD_READ_OUTPUT_PORT]);
        assert_eq!(read(&mut dev, DATA_OFFSET), OUTPUT_PORT_DEFAULT);
    }

    #[test]
    fn bad_accesses_are_ignored() {
        let (mut dev, evt) = i8042();
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU, 0]);
        dev.write(COMMAND_OFFSET, &[]);
        dev.write(2, &[CMD_RESET_CPU]);
        assert!(evt.read().is_err());
        let mut wide = [0xff; 4];
        dev.read(COMMAND_OFFSET, &mut wide);
        assert_eq!(wide, [0; 4]);
        assert_eq!(read(&mut dev, 1), 0);
    }
}
