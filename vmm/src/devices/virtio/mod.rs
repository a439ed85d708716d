//! Virtio devices, written against `virtio-queue` so any transport (virtio-mmio in the built-in
//! VMM, vhost-user for QEMU) can drive them.

pub mod vsock;
