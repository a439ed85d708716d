//! Legacy PC devices on port I/O.
//!
//! - `serial`: the 8250 UART on COM1, for early kernel output to the console log.
//! - `i8042`: the keyboard controller, present for its CPU reset line, which ends the VM.
//! - `rtc`: the CMOS real-time clock, so the guest boots knowing the time without waiting.

pub mod i8042;
pub mod rtc;
pub mod serial;

pub use i8042::{I8042Device, I8042_PORT, I8042_PORT_LEN};
pub use rtc::{CmosRtc, RTC_PORT, RTC_PORT_LEN};
pub use serial::{SerialDevice, SerialError, COM1_IRQ, COM1_PORT, SERIAL_PORT_LEN};
