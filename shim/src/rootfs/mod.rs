//! Container root filesystems on the host, bind-mounted into the sandbox's
//! virtio-fs share so the guest sees them.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::spec::HostShare;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rootfs {0} does not exist")]
    Missing(PathBuf),
    #[error("rootfs {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("Creating mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Bind-mounting {source_path} on {target}: {errno}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        errno: nix::Error,
    },
}

/// Binds a host file or directory that a container mounts (a volume,
/// /etc/hosts, ...) at `target` in the sandbox's share. A read-only share is
/// read-only on the host too: the guest kernel is not trusted to honour the
/// container's `ro`. It is undone by unmounting the container's share.
pub fn bind_share(share: &HostShare, target: &Path) -> Result<(), Error> {
    let meta =
        std::fs::metadata(&share.source).map_err(|_| Error::Missing(share.source.clone()))?;
    let mount_point = |e| Error::MountPoint {
        path: target.to_owned(),
        source: e,
    };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(mount_point)?;
    }
    if meta.is_dir() {
        std::fs::create_dir(target).map_err(mount_point)?;
    } else {
        std::fs::File::create(target).map_err(mount_point)?;
    }
    let bind_error = |errno| Error::Bind {
        source_path: share.source.clone(),
        target: target.to_owned(),
        errno,
    };
    let recursive = if share.recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    mount(
        Some(&share.source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | recursive,
        None::<&str>,
    )
    .map_err(bind_error)?;
    let mut flags = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    let private = mount(None::<&str>, target, None::<&str>, flags, None::<&str>);
    if share.read_only {
        flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(errno) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(bind_error(errno));
        }
    }
    private.map_err(bind_error)
}

/// Removes what [`bind_share`] and the rootfs mounts left under `dir` once
/// it is unmounted: empty directories and empty regular files. Anything
/// with content is a mount that did not go away, and stays.
pub fn remove_mount_points(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => remove_mount_points(&path),
            Ok(kind) if kind.is_file() && entry.metadata().is_ok_and(|m| m.len() == 0) => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {}
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A bind mount that is undone when dropped.
#[derive(Debug)]
pub struct RootfsMount {
    target: PathBuf,
    mounted: bool,
}

impl RootfsMount {
    /// Bind-mounts the directory `source` (with its submounts) on `target`.
    pub fn bind(source: &Path, target: &Path) -> Result<Self, Error> {
        let meta = std::fs::metadata(source).map_err(|_| Error::Missing(source.to_owned()))?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory(source.to_owned()));
        }
        std::fs::create_dir_all(target).map_err(|e| Error::MountPoint {
            path: target.to_owned(),
            source: e,
        })?;
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|errno| Error::Bind {
            source_path: source.to_owned(),
            target: target.to_owned(),
            errno,
        })?;
        // Keep the host's mounts from propagating into the share.
        let _ = mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        );
        Ok(RootfsMount {
            target: target.to_owned(),
            mounted: true,
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn unmount(&mut self) -> nix::Result<()> {
        if self.mounted {
            umount2(&self.target, MntFlags::MNT_DETACH)?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for RootfsMount {
    fn drop(&mut self) {
        if let Err(err) = self.unmount() {
            tracing::warn!(target = %self.target.display(), %err, "unmounting rootfs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(source: &Path, read_only: bool) -> HostShare {
        HostShare {
            source: source.to_owned(),
            share_path: PathBuf::new(),
            read_only,
            recursive: true,
        }
    }

    // Needs root (mounts), as the suite does.
    #[test]
    fn shares_are_bound_read_only_on_the_host_when_asked_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("data"), "kept").unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let container = dir.path().join("share/c1");

        let ro = container.join("mounts/0");
        bind_share(&share(&volume, true), &ro).unwrap();
        assert_eq!(std::fs::read_to_string(ro.join("data")).unwrap(), "kept");
        let err = std::fs::write(ro.join("new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

        let rw = container.join("mounts/1");
        bind_share(&share(&volume, false), &rw).unwrap();
        std::fs::write(rw.join("new"), "written").unwrap();
        assert_eq!(
            std::fs::read_to_string(volume.join("new")).unwrap(),
            "written"
        );

        let single = container.join("mounts/2");
        bind_share(&share(&file, true), &single).unwrap();
        assert_eq!(
            std::fs::read_to_string(&single).unwrap(),
            "127.0.0.1 localhost\n"
        );

        crate::sandbox::unmount_under(&container);
        remove_mount_points(&container);
        assert!(!container.exists(), "mount points are removed");
        assert_eq!(
            std::fs::read_to_string(volume.join("data")).unwrap(),
            "kept"
        );
        assert!(file.exists());
    }

    #[test]
    fn a_missing_source_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = bind_share(
            &share(&dir.path().join("nope"), false),
            &dir.path().join("t"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
