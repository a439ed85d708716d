//! Container root filesystems and volumes on the host: containerd's rootfs
//! mounts and the host files a container mounts, placed in the sandbox's
//! virtio-fs share, where the guest finds them.

mod mount;
mod share;

pub use self::mount::{MountError, RootfsMountSpec};
pub use self::share::{ShareBind, ShareError, SharedDir};
