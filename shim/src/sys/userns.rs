//! A user namespace that maps the ids `0..count` inside to
//! `host_base..host_base + count` on the host. It serves twice: as the
//! id-mapping of the mounts in a sandbox's share, and as the namespace
//! virtiofsd runs in as its root, which is the unprivileged host uid
//! `host_base`. Both use the same mapping, so a file owned by uid `k` on
//! disk is `k` to virtiofsd and therefore to the guest.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

/// A user namespace kept alive by its descriptor (no process stays in it).
#[derive(Debug)]
pub struct IdMappedNamespace {
    fd: OwnedFd,
    host_base: u32,
    count: u32,
}

impl IdMappedNamespace {
    /// Creates the namespace: a short-lived child unshares it, we write its
    /// maps from outside (root here may map any host ids) and keep a
    /// descriptor of it, then the child exits.
    pub fn create(host_base: u32, count: u32) -> io::Result<Self> {
        if count == 0 || host_base.checked_add(count).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot map {count} ids from host id {host_base}"),
            ));
        }
        let (mut ready_read, ready_write) = pipe()?;
        let (go_read, go_write) = pipe()?;
        // SAFETY: the child runs only async-signal-safe calls (unshare, write,
        // read, _exit) on descriptors it already has, then exits: nothing the
        // parent's other threads held can be touched.
        let child = match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                use std::os::fd::AsRawFd;
                // SAFETY: plain syscalls on valid descriptors; `_exit` never returns.
                unsafe {
                    // Our copy of the write end would keep the read below
                    // from ever seeing the parent close its own.
                    libc::close(go_write.as_raw_fd());
                    let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
                    libc::write(ready_write.as_raw_fd(), (&ok as *const u8).cast(), 1);
                    let mut byte = 0u8;
                    libc::read(go_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                    libc::_exit(0);
                }
            }
            nix::unistd::ForkResult::Parent { child } => child,
        };
        drop(ready_write);
        drop(go_read);
        let result = (|| {
            let mut unshared = [0u8; 1];
            ready_read.read_exact(&mut unshared)?;
            if unshared[0] != 1 {
                return Err(io::Error::other(
                    "unshare(CLONE_NEWUSER) failed in the helper process",
                ));
            }
            let map = format!("0 {host_base} {count}\n");
            for file in ["uid_map", "gid_map"] {
                let path = format!("/proc/{child}/{file}");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|mut f| f.write_all(map.as_bytes()))
                    .map_err(|e| io::Error::new(e.kind(), format!("writing {path}: {e}")))?;
            }
            let ns = std::fs::File::open(format!("/proc/{child}/ns/user"))?;
            Ok(OwnedFd::from(ns))
        })();
        drop(go_write);
        let _ = nix::sys::wait::waitpid(child, None);
        Ok(IdMappedNamespace {
            fd: result?,
            host_base,
            count,
        })
    }

    /// The host id that id 0 inside maps to.
    pub fn host_base(&self) -> u32 {
        self.host_base
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn pipe() -> io::Result<(std::fs::File, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: `read` is a fresh descriptor we own and hand over whole.
    let read = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(read)) };
    Ok((read, write))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Needs root, as the suite does.
    #[test]
    fn the_namespace_maps_the_requested_range_and_outlives_its_helper() {
        let ns = IdMappedNamespace::create(200_000, 65_536).unwrap();
        assert_eq!(ns.host_base(), 200_000);
        // A mount id-mapped through it shows on-disk owner 1000 as host 201000.
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let target = dir.path().join("target");
        std::fs::create_dir(&source).unwrap();
        std::fs::create_dir(&target).unwrap();
        std::fs::write(source.join("f"), "x").unwrap();
        std::os::unix::fs::chown(source.join("f"), Some(1000), Some(1000)).unwrap();
        let tree = crate::sys::mount::clone_tree(&source, false).unwrap();
        crate::sys::mount::set_attrs(
            tree.as_fd(),
            &crate::sys::mount::MountAttrs {
                idmap: Some(ns.fd()),
                ..Default::default()
            },
            false,
        )
        .unwrap();
        let target_fd = std::fs::File::open(&target).unwrap();
        crate::sys::mount::attach(tree.as_fd(), target_fd.as_fd()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(target.join("f")).unwrap();
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (201_000, 201_000));
    }

    #[test]
    fn an_overflowing_range_is_refused() {
        let err = IdMappedNamespace::create(u32::MAX - 10, 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
