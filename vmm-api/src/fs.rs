//! What a virtio-fs device may be configured with: the tag the guest mounts it by and the
//! size of its queues. hull-vmm's device and its configuration file check the same rules.

/// The tag's field in the device's config space, NUL padded.
pub const TAG_LEN: usize = 36;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsSettingError {
    #[error("virtio-fs tag {tag:?} is {len} bytes long: it must be 1 to {TAG_LEN} bytes (UTF-8)")]
    TagLength { tag: String, len: usize },
    #[error("virtio-fs tag {0:?} contains a NUL byte, which would end it early")]
    TagNul(String),
    #[error(
        "virtio-fs queue size {0} is not a power of two from 2 to 32768 (virtio's split rings)"
    )]
    QueueSize(u16),
}

/// Checks a tag the guest will mount the device by: 1 to 36 bytes, without NUL.
pub fn validate_tag(tag: &str) -> Result<(), FsSettingError> {
    if tag.is_empty() || tag.len() > TAG_LEN {
        return Err(FsSettingError::TagLength {
            tag: tag.to_owned(),
            len: tag.len(),
        });
    }
    if tag.contains('\0') {
        return Err(FsSettingError::TagNul(tag.to_owned()));
    }
    Ok(())
}

/// Checks a virtqueue size: a power of two, at least 2 (a FUSE request and its reply are two
/// descriptors at least), at most 32768 (the largest split ring).
pub fn validate_queue_size(size: u16) -> Result<(), FsSettingError> {
    if size < 2 || !size.is_power_of_two() || size > 32768 {
        return Err(FsSettingError::QueueSize(size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
