//! Virtio devices, written against `virtio-queue` so any transport (virtio-mmio in the built-in
//! VMM, vhost-user for QEMU) can drive them.
//!
//! - `mmio`: the virtio-mmio transport and the [`mmio::VirtioDevice`] trait devices implement
//!   for it.
//! - `balloon`: virtio-balloon for free page reporting only.
//! - `block`: virtio-blk on a raw image file.
//! - `fs`: virtio-fs, a vhost-user frontend to virtiofsd.
//! - `net`: virtio-net on a tap.
//! - `vsock`: virtio-vsock with hybrid vsock.

pub mod balloon;
pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod vsock;
