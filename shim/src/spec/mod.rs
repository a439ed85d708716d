//! OCI runtime specs for containers Hull starts itself (`hull run`), built on
//! oci-spec's defaults, which are runc's (`runc spec`).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::pod::{check_supported, is_process_namespace, PodError, Role};

mod exec_limits;
pub use exec_limits::check as check_exec_limits;

/// What `hull run` lets a user choose about the container's process.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    pub args: Vec<String>,
    pub terminal: bool,
    /// `KEY=VALUE` entries added to (or replacing in) the default environment.
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub read_only: bool,
    pub hostname: Option<String>,
}

/// A runc-default spec for a container whose rootfs is at `rootfs` (a guest
/// path) running `options`.
pub fn container_spec(rootfs: &Path, options: &ProcessOptions) -> Spec {
    let mut spec = Spec::default();
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_owned());
    root.set_readonly(Some(options.read_only));
    spec.set_root(Some(root));
    spec.set_hostname(options.hostname.clone().or(Some("hull".into())));

    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(options.args.clone()));
    process.set_terminal(Some(options.terminal));
    let mut env = process.env().clone().unwrap_or_default();
    for entry in &options.env {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        env.retain(|existing| existing.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(entry.clone());
    }
    process.set_env(Some(env));
    if let Some(cwd) = &options.cwd {
        process.set_cwd(cwd.clone());
    }
    spec.set_process(Some(process));
    spec
}

/// CRI's annotation naming the pod a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The sandbox a container runs in: its pod's, or its own.
pub fn sandbox_id(spec: &Spec, container_id: &str) -> String {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
        .filter(|id| !id.is_empty())
        .cloned()
        .unwrap_or_else(|| container_id.to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("The spec has no process")]
    NoProcess,
    #[error(
        "Mount {destination}: a bind mount needs an absolute source path, not {source_path:?}"
    )]
    RelativeBind {
        destination: String,
        source_path: String,
    },
    #[error("argument list too long: {0}")]
    ExecTooLarge(String),
    #[error(transparent)]
    Pod(#[from] PodError),
}

/// The OCI spec at `path` (a bundle's config.json), or an error that names
/// the file and what in it is wrong, line and column included.
pub fn read_bundle_spec(path: &Path) -> Result<Spec, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("invalid OCI spec {}: {e}", path.display()))
}

/// Where a container's files live in the guest: `<share>/<id>/rootfs` and
/// `<share>/<id>/mounts/<n>`, with the host side under the sandbox's shared
/// directory at the same relative paths.
pub fn rootfs_in_share(container_id: &str) -> PathBuf {
    Path::new(container_id).join("rootfs")
}

/// A host file or directory that a bind mount of the container needs in
/// the guest: the shim binds `source` at `share_path` (relative to the
/// sandbox's shared directory) before the container is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostShare {
    pub source: PathBuf,
    pub share_path: PathBuf,
    /// Read-only on the host too (the mount at the source, and with
    /// `recursive_read_only` the mounts below it).
    pub read_only: bool,
    pub recursive: bool,
    pub recursive_read_only: bool,
    /// For a volume the pod's containers share (see [`pod_volume_name`]):
    /// its top-level directory in the share, bound once for the pod.
    pub pod_volume: Option<String>,
}

/// Where a pod volume's bind goes inside its directory.
const POD_VOLUME_MOUNT: &str = "volume";

/// Whether a mount's options ask for shared or slave propagation.
fn propagates(options: &[String]) -> bool {
    options
        .iter()
        .any(|o| matches!(o.as_str(), "rshared" | "shared" | "rslave" | "slave"))
}

fn is_propagation(option: &str) -> bool {
    matches!(
        option,
        "rprivate" | "private" | "rslave" | "slave" | "rshared" | "shared"
    )
}

/// The share directory of a pod volume: one per host source and mode,
/// named so that no container id can take it (ids cannot start with `_`).
pub fn pod_volume_name(source: &Path, read_only: bool, recursive: bool, rro: bool) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (source, read_only, recursive, rro).hash(&mut hasher);
    format!("_volume-{:016x}", hasher.finish())
}

/// What the guest knows of the container's pod.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    /// The pause container's pid in the guest, once it exists.
    pub sandbox_pid: Option<u32>,
    /// The host directory CRI bind-mounts as every container's /dev/shm.
    pub sandbox_shm: Option<PathBuf>,
}

/// A container's spec as the guest runs it, and the host shares it needs.
#[derive(Debug)]
pub struct GuestSpec {
    pub spec: Spec,
    pub shares: Vec<HostShare>,
}

const SHM: &str = "/dev/shm";

/// Where the guest keeps a pod's memory-backed emptyDir volumes: the agent
/// makes a directory there (on the guest's /run tmpfs) for each one.
pub const POD_VOLUMES_DIR: &str = "/run/hull/pod-volumes";

/// The kubelet's directory for a pod's emptyDir volumes.
const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

/// An emptyDir with `medium: Memory`: the kubelet mounts a tmpfs at
/// `.../volumes/kubernetes.io~empty-dir/<name>` and binds it into the pod's
/// containers. In a VM it belongs in the guest's memory.
pub fn is_memory_volume(source: &Path) -> bool {
    let in_empty_dir = source
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|plugin| plugin == EMPTY_DIR_PLUGIN);
    in_empty_dir
        && nix::sys::statfs::statfs(source)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// A mount on the host strictly below a bind mount's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submount {
    /// Its mount point, relative to the source.
    pub relative: PathBuf,
    pub read_only: bool,
}

/// What [`guest_spec`] needs to know of the host's mounts.
pub trait HostMounts {
    /// See [`is_memory_volume`].
    fn is_memory_volume(&self, source: &Path) -> bool;
    /// The mounts below `source`, parents first.
    fn submounts(&self, source: &Path) -> Vec<Submount>;
}

/// The host the shim runs on, as one [`guest_spec`] call sees it: the mount
/// table is read once, when a volume first needs it.
#[derive(Default)]
pub struct Host {
    mount_table: std::sync::OnceLock<Vec<crate::sys::mount::MountEntry>>,
}

impl HostMounts for Host {
    fn is_memory_volume(&self, source: &Path) -> bool {
        is_memory_volume(source)
    }

    fn submounts(&self, source: &Path) -> Vec<Submount> {
        let source = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_owned());
        let table = self.mount_table.get_or_init(|| {
            crate::sys::mount::mount_table().unwrap_or_else(|err| {
                // The mounts below stay read-only in the guest: the safe side.
                tracing::warn!(%err, "reading the mount table");
                Vec::new()
            })
        });
        let mut submounts: Vec<Submount> = Vec::new();
        for entry in table {
            let Ok(relative) = entry.mount_point.strip_prefix(&source) else {
                continue;
            };
            if relative.as_os_str().is_empty() {
                continue;
            }
            // Mounts stacked on one point: the last is the one seen.
            match submounts.iter_mut().find(|s| s.relative == relative) {
                Some(seen) => seen.read_only = entry.read_only,
                None => submounts.push(Submount {
                    relative: relative.to_owned(),
                    read_only: entry.read_only,
                }),
            }
        }
        submounts
    }
}

/// The guest directory name of a memory volume: its host path with the
/// separators replaced, so each volume of the pod gets its own and every
/// container of the pod finds the same one.
fn volume_name(source: &Path) -> String {
    source
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "_")
}

/// Rewrites a container's spec (from its bundle) for the guest:
/// - the rootfs is where the guest sees the shared copy;
/// - hooks, which would run host binaries, are dropped;
/// - host bind mounts (volumes, /etc/hosts, /etc/resolv.conf, ...) come
///   from the sandbox's share, one [`HostShare`] each;
/// - in a pod, an emptyDir with `medium: Memory` (see [`is_memory_volume`])
///   is a directory in the guest's own memory that the pod's containers
///   share, not a host tmpfs served through virtio-fs;
/// - in a pod, /dev/shm is a tmpfs of the pause container that the pod's
///   containers share, and the pod's network is the guest's own (the VM
///   is the pod), so the pause container gets no network namespace of its
///   own and the others join it by its guest pid, as CRI asks.
pub fn guest_spec(
    mut spec: Spec,
    container_id: &str,
    guest_share: &Path,
    pod: &PodContext,
    host: &dyn HostMounts,
) -> Result<GuestSpec, SpecError> {
    let Some(process) = spec.process() else {
        return Err(SpecError::NoProcess);
    };
    check_exec_limits(process)?;
    let role = Role::of(&spec);
    check_supported(&spec, role)?;
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(guest_share.join(rootfs_in_share(container_id)));
    spec.set_root(Some(root));
    if spec.hooks().is_some() {
        tracing::warn!("dropping OCI hooks: they would run host binaries inside the guest");
        spec.set_hooks(None);
    }
    // The host's AppArmor and SELinux labels mean nothing to the guest
    // kernel, which has neither; the VM is the boundary.
    if let Some(mut process) = spec.process().clone() {
        process.set_apparmor_profile(None);
        process.set_selinux_label(None);
        spec.set_process(Some(process));
    }
    if let Some(mut linux) = spec.linux().clone() {
        linux.set_mount_label(None);
        spec.set_linux(Some(linux));
    }

    let mut shares = Vec::new();
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    // Binds for the mounts below a read-only volume, after the mount at
    // the same index.
    let mut submount_binds: Vec<(usize, Vec<Mount>)> = Vec::new();
    for (index, mount) in mounts.iter_mut().enumerate() {
        // `..` in a destination stays inside the root, as runc resolves it.
        mount.set_destination(lexically_inside_root(mount.destination()));
        let options = mount.options().clone().unwrap_or_default();
        let bind = mount.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        if !bind {
            continue;
        }
        let destination = mount.destination().clone();
        if role.is_pod() && destination == Path::new(SHM) {
            let from_sandbox = pod.sandbox_shm.as_deref() == mount.source().as_deref();
            match (role, pod.sandbox_pid) {
                (Role::PodContainer, Some(pid)) if from_sandbox => {
                    mount.set_source(Some(PathBuf::from(format!("/proc/{pid}/root{SHM}"))));
                }
                _ => *mount = shm_tmpfs(&options),
            }
            continue;
        }
        let source = mount.source().clone().unwrap_or_default();
        if !source.is_absolute() {
            return Err(SpecError::RelativeBind {
                destination: destination.display().to_string(),
                source_path: source.display().to_string(),
            });
        }
        if role.is_pod() && host.is_memory_volume(&source) {
            mount.set_source(Some(Path::new(POD_VOLUMES_DIR).join(volume_name(&source))));
            continue;
        }
        let recursive = options.iter().any(|o| o == "rbind");
        let recursive_read_only = options.iter().any(|o| o == "rro");
        let read_only = recursive_read_only || options.iter().any(|o| o == "ro");
        // A volume whose mounts propagate (Bidirectional, HostToContainer)
        // is one share for the whole pod, so that what one container mounts
        // in it reaches the others as it would through the node's mount.
        let pod_volume = (role.is_pod() && propagates(&options))
            .then(|| pod_volume_name(&source, read_only, recursive, recursive_read_only));
        let share_path = match &pod_volume {
            Some(name) => Path::new(name).join(POD_VOLUME_MOUNT),
            None => Path::new(container_id)
                .join("mounts")
                .join(shares.len().to_string()),
        };
        mount.set_source(Some(guest_share.join(&share_path)));
        if recursive_read_only {
            // runc's recursive read-only: the guest's one mount of the
            // share is read-only, and so is everything below it on the host.
            mount.set_options(Some(
                options
                    .iter()
                    .map(|o| if o == "rro" { "ro".into() } else { o.clone() })
                    .collect(),
            ));
        } else if read_only && recursive {
            // A plain read-only bind is not recursive: what is mounted
            // below the source keeps its own `ro` or `rw`. In the guest the
            // share is one filesystem, so each such mount gets a bind of its
            // own over the read-only one.
            let binds = host
                .submounts(&source)
                .into_iter()
                .map(|sub| {
                    submount_bind(&destination, &guest_share.join(&share_path), &sub, &options)
                })
                .collect::<Vec<_>>();
            if !binds.is_empty() {
                submount_binds.push((index, binds));
            }
        }
        shares.push(HostShare {
            source,
            share_path,
            read_only,
            recursive,
            recursive_read_only,
            pod_volume,
        });
    }
    for (index, binds) in submount_binds.into_iter().rev() {
        mounts.splice(index + 1..index + 1, binds);
    }
    spec.set_mounts(Some(mounts));

    add_cgroup_namespace(&mut spec);
    if role.is_pod() {
        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.retain_mut(|ns| {
            let Some(path) = ns.path() else { return true };
            if is_process_namespace(path) {
                return true;
            }
            // A host path (CNI's netns): the guest's network is the pod's.
            match (ns.typ(), role, pod.sandbox_pid) {
                (LinuxNamespaceType::Network, Role::PodContainer, Some(pid)) => {
                    ns.set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/net"))));
                    true
                }
                (LinuxNamespaceType::Network, _, _) => false,
                _ => {
                    ns.set_path(None);
                    true
                }
            }
        });
        linux.set_namespaces(Some(namespaces));
        spec.set_linux(Some(linux));
    }
    Ok(GuestSpec { spec, shares })
}

/// The guest bind of `sub`, a mount below the source of a read-only
/// volume at `destination` whose share is at `guest_source`: `rw` or `ro`
/// as on the host, with the volume's propagation.
fn submount_bind(
    destination: &Path,
    guest_source: &Path,
    sub: &Submount,
    volume_options: &[String],
) -> Mount {
    let mut options = vec![
        "rbind".to_string(),
        if sub.read_only { "ro" } else { "rw" }.to_string(),
    ];
    options.extend(volume_options.iter().filter(|o| is_propagation(o)).cloned());
    let mut mount = Mount::default();
    mount.set_destination(destination.join(&sub.relative));
    mount.set_typ(Some("bind".into()));
    mount.set_source(Some(guest_source.join(&sub.relative)));
    mount.set_options(Some(options));
    mount
}

/// `path` with `.` and `..` resolved by name, never above `/`: how runc
/// reads a mount destination inside the container's root. A relative path
/// is left as it is.
fn lexically_inside_root(path: &Path) -> PathBuf {
    use std::path::Component;
    if !path.is_absolute() {
        return path.to_owned();
    }
    let mut clean = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    clean
}

/// The guest runs cgroup v2 whatever the host runs, so a container gets a
/// cgroup namespace of its own, as runc gives one on a v2 host, and sees
/// its own cgroup at /sys/fs/cgroup (containerd on a v1 host asks for none).
fn add_cgroup_namespace(spec: &mut Spec) {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    if namespaces
        .iter()
        .all(|ns| ns.typ() != LinuxNamespaceType::Cgroup)
    {
        let mut cgroup = oci_spec::runtime::LinuxNamespace::default();
        cgroup.set_typ(LinuxNamespaceType::Cgroup);
        namespaces.push(cgroup);
        linux.set_namespaces(Some(namespaces));
        spec.set_linux(Some(linux));
    }
}

/// A pod's /dev/shm in the guest: a tmpfs, read-only if the bind was.
fn shm_tmpfs(bind_options: &[String]) -> Mount {
    let mut options: Vec<String> = ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
        .map(String::from)
        .to_vec();
    if bind_options.iter().any(|o| o == "ro") {
        options.push("ro".into());
    }
    let mut mount = Mount::default();
    mount.set_destination(PathBuf::from(SHM));
    mount.set_typ(Some("tmpfs".into()));
    mount.set_source(Some(PathBuf::from("shm")));
    mount.set_options(Some(options));
    mount
}

/// The host directory CRI shares as a pod's /dev/shm, from the pause
/// container's spec.
pub fn shm_source(spec: &Spec) -> Option<PathBuf> {
    spec.mounts()
        .iter()
        .flatten()
        .find(|m| m.destination() == Path::new(SHM) && m.typ().as_deref() == Some("bind"))
        .and_then(|m| m.source().clone())
}

#[cfg(test)]
mod tests;
