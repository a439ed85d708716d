//! The interface between hull-vmm and whoever starts it: the configuration file hull-vmm
//! reads (`config`), the host's virtualization both sides check (`host`), the rules of a
//! virtio-fs device's settings (`fs`), and the guest NIC's MAC address and tap (`net`).
//! The shim depends on this crate, not on the VMM.

pub mod config;
pub mod fs;
pub mod host;
pub mod net;
