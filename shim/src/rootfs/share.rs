//! The sandbox's virtio-fs share on the host, `<state>/<sid>/shared`: the
//! one host directory the guest can write to, through virtiofsd. The guest
//! may have replaced any name in it by a symlink to a host path, or renamed
//! what the shim made, so the shim works in it only by descriptor:
//!
//! - it is a tmpfs of its own (small, mode 0750, nosuid, nodev, noexec), so
//!   what the guest writes at its top costs the host little, and its mounts
//!   end when it is detached;
//! - directories and mount points are made one component at a time,
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` from
//!   the share's root; a symlink or a foreign mount on the way is an error;
//! - mounts are built detached and attached with `move_mount` onto the
//!   descriptor of their mount point; they are undone by the descriptor of
//!   their root after checking its mount id against the mount table;
//! - removal unlinks symlinks as links and never enters another mount.
//!
//! With virtiofsd unprivileged, the share's owner is the id-mapping's root
//! on the host, and every mount in it is id-mapped (`rootfs::mount`).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sys::fs::{
    file_in, mkdir_all_beneath, mkdir_in, normal_components, open_beneath, remove_beneath,
    Crossing, Leftovers,
};
use crate::sys::mount::{attach, detach_below, MountAttrs, NewFilesystem};
use crate::sys::userns::IdMappedNamespace;

use super::mount::{MountError, RootfsMountSpec};

/// Size limits of the share's own tmpfs: it holds mount points, and
/// whatever the guest writes beside them.
const SHARE_TMPFS_SIZE: &str = "8m";
const SHARE_TMPFS_INODES: &str = "16384";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("Creating the share {path}: {step}: {source}")]
    Create {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Mount point {path} in the share: {source} (a symlink or a mount there is refused)")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_path} does not exist")]
    Missing { source_path: PathBuf },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("Attaching {what} at {path}: {source}")]
    Attach {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A host file or directory that a container mounts (a volume, /etc/hosts,
/// ...), bound into the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareBind {
    pub source: PathBuf,
    /// Read-only on the host: the mount at `source`, and with
    /// `recursive_read_only` the mounts below it too.
    pub read_only: bool,
    /// With the mounts below `source` (`rbind`).
    pub recursive: bool,
    pub recursive_read_only: bool,
    /// Mounts the host makes below `source` later reach the share (and the
    /// guest); never the other way.
    pub receives_host_mounts: bool,
}

pub struct SharedDir {
    path: PathBuf,
    /// The share tmpfs's root, opened when it was mounted.
    root: OwnedFd,
    idmap: Option<Arc<IdMappedNamespace>>,
}

impl SharedDir {
    /// Makes `path` (a new directory in `parent`, the sandbox's state
    /// directory) the share: a tmpfs of its own, mounted shared so that
    /// virtiofsd, whose mount namespace is a slave of ours, sees every mount
    /// made in it later.
    pub fn create(
        parent: &Path,
        name: &str,
        idmap: Option<Arc<IdMappedNamespace>>,
    ) -> Result<Self, ShareError> {
        let path = parent.join(name);
        let failed = |step| {
            let path = path.clone();
            move |source| ShareError::Create { path, step, source }
        };
        let parent_fd = std::fs::File::open(parent).map_err(failed("opening its parent"))?;
        let mount_point =
            mkdir_in(parent_fd.as_fd(), OsStr::new(name), 0o750, None).map_err(failed("mkdir"))?;
        let fs = NewFilesystem::open("tmpfs").map_err(failed("fsopen tmpfs"))?;
        let owner = idmap.as_ref().map_or(0, |ns| ns.host_base());
        for (key, value) in [
            ("size", SHARE_TMPFS_SIZE.to_owned()),
            ("nr_inodes", SHARE_TMPFS_INODES.to_owned()),
            ("mode", "0750".to_owned()),
            ("uid", owner.to_string()),
            ("gid", owner.to_string()),
        ] {
            fs.set_string(key, OsStr::new(&value))
                .map_err(failed("configuring the tmpfs"))?;
        }
        let mount = fs
            .mount(&MountAttrs {
                nosuid: true,
                nodev: true,
                noexec: true,
                ..Default::default()
            })
            .map_err(failed("creating the tmpfs"))?;
        attach(mount.as_fd(), mount_point.as_fd()).map_err(failed("attaching the tmpfs"))?;
        let root = open_beneath(
            parent_fd.as_fd(),
            Path::new(name),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            Crossing::AnyMount,
        )
        .map_err(failed("opening it"))?;
        nix::mount::mount(
            None::<&str>,
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&root)).as_str(),
            None::<&str>,
            nix::mount::MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|e| failed("making it a shared mount")(e.into()))?;
        Ok(SharedDir { path, root, idmap })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn owner(&self) -> Option<(u32, u32)> {
        self.idmap
            .as_ref()
            .map(|ns| (ns.host_base(), ns.host_base()))
    }

    /// Mounts a container's rootfs (containerd's mounts, stacked in order)
    /// at `<container>/rootfs`; returns that relative path.
    pub fn mount_rootfs(
        &self,
        container: &str,
        mounts: &[RootfsMountSpec],
    ) -> Result<PathBuf, ShareError> {
        let relative = Path::new(container).join("rootfs");
        let target = self.mount_point(&relative, true)?;
        for spec in mounts {
            let mount = spec.build(self.idmap.as_deref())?;
            attach(mount.as_fd(), target.as_fd()).map_err(|source| ShareError::Attach {
                what: format!(
                    "the {} rootfs mount of {}",
                    spec.kind,
                    spec.source.display()
                ),
                path: self.path.join(&relative),
                source,
            })?;
        }
        Ok(relative)
    }

    /// Binds `bind.source` at `relative` in the share, read-only on the host
    /// too when the container mounts it read-only: the guest kernel is not
    /// trusted to keep a container's `ro`.
    pub fn bind(&self, bind: &ShareBind, relative: &Path) -> Result<(), ShareError> {
        let meta = std::fs::metadata(&bind.source).map_err(|_| ShareError::Missing {
            source_path: bind.source.clone(),
        })?;
        let target = self.mount_point(relative, meta.is_dir())?;
        let spec = RootfsMountSpec {
            kind: "bind".into(),
            source: bind.source.clone(),
            options: [
                if bind.recursive { "rbind" } else { "bind" },
                match (bind.read_only, bind.recursive_read_only) {
                    (_, true) => "rro",
                    (true, false) => "ro",
                    (false, false) => "rw",
                },
                if bind.receives_host_mounts {
                    "rslave"
                } else {
                    "rprivate"
                },
            ]
            .map(String::from)
            .to_vec(),
        };
        let mount = spec.build(self.idmap.as_deref())?;
        attach(mount.as_fd(), target.as_fd()).map_err(|source| ShareError::Attach {
            what: bind.source.display().to_string(),
            path: self.path.join(relative),
            source,
        })
    }

    /// The mount point `relative` (a directory, or an empty file), with the
    /// directories above it; each must be on the share's own tmpfs.
    fn mount_point(&self, relative: &Path, directory: bool) -> Result<OwnedFd, ShareError> {
        let failed = |source| ShareError::MountPoint {
            path: self.path.join(relative),
            source,
        };
        let names = normal_components(relative).map_err(failed)?;
        let (name, parents) = names.split_last().ok_or_else(|| {
            failed(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty path",
            ))
        })?;
        let parent: PathBuf = parents.iter().collect();
        let parent =
            mkdir_all_beneath(self.root.as_fd(), &parent, 0o755, self.owner()).map_err(failed)?;
        if directory {
            mkdir_in(parent.as_fd(), name, 0o755, self.owner())
        } else {
            file_in(parent.as_fd(), name, self.owner())
        }
        .map_err(failed)
    }

    /// Undoes every mount below `<container>` in the share and removes what
    /// the container had there. Returns what stayed (a mount that would not
    /// go, or what could not be removed), for the caller to report.
    pub fn remove_container(&self, container: &str) -> Leftovers {
        self.remove_top(container)
    }

    /// Undoes a pod volume's bind and removes its directory (see
    /// [`crate::spec::pod_volume_name`]).
    pub fn remove_pod_volume(&self, name: &str) -> Leftovers {
        self.remove_top(name)
    }

    /// Detaches every mount below the top-level entry `name` and removes it.
    fn remove_top(&self, name: &str) -> Leftovers {
        let relative = Path::new(name);
        self.detach_below(relative);
        if normal_components(relative).map_or(true, |c| c.len() != 1) {
            return Leftovers {
                failed: vec![(relative.into(), "not a single path component".into())],
                ..Default::default()
            };
        }
        remove_beneath(self.root.as_fd(), relative.as_os_str())
    }

    /// Detaches the mounts below `relative` in the share.
    fn detach_below(&self, relative: &Path) {
        for (mount, err) in detach_below(self.root.as_fd(), &self.path, relative) {
            tracing::warn!(mount = %mount.display(), %err, "not detached");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn share(dir: &Path) -> SharedDir {
        SharedDir::create(dir, "shared", None).unwrap()
    }

    fn detach_share(share: &SharedDir) {
        let _ = nix::mount::umount2(share.path(), nix::mount::MntFlags::MNT_DETACH);
    }

    // Needs root (mounts), as the suite does.
    #[test]
    fn binds_are_read_only_on_the_host_when_asked_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("data"), "kept").unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let share = share(dir.path());
        let bind = |source: &Path, read_only| ShareBind {
            source: source.to_owned(),
            read_only,
            recursive: true,
            recursive_read_only: false,
            receives_host_mounts: false,
        };

        share
            .bind(&bind(&volume, true), Path::new("c1/mounts/0"))
            .unwrap();
        let ro = share.path().join("c1/mounts/0");
        assert_eq!(std::fs::read_to_string(ro.join("data")).unwrap(), "kept");
        let err = std::fs::write(ro.join("new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

        share
            .bind(&bind(&volume, false), Path::new("c1/mounts/1"))
            .unwrap();
        std::fs::write(share.path().join("c1/mounts/1/new"), "written").unwrap();
        assert_eq!(
            std::fs::read_to_string(volume.join("new")).unwrap(),
            "written"
        );

        share
            .bind(&bind(&file, true), Path::new("c1/mounts/2"))
            .unwrap();
        let single = share.path().join("c1/mounts/2");
        assert_eq!(
            std::fs::read_to_string(single).unwrap(),
            "127.0.0.1 localhost\n"
        );

        let leftovers = share.remove_container("c1");
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(!share.path().join("c1").exists());
        assert_eq!(
            std::fs::read_to_string(volume.join("data")).unwrap(),
            "kept"
        );
        assert!(file.exists());
        detach_share(&share);
    }

    // Needs root (mounts), as the suite does.
    #[test]
    fn a_read_only_bind_leaves_the_mounts_below_it_as_they_are_unless_rro() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        let inner = volume.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        nix::mount::mount(
            Some("inner"),
            &inner,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        let share = share(dir.path());
        for (recursive_read_only, at) in [(false, "c1/mounts/0"), (true, "c1/mounts/1")] {
            let bind = ShareBind {
                source: volume.clone(),
                read_only: true,
                recursive: true,
                recursive_read_only,
                receives_host_mounts: false,
            };
            share.bind(&bind, Path::new(at)).unwrap();
        }
        let write = |path: PathBuf| std::fs::write(path, "x").map_err(|e| e.raw_os_error());
        let plain = share.path().join("c1/mounts/0");
        assert_eq!(write(plain.join("top")), Err(Some(libc::EROFS)));
        assert_eq!(write(plain.join("inner/below")), Ok(()));
        let rro = share.path().join("c1/mounts/1");
        assert_eq!(write(rro.join("top")), Err(Some(libc::EROFS)));
        assert_eq!(write(rro.join("inner/below2")), Err(Some(libc::EROFS)));

        let leftovers = share.remove_container("c1");
        assert!(leftovers.is_empty(), "{leftovers:?}");
        detach_share(&share);
        assert!(inner.join("below").exists());
        nix::mount::umount2(&inner, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }

    #[test]
    fn the_share_is_a_small_private_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let share = share(dir.path());
        let meta = std::fs::metadata(share.path()).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert_eq!(meta.permissions().mode() & 0o777, 0o750);
        assert_eq!(meta.uid(), 0);
        let stat = nix::sys::statfs::statfs(share.path()).unwrap();
        detach_share(&share);
        assert_eq!(stat.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
        assert!(stat.blocks() as u64 * stat.block_size() as u64 <= 8 << 20);
    }

    #[test]
    fn planted_symlinks_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("passwd"), "root:x:0:0").unwrap();
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        let share = share(dir.path());
        // What a guest could plant before the shim creates, binds or removes.
        std::fs::create_dir(share.path().join("c1")).unwrap();
        symlink(&victim, share.path().join("c1/mounts")).unwrap();
        symlink(victim.join("passwd"), share.path().join("c2")).unwrap();
        std::fs::create_dir_all(share.path().join("c3/mounts")).unwrap();
        symlink(victim.join("passwd"), share.path().join("c3/mounts/0")).unwrap();
        symlink(&victim, share.path().join("c3/rootfs")).unwrap();

        let bind = ShareBind {
            source: volume.clone(),
            read_only: false,
            recursive: false,
            recursive_read_only: false,
            receives_host_mounts: false,
        };
        let err = share.bind(&bind, Path::new("c1/mounts/0")).unwrap_err();
        assert!(matches!(err, ShareError::MountPoint { .. }), "{err}");
        let err = share.bind(&bind, Path::new("c2/mounts/0")).unwrap_err();
        assert!(matches!(err, ShareError::MountPoint { .. }), "{err}");
        let hosts = ShareBind {
            source: victim.join("passwd"),
            read_only: true,
            recursive: false,
            recursive_read_only: false,
            receives_host_mounts: false,
        };
        let err = share.bind(&hosts, Path::new("c3/mounts/0")).unwrap_err();
        assert!(matches!(err, ShareError::MountPoint { .. }), "{err}");
        let err = share
            .mount_rootfs("c3", &[RootfsMountSpec::bind(&volume)])
            .unwrap_err();
        assert!(matches!(err, ShareError::MountPoint { .. }), "{err}");

        for container in ["c1", "c2", "c3"] {
            share.remove_container(container);
        }
        assert_eq!(
            std::fs::read_to_string(victim.join("passwd")).unwrap(),
            "root:x:0:0"
        );
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!table.contains(victim.to_str().unwrap()), "{table}");
        detach_share(&share);
    }

    #[test]
    fn a_container_rootfs_is_mounted_and_removed_without_touching_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("bundle-rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/sh"), "#!").unwrap();
        let share = share(dir.path());
        let relative = share
            .mount_rootfs("c1", &[RootfsMountSpec::bind(&rootfs)])
            .unwrap();
        assert_eq!(relative, Path::new("c1/rootfs"));
        assert!(share.path().join("c1/rootfs/bin/sh").exists());
        // The guest renamed the mount point's parent and planted a symlink
        // where it was: the mount is still found by its id and detached.
        std::fs::rename(share.path().join("c1"), share.path().join("moved")).unwrap();
        symlink(dir.path(), share.path().join("c1")).unwrap();
        share.remove_container("moved");
        share.remove_container("c1");
        assert!(rootfs.join("bin/sh").exists());
        assert!(dir.path().join("bundle-rootfs").exists());
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!table.contains("moved/rootfs"), "{table}");
        detach_share(&share);
    }
}
