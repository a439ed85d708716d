//! Hull's VMM building blocks.
//!
//! Today this is the virtio-vsock device with Firecracker's hybrid vsock host protocol
//! (`devices::virtio::vsock`), served to QEMU as a vhost-user backend. The device core only
//! touches `virtio-queue` and `vm-memory` types so the built-in VMM can drive the same code
//! through virtio-mmio.

pub mod arch;
pub mod builder;
pub mod config;
pub mod device_manager;
pub mod devices;
pub mod host;
pub mod jail;
pub mod loader;
pub mod seccomp;
pub mod vstate;
