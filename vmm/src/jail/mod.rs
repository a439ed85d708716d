//! Confinement of the host processes that parse guest input (see docs/vmm.md, "Jail"):
//! hull-vmm itself, its vsock device served to QEMU (`hull-vmm vsock`), and the programs
//! Hull starts through `hull-vmm jail` (QEMU, virtiofsd). One set of steps serves all three:
//!
//! - `mount`: a private mount namespace and a root to pivot into, either a directory of
//!   the host or a fresh read-only tmpfs holding only the binds, symbolic links and device
//!   nodes asked for;
//! - `credentials`: a non-root uid and gid with no capabilities (or root of a user
//!   namespace the caller made), keeping the parent-death signal;
//! - `process`: cgroups, resource limits, the net, IPC and UTS namespaces, inherited
//!   descriptors, `no_new_privs`, and the single-thread check;
//! - `exec`: those steps in order for `hull-vmm jail`, which then execs a program (its
//!   order is documented there).
//!
//! hull-vmm ([`Jail`]) opens every host resource it needs first. At start, before the VM is
//! built, it closes every inherited descriptor but 0-2 and the taps its configuration
//! names, bounds its open files and turns core dumps off
//! ([`process::apply_confined_limits`]), joins the cgroup (so that guest memory and KVM's
//! own allocations are charged to it) and works from the jail directory. Once the VM is
//! built, while it still has a single thread, it confines itself ([`Jail::enter`]):
//!
//! 1. its own mount namespace, with `/` made recursively private so nothing it mounts or
//!    unmounts reaches the host;
//! 2. the jail directory bind-mounted onto itself and made the root with `pivot_root`; the
//!    old root is detached, so only the jail directory is left to see;
//! 3. its own network namespace: the taps are open already and keep working in theirs,
//!    Unix sockets are reached by path as before, and the host's interfaces and abstract
//!    Unix sockets are out of reach;
//! 4. an empty bounding set, then no supplementary groups and the given non-root gid and
//!    uid, which also empties the permitted and effective capability sets; the parent-death
//!    signal, which the kernel clears on that change, is set again.
//!
//! Every thread hull-vmm starts afterwards inherits all of this, then drops what is left of
//! its capabilities and installs its seccomp filter (`crate::seccomp`). A thread started
//! before the jail would stay outside it: the mount namespace, root and credentials are per
//! thread.
//!
//! The vsock backend (`hull-vmm vsock`) takes its two listening sockets, closes every other
//! inherited descriptor, bounds its limits the same way, enters the same [`Jail`] (steps 1
//! to 4) if it has one, and only then installs its seccomp filter and starts its threads.
//!
//! Paths: hull-vmm works from the jail directory from the start, and names
//! the sockets it keeps using (the hybrid-vsock socket and its
//! `<uds>_<port>` siblings, the API socket) relative to it, so the same name
//! reaches the same file before and after the pivot. Every other path is
//! made absolute and opened before the jail; that includes virtio-fs's
//! vhost-user sockets, which are connected while the VM is built and never
//! reconnected.

pub mod credentials;
pub mod exec;
pub mod mount;
pub mod process;

use std::path::{Component, Path, PathBuf};

use nix::unistd::{chdir, Gid, Uid};

use crate::config::{JailConfig, VmConfig};
use credentials::CredentialsError;
use mount::MountError;
use process::{Cgroup, CgroupVersion, Namespaces, ProcessError};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("Jail directory {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Jail directory {0} is not a directory")]
    RootNotDirectory(PathBuf),
    #[error("Jail cgroup {path} (the caller creates it): {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Jail cgroup {0} is not a cgroup v2 directory")]
    NotCgroup2(PathBuf),
    #[error("Moving into the jail's cgroup: {0}")]
    JoinCgroup(#[source] ProcessError),
    #[error(
        "The {what} {path} is not inside the jail directory {root}: hull-vmm uses it after entering the jail"
    )]
    OutsideJail {
        what: &'static str,
        path: PathBuf,
        root: PathBuf,
    },
    #[error("The {what} {path}: {source}")]
    Path {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Entering the jail {root}: {threads} threads are running, and a thread started before the jail would stay outside it")]
    Threads { root: PathBuf, threads: usize },
    #[error("Working from the jail directory {root}: {source}")]
    Chdir {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Entering the jail {root}: {source}")]
    Mount {
        root: PathBuf,
        #[source]
        source: MountError,
    },
    #[error("Entering the jail {root}: {source}")]
    Process {
        root: PathBuf,
        #[source]
        source: ProcessError,
    },
    #[error("Entering the jail {root}: {source}")]
    Credentials {
        root: PathBuf,
        #[source]
        source: CredentialsError,
    },
}

/// A jail checked against the host, ready to be entered.
#[derive(Debug, Clone)]
pub struct Jail {
    /// Canonical: no symbolic links, so paths can be compared with it.
    root: PathBuf,
    uid: Uid,
    gid: Gid,
    cgroup: Option<Cgroup>,
}

impl Jail {
    /// Checks that the root is a directory and the cgroup, if any, a cgroup
    /// v2 directory that exists.
    pub fn new(config: &JailConfig) -> Result<Jail, JailError> {
        let root = config
            .root
            .canonicalize()
            .map_err(|source| JailError::Root {
                path: config.root.clone(),
                source,
            })?;
        if !root.is_dir() {
            return Err(JailError::RootNotDirectory(config.root.clone()));
        }
        let cgroup = match &config.cgroup {
            Some(path) => Some(check_cgroup2(path)?),
            None => None,
        };
        Ok(Jail {
            root,
            uid: Uid::from_raw(config.uid),
            gid: Gid::from_raw(config.gid),
            cgroup,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Rewrites the paths of `config` for a VMM that works from the jail
    /// directory: the vsock socket relative to it (it must be inside),
    /// everything opened before the jail absolute. Every path of
    /// `VmConfig` is listed here: a device that brings one adds it.
    pub fn relocate(&self, config: &mut VmConfig) -> Result<(), JailError> {
        let absolute = |what, path: &mut PathBuf| -> Result<(), JailError> {
            *path = std::path::absolute(&*path).map_err(|source| JailError::Path {
                what,
                path: path.clone(),
                source,
            })?;
            Ok(())
        };
        absolute("kernel", &mut config.boot.kernel)?;
        if let Some(initrd) = &mut config.boot.initrd {
            absolute("initrd", initrd)?;
        }
        if let Some(log) = &mut config.serial.log {
            absolute("serial log", log)?;
        }
        for block in &mut config.block {
            absolute("block image", &mut block.path)?;
        }
        // Connected while the VM is built and never again: a session with virtiofsd that
        // ends stays closed (the device then needs a reset it cannot get), so after the
        // jail the path only names the socket in messages.
        for fs in &mut config.fs {
            absolute("virtio-fs socket", &mut fs.socket)?;
        }
        if let Some(vsock) = &mut config.vsock {
            vsock.uds_path = self.inside("vsock socket", &vsock.uds_path)?;
        }
        Ok(())
    }

    /// `path`, which must be inside the jail directory, relative to it.
    /// Its directory must exist; the file itself need not.
    pub fn inside(&self, what: &'static str, path: &Path) -> Result<PathBuf, JailError> {
        let outside = || JailError::OutsideJail {
            what,
            path: path.to_owned(),
            root: self.root.clone(),
        };
        let absolute = std::path::absolute(path).map_err(|source| JailError::Path {
            what,
            path: path.to_owned(),
            source,
        })?;
        let name = match absolute.components().next_back() {
            Some(Component::Normal(name)) => name,
            _ => return Err(outside()),
        };
        let parent = absolute.parent().ok_or_else(outside)?;
        let parent = parent.canonicalize().map_err(|source| JailError::Path {
            what,
            path: path.to_owned(),
            source,
        })?;
        let relative = parent.strip_prefix(&self.root).map_err(|_| outside())?;
        Ok(relative.join(name))
    }

    /// Moves this process into the jail's cgroup, if it has one.
    /// Moves this process into the jail's cgroup, if it has one.
    pub fn join_cgroup(&self) -> Result<(), JailError> {
        match &self.cgroup {
            Some(cgroup) => cgroup.join().map_err(JailError::JoinCgroup),
            None => Ok(()),
        }
    }

    /// Makes the jail directory the working directory, which the relocated
    /// socket paths are relative to.
    pub fn work_from_root(&self) -> Result<(), JailError> {
        chdir(&self.root).map_err(|e| JailError::Chdir {
            root: self.root.clone(),
            source: e.into(),
        })
    }

    /// Enters the jail (steps 1 to 4 of the module's documentation): own mount namespace,
    /// the jail directory as root, own network namespace, the non-root uid and gid. Must
    /// run before any thread is started.
    pub fn enter(&self) -> Result<(), JailError> {
        let root = || self.root.clone();
        let process_error = |source| JailError::Process {
            root: root(),
            source,
        };
        let threads = process::thread_count().map_err(process_error)?;
        if threads != 1 {
            return Err(JailError::Threads {
                root: root(),
                threads,
            });
        }
        let mount_error = |source| JailError::Mount {
            root: root(),
            source,
        };
        mount::enter_private_mount_namespace().map_err(mount_error)?;
        mount::bind_onto_itself(&self.root).map_err(mount_error)?;
        mount::pivot_into(&self.root).map_err(mount_error)?;
        let network = Namespaces {
            net: true,
            ..Namespaces::default()
        };
        network.unshare_others().map_err(process_error)?;
        credentials::become_user(self.uid, self.gid).map_err(|source| JailError::Credentials {
            root: root(),
            source,
        })
    }
}

/// The cgroup v2 directory `path`: hull-vmm's configuration promises v2.
fn check_cgroup2(path: &Path) -> Result<Cgroup, JailError> {
    match Cgroup::check(path) {
        Ok(cgroup) if cgroup.version() == CgroupVersion::V2 => Ok(cgroup),
        Ok(_) | Err(ProcessError::NotCgroup(_)) => Err(JailError::NotCgroup2(path.to_owned())),
        Err(ProcessError::Cgroup { source, .. }) => Err(JailError::Cgroup {
            path: path.to_owned(),
            source,
        }),
        Err(other) => Err(JailError::Cgroup {
            path: path.to_owned(),
            source: std::io::Error::other(other.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootConfig, SerialConfig, VsockDeviceConfig};

    fn jail(root: &Path) -> Jail {
        Jail::new(&JailConfig {
            root: root.to_owned(),
            uid: 65534,
            gid: 65534,
            cgroup: None,
        })
        .unwrap()
    }

    #[test]
    fn a_missing_or_non_directory_root_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = |root: PathBuf| JailConfig {
            root,
            uid: 1,
            gid: 1,
            cgroup: None,
        };
        let missing = dir.path().join("missing");
        let err = Jail::new(&config(missing.clone())).unwrap_err().to_string();
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = Jail::new(&config(file.clone())).unwrap_err().to_string();
        assert!(
            err.contains(file.to_str().unwrap()) && err.contains("not a directory"),
            "{err}"
        );
    }

    #[test]
    fn a_cgroup_must_exist_on_cgroup2() {
        let dir = tempfile::tempdir().unwrap();
        let config = |cgroup: PathBuf| JailConfig {
            root: dir.path().to_owned(),
            uid: 1,
            gid: 1,
            cgroup: Some(cgroup),
        };
        let missing = dir.path().join("no-such-cgroup");
        let err = Jail::new(&config(missing.clone())).unwrap_err().to_string();
        assert!(
            err.contains(missing.to_str().unwrap()) && err.contains("caller creates"),
            "{err}"
        );
        // A plain directory, even with a file named like the cgroup's.
        std::fs::write(dir.path().join("cgroup.procs"), b"").unwrap();
        let err = Jail::new(&config(dir.path().to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a cgroup v2 directory"), "{err}");
    }

    #[test]
    fn sockets_become_relative_to_the_jail_and_must_be_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sandbox");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let jail = jail(&root);
        assert_eq!(
            jail.inside("vsock socket", &root.join("v.sock")).unwrap(),
            PathBuf::from("v.sock")
        );
        assert_eq!(
            jail.inside("API socket", &root.join("sub/../sub/api.sock"))
                .unwrap(),
            PathBuf::from("sub/api.sock")
        );
        // Through a symbolic link that leads inside.
        std::os::unix::fs::symlink(&root, dir.path().join("link")).unwrap();
        assert_eq!(
            jail.inside("vsock socket", &dir.path().join("link/v.sock"))
                .unwrap(),
            PathBuf::from("v.sock")
        );
        for outside in [
            dir.path().join("v.sock"),
            root.join("../v.sock"),
            root.clone(),
            PathBuf::from("/"),
        ] {
            let err = jail.inside("vsock socket", &outside).unwrap_err();
            assert!(
                matches!(err, JailError::OutsideJail { .. }),
                "{}: {err}",
                outside.display()
            );
            let message = err.to_string();
            assert!(
                message.contains("vsock socket") && message.contains(root.to_str().unwrap()),
                "{message}"
            );
        }
        let err = jail
            .inside("API socket", &root.join("missing/api.sock"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing/api.sock"), "{err}");
    }

    #[test]
    fn relocation_keeps_host_files_absolute_and_moves_the_socket_in() {
        let dir = tempfile::tempdir().unwrap();
        let jail = jail(dir.path());
        let mut config = VmConfig {
            machine: Default::default(),
            boot: BootConfig {
                kernel: "vmlinux".into(),
                initrd: Some("/boot/initrd".into()),
                cmdline: String::new(),
            },
            serial: SerialConfig {
                log: Some("console.log".into()),
            },
            vsock: Some(VsockDeviceConfig {
                guest_cid: 3,
                uds_path: dir.path().join("v.sock"),
            }),
            block: vec![crate::config::BlockDeviceConfig {
                path: "disk.raw".into(),
                read_only: false,
            }],
            fs: vec![crate::config::FsDeviceConfig {
                socket: "virtiofsd.sock".into(),
                tag: "share".into(),
                queue_size: crate::config::DEFAULT_FS_QUEUE_SIZE,
            }],
            net: Vec::new(),
            jail: None,
        };
        jail.relocate(&mut config).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(config.boot.kernel, cwd.join("vmlinux"));
        assert_eq!(config.boot.initrd, Some("/boot/initrd".into()));
        assert_eq!(config.serial.log, Some(cwd.join("console.log")));
        assert_eq!(config.block[0].path, cwd.join("disk.raw"));
        assert_eq!(config.fs[0].socket, cwd.join("virtiofsd.sock"));
        assert_eq!(config.vsock.unwrap().uds_path, PathBuf::from("v.sock"));
    }
}
