//! Puts devices where the guest can reach them.
//!
//! - `bus`: address ranges (MMIO) and port ranges (PIO) mapped to devices.
//! - `mmio`: virtio-mmio devices, each with a 4 KiB window, an IRQ and a kernel command-line
//!   entry.
//! - `legacy`: the serial port and the i8042 on the port I/O bus.

pub mod bus;
pub mod legacy;
pub mod mmio;

pub use bus::{Bus, BusDevice, BusError};
pub use legacy::{LegacyDeviceManager, LegacyError};
pub use mmio::{MmioDeviceInfo, MmioDeviceManager, MmioError, MMIO_WINDOW_SIZE};
