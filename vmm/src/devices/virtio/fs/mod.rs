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

/// `VIRTIO_ID_FS`.
pub const VIRTIO_ID_FS: u32 = 26;
/// The tag's field in the config space, NUL padded.
pub const TAG_LEN: usize = 36;
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
    #[error("virtio-fs tag {tag:?} is {len} bytes long: it must be 1 to {TAG_LEN} bytes (UTF-8)")]
    TagLength { tag: String, len: usize },
    #[error("virtio-fs tag {0:?} contains a NUL byte, which would end it early")]
    TagNul(String),
    #[error(
        "virtio-fs queue size {0} is not a power of two from 2 to 32768 (virtio's split rings)"
    )]
    QueueSize(u16),
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

/// Checks a tag the guest will mount the device by: 1 to 36 bytes, without NUL.
pub fn validate_tag(tag: &str) -> Result<(), FsError> {
    if tag.is_empty() || tag.len() > TAG_LEN {
        return Err(FsError::TagLength {
            tag: tag.to_owned(),
            len: tag.len(),
        });
    }
    if tag.contains('\0') {
        return Err(FsError::TagNul(tag.to_owned()));
    }
    Ok(())
}

/// Checks a virtqueue size: a power of two, at least 2 (a FUSE request and its reply are two
/// descriptors at least), at most 32768 (the largest split ring).
pub fn validate_queue_size(size: u16) -> Result<(), FsError> {
    if size < 2 || !size.is_power_of_two() || size > 32768 {
        return Err(FsError::QueueSize(size));
    }
    Ok(())
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
    }

    #[test]
    fn tags_are_1_to_36_bytes_without_nul() {
        for good in ["a", "hull", "rootfs-0", &"x".repeat(36), "é"] {
            assert!(validate_tag(good).is_ok(), "{good}");
        }
        let err = validate_tag("").unwrap_err().to_string();
        assert!(err.contains("\"\"") && err.contains("0 bytes"), "{err}");
        let long = "y".repeat(37);
        let err = validate_tag(&long).unwrap_err().to_string();
        assert!(err.contains(&long) && err.contains("37 bytes"), "{err}");
        // 18 two-byte characters: 36 bytes fit, 19 do not.
        assert!(validate_tag(&"é".repeat(18)).is_ok());
        let err = validate_tag(&"é".repeat(19)).unwrap_err().to_string();
        assert!(err.contains("38 bytes"), "{err}");
        let err = validate_tag("a\0b").unwrap_err().to_string();
        assert!(err.contains("NUL") && err.contains("a\\0b"), "{err}");
        assert!(config_space("").is_err());
    }

    #[test]
    fn queue_sizes_are_powers_of_two_up_to_32768() {
        for good in [2, 128, 512, 1024, 32768] {
            assert!(validate_queue_size(good).is_ok(), "{good}");
        }
        for bad in [0, 1, 3, 500, 65535] {
            let err = validate_queue_size(bad).unwrap_err().to_string();
            assert!(err.contains(&bad.to_string()), "{err}");
        }
    }
}
