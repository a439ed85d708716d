//! The host side of a guest NIC as hull-vmm and the shim share it: the guest's MAC address
//! and the Linux tap it sends and receives on. The shim creates a pod's tap (in the pod's
//! network namespace) with [`attach_tap`] and passes it to the VMM, which opens a tap by
//! name through the same function.

mod mac;

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::ioctl_with_mut_ref;

pub use mac::{MacAddress, MacAddressError};

/// Where taps are made.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The size of the `virtio_net_hdr_v1` in front of every frame on a tap with
/// [`TapHeader::VirtioNet`].
pub const VNET_HDR_SIZE: usize = 12;

/// What frames on a tap carry in front of them. It is fixed when the tap is attached, so it
/// is the VMM's choice: hull-vmm reads a virtio-net header, QEMU (handed the tap without
/// `vnet_hdr`) bare frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapHeader {
    None,
    VirtioNet,
}

/// Errors of opening a tap. Each names the tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("Tap name {0:?} is not a valid interface name: 1 to 15 bytes, without '/', ':' or whitespace")]
    InvalidName(String),
    #[error("Opening tap device {name}: {TUN_PATH}: {source}")]
    OpenTun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("Opening tap device {name}: TUNSETIFF failed (an existing interface of that name must be a tap without multiqueue; creating a tap, or attaching to one owned by another user, needs CAP_NET_ADMIN): {source}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("Opening tap device {name}: setting its {what}: {source}")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("Tap fd {fd} is not open in hull-vmm: its caller must pass the tap it opened as descriptor {fd}: {source}")]
    NotOpen {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("Tap fd {fd} is not a tap: TUNGETIFF failed (pass a /dev/net/tun descriptor attached to a tap with TUNSETIFF): {source}")]
    NotATap {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("Tap fd {fd} ({name}) lacks {missing}: attach it with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, which cannot be changed once attached")]
    Flags {
        fd: RawFd,
        name: String,
        missing: String,
    },
}

/// The flags a tap needs: Ethernet frames, no packet information, a virtio-net header.
pub const REQUIRED_TAP_FLAGS: [(libc::c_int, &str); 3] = [
    (libc::IFF_TAP, "IFF_TAP"),
    (libc::IFF_NO_PI, "IFF_NO_PI"),
    (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
];

/// Checks `name` as the kernel checks an interface name (`dev_valid_name`).
pub fn check_tap_name(name: &str) -> Result<(), TapError> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(TapError::InvalidName(name.to_owned()))
    }
}

/// Attaches to the tap `name` in the calling thread's network namespace, creating it if it
/// does not exist: `IFF_TAP | IFF_NO_PI`, with `IFF_VNET_HDR` as `header` says. The
/// descriptor is close-on-exec and blocking.
pub fn attach_tap(name: &str, header: TapHeader) -> Result<OwnedFd, TapError> {
    check_tap_name(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(|source| TapError::OpenTun {
            name: name.to_owned(),
            source,
        })?;
    // SAFETY: all zeroes is a valid ifreq (a name and a union of plain integers).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    let flags = match header {
        TapHeader::None => libc::IFF_TAP | libc::IFF_NO_PI,
        TapHeader::VirtioNet => libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
    };
    request.ifr_ifru.ifru_flags = flags as _;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call; the name
    // is NUL-terminated since check_tap_name kept it below IFNAMSIZ bytes.
    if unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as _, &mut request) } < 0 {
        return Err(TapError::Attach {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_as_the_kernel_does() {
        for good in ["tap0", "a", "hull-tap.1_x", "fifteen-chars-x"] {
            assert!(check_tap_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-chars-xx",
            "a/b",
            "a:1",
            "a b",
            "tab\t",
            "nul\0",
        ] {
            let err = check_tap_name(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn bad_names_fail_before_touching_the_tun_device() {
        let err = attach_tap("no/slash", TapHeader::None).unwrap_err();
        assert!(matches!(err, TapError::InvalidName(_)), "{err}");
    }
}
