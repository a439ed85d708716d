//! virtio-fs (device type 26) as a vhost-user frontend to virtiofsd.
//!
//! The VMM only owns the device's identity (its tag, in the config space) and the plumbing:
//! virtiofsd maps guest RAM (a shared memfd, `vstate::memory`) and runs the queues itself.
//!
//! - `backend`: the vhost-user session with virtiofsd: the handshake and memory table at VMM
//!   start, vrings started and stopped with the driver.
//! - `device`: [`FsDevice`], the [`VirtioDevice`](super::mmio::VirtioDevice) the virtio-mmio
//!   transport drives, and the [`HostEvents`](crate::devices::HostEvents) that relay
//!   virtiofsd's interrupts and notice it going away.
//!
//! Not supported: the DAX window (a shared memory region for file contents), the
//! notification queue (`VIRTIO_FS_F_NOTIFICATION`) and more than one request queue.

mod backend;
mod device;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use device::FsDevice;
pub use hull_vmm_api::fs::{validate_queue_size, validate_tag, FsSettingError, TAG_LEN};

/// `VIRTIO_ID_FS`.
pub const VIRTIO_ID_FS: u32 = 26;
/// hiprio and one request queue.
pub const NUM_QUEUES: usize = 2;
/// `struct virtio_fs_config`: `tag[36]`, `le32 num_request_queues`. (`notify_buf_size`
/// follows only with `VIRTIO_FS_F_NOTIFICATION`, which is not offered.)
pub const CONFIG_SPACE_SIZE: usize = TAG_LEN + 4;

/// What the VMM needs to know of one virtio-fs device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// virtiofsd's vhost-user socket (`--socket-path`).
    pub socket: PathBuf,
    /// The name the guest mounts it by (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    /// The size of each virtqueue the device offers (`QueueNumMax`).
    pub queue_size: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Setting(#[from] FsSettingError),
    #[error(
        "Cannot connect to virtiofsd at {}: {source}; start virtiofsd --socket-path={} first",
        socket.display(),
        socket.display()
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("virtiofsd at {}: {request} failed: {source}", socket.display())]
    Request {
        socket: PathBuf,
        request: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("virtiofsd at {} does not offer {what}", socket.display())]
    Unsupported { socket: PathBuf, what: String },
    #[error("Guest memory at {0:#x} is not backed by a file (memfd), so virtiofsd cannot map it")]
    MemoryNotShared(u64),
    #[error(
        "virtiofsd at {} is gone: its vhost-user session is closed",
        socket.display()
    )]
    BackendGone { socket: PathBuf },
    #[error("Virtqueue {index}: its {ring} at {addr:#x} is outside guest memory")]
    RingOutsideMemory {
        index: usize,
        ring: &'static str,
        addr: u64,
    },
    #[error("Creating the virtio-fs eventfds: {0}")]
    EventFd(#[source] io::Error),
}

impl From<&hull_vmm_api::config::FsDeviceConfig> for FsConfig {
    fn from(config: &hull_vmm_api::config::FsDeviceConfig) -> Self {
        FsConfig {
            socket: config.socket.clone(),
            tag: config.tag.clone(),
            queue_size: config.queue_size,
        }
    }
}

/// The device's config space for `tag`, which must be valid.
pub fn config_space(tag: &str) -> Result<[u8; CONFIG_SPACE_SIZE], FsError> {
    validate_tag(tag)?;
    let mut config = [0u8; CONFIG_SPACE_SIZE];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    let request_queues = (NUM_QUEUES - 1) as u32;
    config[TAG_LEN..].copy_from_slice(&request_queues.to_le_bytes());
    Ok(config)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn config_space_is_the_padded_tag_then_one_request_queue() {
        let config = config_space("hullfs").unwrap();
        assert_eq!(config.len(), 40);
        assert_eq!(&config[..6], b"hullfs");
        assert_eq!(&config[6..36], &[0u8; 30][..]);
        assert_eq!(&config[36..], &[1, 0, 0, 0]);

        let longest = "a".repeat(36);
        let config = config_space(&longest).unwrap();
        assert_eq!(&config[..36], longest.as_bytes(), "no room left for a NUL");
        assert_eq!(&config[36..], &[1, 0, 0, 0]);
        assert!(config_space("").is_err());
    }
}
