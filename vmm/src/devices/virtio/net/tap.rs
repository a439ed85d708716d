//! The host side of a net device: a Linux tap, opened by name through `/dev/net/tun`, or
//! passed in already open by whoever started the VMM.
//!
//! The tap is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte
//! `virtio_net_hdr_v1` in front of every frame (`TUNSETVNETHDRSZ`), no offloads
//! (`TUNSETOFFLOAD` 0: the kernel hands over whole frames with their checksums done) and a
//! non-blocking fd. One `read` returns one frame, one `writev` sends one.
//!
//! Attaching to an existing tap needs to be its owner or to hold CAP_NET_ADMIN; a name that
//! does not exist yet creates a tap that goes away with the fd (that needs CAP_NET_ADMIN).
//! Either way it happens before the VMM drops its capabilities.
//!
//! A passed tap ([`Tap::from_fd`]) lives wherever its opener put it, in another network
//! namespace too (a pod's). Its flags are fixed when it was attached, so it must already
//! have `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`; the header size, the offloads, non-blocking
//! mode and close-on-exec are set here as for a tap opened by name. Non-blocking mode is a
//! property of the open file, so the opener's copy of the descriptor becomes non-blocking too.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use super::frame::VNET_HDR_SIZE;

const TUN_PATH: &str = "/dev/net/tun";

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
const REQUIRED_FLAGS: [(libc::c_int, &str); 3] = [
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

/// An open tap: frames, each behind a `virtio_net_hdr_v1`.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or creates) the tap called `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        check_tap_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
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
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call; the name
        // is NUL-terminated since check_tap_name kept it below IFNAMSIZ bytes.
        if unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF as _, &mut request) } < 0 {
            return Err(TapError::Attach {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        Self::configure(file, name.to_owned())
    }

    /// Takes over the tap open as descriptor `fd`, which this process inherited (see the
    /// module comment). It is checked before it is taken: a descriptor that is not an open
    /// tap stays untouched.
    pub fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: F_GETFD only reads the descriptor table; any number is fine to ask about.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::NotOpen {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: all zeroes is a valid ifreq.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one ifreq, which lives across the call; on a descriptor
        // that is not a tun file the kernel refuses it without touching anything.
        if unsafe { libc::ioctl(fd, libc::TUNGETIFF as _, &mut request) } < 0 {
            return Err(TapError::NotATap {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        let name: String = request
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        // SAFETY: TUNGETIFF filled the flags member.
        let flags = libc::c_int::from(unsafe { request.ifr_ifru.ifru_flags });
        let missing: Vec<&str> = REQUIRED_FLAGS
            .iter()
            .filter(|(flag, _)| flags & flag == 0)
            .map(|(_, label)| *label)
            .collect();
        if !missing.is_empty() {
            return Err(TapError::Flags {
                fd,
                name,
                missing: missing.join(" and "),
            });
        }
        // SAFETY: the descriptor is open, is a tap, and was passed to this process for the
        // device alone (the configuration names each descriptor once): it is ours to own.
        let file = unsafe { File::from_raw_fd(fd) };
        let configure_error = |what| {
            let name = name.clone();
            move |source| TapError::Configure { name, what, source }
        };
        set_fd_flags(&file, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)
            .map_err(configure_error("close-on-exec flag"))?;
        set_fd_flags(&file, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK)
            .map_err(configure_error("non-blocking mode"))?;
        Self::configure(file, name)
    }

    /// The header size and offloads every tap gets.
    fn configure(file: File, name: String) -> Result<Self, TapError> {
        let configure = |what, rc| match rc {
            rc if rc < 0 => Err(TapError::Configure {
                name: name.clone(),
                what,
                source: io::Error::last_os_error(),
            }),
            _ => Ok(()),
        };
        let header_size = VNET_HDR_SIZE as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which lives across the call.
        configure("virtio-net header size", unsafe {
            ioctl_with_ref(&file, libc::TUNSETVNETHDRSZ as _, &header_size)
        })?;
        // SAFETY: TUNSETOFFLOAD takes its flags by value.
        configure("offloads", unsafe {
            ioctl_with_val(&file, libc::TUNSETOFFLOAD as _, 0)
        })?;
        Ok(Tap { file, name })
    }

    /// A stand-in for a tap in tests: one end of a `SOCK_SEQPACKET` pair keeps frame
    /// boundaries as a tap does, through the same `read` and `writev`.
    #[cfg(test)]
    pub(crate) fn from_seqpacket(socket: std::os::fd::OwnedFd, name: &str) -> Self {
        Tap {
            file: File::from(socket),
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame, header first, into `buf`; `WouldBlock` when none is waiting.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Sends `header` and `frame` as one frame.
    pub fn write_frame(&self, header: &[u8], frame: &[u8]) -> io::Result<()> {
        let expected = header.len() + frame.len();
        let written = (&self.file).write_vectored(&[IoSlice::new(header), IoSlice::new(frame)])?;
        if written != expected {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the tap took {written} of {expected} bytes"),
            ));
        }
        Ok(())
    }
}

/// Adds `flag` to the descriptor or file status flags (`get`/`set`: F_GETFD/F_SETFD or
/// F_GETFL/F_SETFL).
fn set_fd_flags(
    file: &File,
    get: libc::c_int,
    set: libc::c_int,
    flag: libc::c_int,
) -> io::Result<()> {
    // SAFETY: fcntl with F_GET* and F_SET* on an fd `file` owns.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), get) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(file.as_raw_fd(), set, flags | flag) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
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
        let err = Tap::open("no/slash").unwrap_err();
        assert!(matches!(err, TapError::InvalidName(_)), "{err}");
    }
}
