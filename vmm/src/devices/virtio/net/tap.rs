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

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use hull_vmm_api::net::{attach_tap, TapHeader, REQUIRED_TAP_FLAGS};
pub use hull_vmm_api::net::{check_tap_name, TapError};
use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};

use super::frame::VNET_HDR_SIZE;

/// An open tap: frames, each behind a `virtio_net_hdr_v1`.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or creates) the tap called `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let fd = attach_tap(name, TapHeader::VirtioNet)?;
        let file = File::from(fd);
        set_fd_flags(&file, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK).map_err(|source| {
            TapError::Configure {
                name: name.to_owned(),
                what: "non-blocking mode",
                source,
            }
        })?;
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
        let missing: Vec<&str> = REQUIRED_TAP_FLAGS
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
    fn bad_names_fail_before_touching_the_tun_device() {
        let err = Tap::open("no/slash").unwrap_err();
        assert!(matches!(err, TapError::InvalidName(_)), "{err}");
    }
}
