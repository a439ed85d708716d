//! Container root filesystems on the host, bind-mounted into the sandbox's
//! virtio-fs share so the guest sees them.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

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
