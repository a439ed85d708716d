//! Hull's VMM: the built-in KVM VMM `hull-vmm` (`builder` assembles it, `jail` confines it;
//! see docs/vmm.md) and its devices (vsock, block, fs, net). The virtio-vsock device with
//! Firecracker's hybrid vsock host protocol (`devices::virtio::vsock`) is also served to QEMU
//! as a vhost-user backend; virtio-fs (`devices::virtio::fs`) is a vhost-user frontend to
//! virtiofsd.

pub mod arch;
pub mod builder;
pub use hull_vmm_api::config;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub use hull_vmm_api::host;
pub mod jail;
pub mod loader;
pub mod seccomp;
pub mod vstate;
