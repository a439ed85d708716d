//! Shared sources for mounts that propagate. A bind mount with shared or
//! slave propagation (Kubernetes' `Bidirectional`, `HostToContainer`) only
//! propagates if its source is a shared mount, which containerd checks on
//! a node. In the guest a volume's source is a directory of the virtio-fs
//! share (or of /run), not a mount of its own, and libcontainer makes the
//! mount above a container's rootfs private. So each such source gets a
//! bind of itself in the agent's namespace, made shared, for as long as a
//! container uses it: the containers' binds of it are then its peers or
//! slaves, and a mount one container makes in the volume reaches the
//! others as it would through a node's mount.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

/// The sources made shared, with the containers using each.
#[derive(Default)]
pub struct PropagationSources {
    users: Mutex<HashMap<PathBuf, BTreeSet<String>>>,
}

/// The sources of `spec`'s bind mounts that ask for shared or slave
/// propagation.
fn propagating_sources(spec: &Spec) -> Vec<PathBuf> {
    spec.mounts()
        .iter()
        .flatten()
        .filter(|m| {
            let options = m.options().as_deref().unwrap_or_default();
            let bind = m.typ().as_deref() == Some("bind")
                || options.iter().any(|o| o == "bind" || o == "rbind");
            bind && options
                .iter()
                .any(|o| matches!(o.as_str(), "rshared" | "shared" | "rslave" | "slave"))
        })
        .filter_map(|m| m.source().clone())
        .collect()
}

impl PropagationSources {
    /// Makes the propagating sources of container `id` shared mounts.
    pub fn acquire(&self, id: &str, spec: &Spec) -> std::io::Result<()> {
        let mut users = self.users.lock().expect("propagation lock");
        for source in propagating_sources(spec) {
            if !source.is_absolute() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("mount source {} is not absolute", source.display()),
                ));
            }
            let containers = users.entry(source.clone()).or_default();
            if containers.is_empty() {
                share_in_place(&source)?;
            }
            containers.insert(id.to_owned());
        }
        Ok(())
    }

    /// Container `id` is gone: sources nobody uses any more are unmounted.
    pub fn release(&self, id: &str) {
        let mut users = self.users.lock().expect("propagation lock");
        users.retain(|source, containers| {
            if !containers.remove(id) || !containers.is_empty() {
                return !containers.is_empty();
            }
            if let Err(err) = umount2(source, MntFlags::MNT_DETACH) {
                tracing::warn!(source = %source.display(), %err, "unmounting a shared source");
            }
            false
        });
    }
}

/// Binds `path` onto itself (with what is mounted below it) and makes the
/// bind shared.
fn share_in_place(path: &Path) -> std::io::Result<()> {
    let failed = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |e: nix::Error| {
            std::io::Error::new(std::io::Error::from(e).kind(), format!("{what}: {e}"))
        }
    };
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(failed("binding"))?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(failed("sharing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_binds_that_propagate_need_a_shared_source() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/a", "type": "bind", "source": "/run/hull/shared/_volume-1/volume", "options": ["rbind", "rshared"]},
                {"destination": "/b", "source": "/run/hull/pod-volumes/m", "options": ["rbind", "rslave"]},
                {"destination": "/c", "type": "bind", "source": "/run/hull/shared/c/mounts/0", "options": ["rbind", "rprivate"]},
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["rshared"]},
            ]
        }))
        .unwrap();
        assert_eq!(
            propagating_sources(&spec),
            [
                PathBuf::from("/run/hull/shared/_volume-1/volume"),
                PathBuf::from("/run/hull/pod-volumes/m")
            ]
        );
    }
}
