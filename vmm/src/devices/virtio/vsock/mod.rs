//! virtio-vsock with Firecracker's hybrid vsock host protocol.
//!
//! - `packet`: the packet header and scatter-gather transfer through descriptor chains.
//! - `connection`: one guest socket bridged to one host Unix stream (handshake, credit,
//!   half-close).
//! - `muxer`: the hybrid vsock Unix sockets and the connection table.
//! - `device`: the virtqueues, independent of the transport.
//! - `vhost_user`: serves the device to QEMU as a `vhost-user-vsock-device` backend.
//! - `mmio_adapter`: the device as a `VirtioDevice` for the built-in VMM's virtio-mmio transport.

mod connection;
mod device;
mod mmio_adapter;
mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;
mod vhost_user;

use std::path::PathBuf;

pub use device::{
    check_guest_cid, DeviceError, VsockDevice, EVENT_QUEUE, NUM_QUEUES, RX_QUEUE, TX_QUEUE,
};
pub use mmio_adapter::VsockMmioDevice;
pub use muxer::MuxerError;
pub use vhost_user::{
    serve_vhost_user, serve_vhost_user_on, VsockBackendError, VsockBackendHandle,
};

/// The host's context id.
pub const HOST_CID: u64 = 2;

/// Configuration of one VM's vsock device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or higher).
    pub guest_cid: u64,
    /// Hybrid vsock Unix socket: host clients connect here and write `CONNECT <port>\n`;
    /// guest connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}
