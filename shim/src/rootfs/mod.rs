//! Container root filesystems and volumes on the host: containerd's rootfs
//! mounts and the host files a container mounts, placed in the sandbox's
//! virtio-fs share, where the guest finds them.

mod mount;
mod share;

pub use self::mount::{MountError, RootfsMountSpec};
pub use self::share::{ShareBind, ShareError, SharedDir};

use std::os::fd::AsFd;

use crate::sys::mount::{set_attrs, MountAttrs, NewFilesystem};
use crate::sys::userns::IdMappedNamespace;

/// Whether this kernel can serve the share to an unprivileged virtiofsd:
/// id-mapped tmpfs mounts (Linux 6.3) and overlayfs layers passed as
/// descriptors (6.8). Tried once per process, on throwaway mounts.
pub fn idmapped_shares_supported() -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let ns = IdMappedNamespace::create(1 << 30, 1)
                .map_err(|e| format!("creating a user namespace: {e}"))?;
            let fs = NewFilesystem::open("tmpfs").map_err(|e| format!("fsopen tmpfs: {e}"))?;
            let tmpfs = fs
                .mount(&MountAttrs::default())
                .map_err(|e| format!("a tmpfs: {e}"))?;
            let idmapped = MountAttrs {
                idmap: Some(ns.fd()),
                ..Default::default()
            };
            set_attrs(tmpfs.as_fd(), &idmapped, false)
                .map_err(|e| format!("id-mapping a tmpfs (needs Linux 6.3): {e}"))?;
            let overlay =
                NewFilesystem::open("overlay").map_err(|e| format!("fsopen overlay: {e}"))?;
            overlay
                .set_fd("lowerdir+", tmpfs.as_fd())
                .map_err(|e| format!("an overlayfs layer by descriptor (needs Linux 6.8): {e}"))
        })
        .clone()
}
