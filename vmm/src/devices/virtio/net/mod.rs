//! virtio-net (device type 1) over a Linux tap.
//!
//! - `frame`: one frame between a descriptor chain and the tap (the virtio-net header, the
//!   checks on a chain).
//! - `tap`: opening a tap through `/dev/net/tun`, reading and writing frames.
//! - `device`: the [`NetDevice`] the virtio-mmio transport drives.
//!
//! One queue pair, no offloads, no control queue, no rate limiting.

mod device;
pub mod frame;
#[cfg(test)]
mod netns_tests;
mod tap;

pub use device::{NetDevice, RX_QUEUE, TX_QUEUE};
pub use hull_vmm_api::net::{MacAddress, MacAddressError};
pub use tap::{check_tap_name, Tap, TapError};
