//! containerd's rootfs mounts (overlay from the snapshotter, a bind from the
//! native snapshotter, or any filesystem by type), built as detached mounts
//! for the share: nosuid and nodev on the host, read-only where asked, and,
//! when virtiofsd runs unprivileged, seen through the sandbox's id-mapping.
//!
//! overlayfs itself cannot be id-mapped (Linux answers EINVAL), but it can
//! be built from id-mapped layers, which are passed to it as descriptors
//! (`lowerdir+`, `upperdir`, `workdir` with `FSCONFIG_SET_FD`, Linux 6.8):
//! no layer is ever attached anywhere. overlayfs does its own work (copy-up,
//! whiteouts, its work directory) with its mounter's credentials, which must
//! be representable in that mapping, so it is created with the filesystem
//! ids of the mapping's root (see `sys::mount::NewFilesystem::mount_as`).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys::fs::{open_beneath, Crossing};
use crate::sys::mount::{clone_tree, set_attrs, MountAttrs, NewFilesystem, Propagation};
use crate::sys::userns::IdMappedNamespace;

/// Whether overlayfs takes its lower layers one `lowerdir+` at a time
/// (Linux 6.8). Asked once per process, of a throwaway overlay context.
/// Before 6.5 overlayfs reads its options the legacy way: `fsconfig` accepts
/// any key, and only creating the mount fails (EINVAL). So a key no overlayfs
/// knows is tried first; only a kernel that refuses it answers the question.
fn overlay_takes_layers_one_by_one() -> bool {
    static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBE.get_or_init(|| {
        let Ok(fs) = NewFilesystem::open("overlay") else {
            return false;
        };
        let legacy = fs.set_string("hull-probe", OsStr::new("1")).is_ok();
        !legacy && fs.set_string("lowerdir+", OsStr::new("/")).is_ok()
    })
}

/// One of containerd's mounts for a container's rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMountSpec {
    pub kind: String,
    pub source: PathBuf,
    pub options: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("rootfs mount of type {kind:?}: option {option:?} {reason}")]
    Option {
        kind: String,
        option: String,
        reason: &'static str,
    },
    #[error("rootfs {kind} mount of {source_path}: {step}: {error}")]
    Step {
        kind: String,
        source_path: PathBuf,
        step: String,
        #[source]
        error: std::io::Error,
    },
}

/// Mount flags that are attributes of the mount, not options of the
/// filesystem (`mount(8)` names).
const MOUNT_FLAGS: [&str; 12] = [
    "ro",
    "rw",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "noexec",
    "exec",
    "relatime",
    "noatime",
    "strictatime",
    "nodiratime",
];

impl RootfsMountSpec {
    pub fn bind(source: &Path) -> Self {
        RootfsMountSpec {
            kind: "bind".into(),
            source: source.to_owned(),
            options: vec!["rbind".into(), "rw".into()],
        }
    }

    fn has(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }

    fn is_bind(&self) -> bool {
        self.kind == "bind" || self.has("bind") || self.has("rbind")
    }

    fn read_only(&self) -> bool {
        self.has("ro") || self.has("rro")
    }

    fn step_error(&self, step: impl Into<String>) -> impl FnOnce(std::io::Error) -> MountError {
        let kind = self.kind.clone();
        let source_path = self.source.clone();
        let step = step.into();
        move |error| MountError::Step {
            kind,
            source_path,
            step,
            error,
        }
    }

    /// Builds this mount, detached, for the share.
    pub fn build(&self, idmap: Option<&IdMappedNamespace>) -> Result<OwnedFd, MountError> {
        let attrs = MountAttrs {
            read_only: self.read_only(),
            nosuid: true,
            nodev: true,
            noexec: false,
            idmap: idmap.map(IdMappedNamespace::fd),
            propagation: Propagation::Unchanged,
        };
        if self.is_bind() {
            let recursive = self.has("rbind");
            let tree = clone_tree(&self.source, recursive).map_err(self.step_error("open_tree"))?;
            // `ro` is the bind's own, as mount(8) and runc make it: the
            // mounts below keep theirs. `rro` takes them too. A copy of a
            // shared mount would be its peer: it gets what is mounted below
            // the source later only with `rslave`, and never gives back.
            let below = MountAttrs {
                read_only: self.has("rro"),
                propagation: if self.has("rslave") {
                    Propagation::Slave
                } else {
                    Propagation::Private
                },
                ..attrs
            };
            set_attrs(tree.as_fd(), &below, recursive)
                .map_err(self.step_error(idmap_hint("mount_setattr", idmap)))?;
            if attrs.read_only && !below.read_only {
                let top = MountAttrs {
                    read_only: true,
                    ..Default::default()
                };
                set_attrs(tree.as_fd(), &top, false).map_err(self.step_error("mount_setattr"))?;
            }
            return Ok(tree);
        }
        if self.kind == "overlay" {
            return self.build_overlay(&attrs, idmap);
        }
        let fs = NewFilesystem::open(&self.kind).map_err(self.step_error("fsopen"))?;
        if !self.source.as_os_str().is_empty() {
            fs.set_string("source", self.source.as_os_str())
                .map_err(self.step_error("source"))?;
        }
        for option in &self.options {
            self.set_option(&fs, option)?;
        }
        fs.mount(&attrs)
            .map_err(self.step_error(idmap_hint("creating the mount", idmap)))
    }

    fn set_option(&self, fs: &NewFilesystem, option: &str) -> Result<(), MountError> {
        if MOUNT_FLAGS.contains(&option) {
            return Ok(());
        }
        match option.split_once('=') {
            Some((key, value)) => fs.set_string(key, OsStr::new(value)),
            None => fs.set_flag(option),
        }
        .map_err(self.step_error(format!("option {option}")))
    }

    fn build_overlay(
        &self,
        attrs: &MountAttrs,
        idmap: Option<&IdMappedNamespace>,
    ) -> Result<OwnedFd, MountError> {
        let fs = NewFilesystem::open("overlay").map_err(self.step_error("fsopen"))?;
        let mut lower = None;
        let mut upper = None;
        let mut work = None;
        for option in &self.options {
            match option.split_once('=') {
                Some(("lowerdir", value)) => lower = Some(value),
                Some(("upperdir", value)) => upper = Some(Path::new(value)),
                Some(("workdir", value)) => work = Some(Path::new(value)),
                _ => self.set_option(&fs, option)?,
            }
        }
        let lower = lower.ok_or_else(|| MountError::Option {
            kind: self.kind.clone(),
            option: "lowerdir".into(),
            reason: "is missing",
        })?;
        let layers: Vec<&Path> = lower.split(':').map(Path::new).collect();
        // The layers' detached trees must live until the overlay is created:
        // a detached mount whose last descriptor closes is dissolved, and
        // overlayfs clones each layer's mount only then.
        let _trees = match idmap {
            None => {
                self.plain_layers(&fs, lower, &layers, upper, work)?;
                Vec::new()
            }
            Some(ns) => self.idmapped_layers(&fs, ns, &layers, upper, work)?,
        };
        let owner = idmap.map(|ns| (ns.host_base(), ns.host_base()));
        // The overlay mount is not id-mapped itself: its layers are.
        let overlay_attrs = MountAttrs {
            idmap: None,
            ..*attrs
        };
        match owner {
            Some(ids) => fs.mount_as(ids, &overlay_attrs),
            None => fs.mount(&overlay_attrs),
        }
        .map_err(self.step_error("creating the overlay"))
    }

    /// Layers by path: one `lowerdir+` each (no length limit) where the
    /// kernel takes that (6.8), else the whole `lowerdir` string.
    fn plain_layers(
        &self,
        fs: &NewFilesystem,
        lower: &str,
        layers: &[&Path],
        upper: Option<&Path>,
        work: Option<&Path>,
    ) -> Result<(), MountError> {
        if overlay_takes_layers_one_by_one() {
            for layer in layers {
                fs.set_string("lowerdir+", layer.as_os_str())
                    .map_err(self.step_error(format!("layer {}", layer.display())))?;
            }
        } else {
            fs.set_string("lowerdir", OsStr::new(lower))
                .map_err(self.step_error("lowerdir"))?;
        }
        for (key, dir) in [("upperdir", upper), ("workdir", work)] {
            if let Some(dir) = dir {
                fs.set_string(key, dir.as_os_str())
                    .map_err(self.step_error(key))?;
            }
        }
        Ok(())
    }

    /// Layers as id-mapped detached trees, which are returned: they must
    /// stay open until the overlay is created. The upper and work
    /// directories must be on one mount for overlayfs, so one tree of their
    /// closest common directory provides both.
    fn idmapped_layers(
        &self,
        fs: &NewFilesystem,
        ns: &IdMappedNamespace,
        layers: &[&Path],
        upper: Option<&Path>,
        work: Option<&Path>,
    ) -> Result<Vec<OwnedFd>, MountError> {
        let idmapped = MountAttrs {
            idmap: Some(ns.fd()),
            ..Default::default()
        };
        let mapped_tree = |dir: &Path| -> Result<OwnedFd, MountError> {
            let tree = clone_tree(dir, false)
                .map_err(self.step_error(format!("open_tree {}", dir.display())))?;
            set_attrs(tree.as_fd(), &idmapped, false).map_err(self.step_error(idmap_hint(
                &format!("id-mapping {}", dir.display()),
                Some(ns),
            )))?;
            Ok(tree)
        };
        let mut trees = Vec::new();
        for layer in layers {
            let tree = mapped_tree(layer)?;
            fs.set_fd("lowerdir+", tree.as_fd())
                .map_err(self.step_error(format!("layer {}", layer.display())))?;
            trees.push(tree);
        }
        let (upper, work) = match (upper, work) {
            (Some(upper), Some(work)) => (upper, work),
            (None, None) => return Ok(trees),
            _ => {
                return Err(MountError::Option {
                    kind: self.kind.clone(),
                    option: "upperdir/workdir".into(),
                    reason: "must be given together",
                })
            }
        };
        let common = common_ancestor(upper, work).ok_or_else(|| MountError::Option {
            kind: self.kind.clone(),
            option: "upperdir/workdir".into(),
            reason: "must be absolute paths",
        })?;
        let tree = mapped_tree(&common)?;
        for (key, dir) in [("upperdir", upper), ("workdir", work)] {
            let relative = dir.strip_prefix(&common).expect("a common ancestor");
            let relative = if relative.as_os_str().is_empty() {
                Path::new(".")
            } else {
                relative
            };
            let fd = open_beneath(
                tree.as_fd(),
                relative,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
                Crossing::SameMount,
            )
            .map_err(self.step_error(format!("{key} {}", dir.display())))?;
            fs.set_fd(key, fd.as_fd()).map_err(self.step_error(key))?;
        }
        trees.push(tree);
        Ok(trees)
    }
}

/// Names what failed, and says what an EINVAL there usually means.
fn idmap_hint(step: &str, idmap: Option<&IdMappedNamespace>) -> String {
    match idmap {
        Some(_) => format!(
            "{step} (EINVAL here means the filesystem cannot be id-mapped: \
             set virtiofsd_user_namespace = \"never\" to share it with a privileged virtiofsd)"
        ),
        None => step.to_owned(),
    }
}

/// The deepest directory both absolute paths are in.
fn common_ancestor(a: &Path, b: &Path) -> Option<PathBuf> {
    if !a.is_absolute() || !b.is_absolute() {
        return None;
    }
    let common: PathBuf = a
        .components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    Some(common)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn overlay(dir: &Path, layers: &[&str]) -> RootfsMountSpec {
        let lower: Vec<String> = layers
            .iter()
            .map(|l| dir.join(l).display().to_string())
            .collect();
        RootfsMountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", dir.join("snap/work").display()),
                format!("upperdir={}", dir.join("snap/fs").display()),
                format!("lowerdir={}", lower.join(":")),
            ],
        }
    }

    fn layered(dir: &Path) {
        for d in ["l1", "l2", "snap/fs", "snap/work"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("l1/top"), "l1").unwrap();
        std::fs::write(dir.join("l2/bottom"), "l2").unwrap();
        std::os::unix::fs::chown(dir.join("l2/bottom"), Some(1000), Some(1000)).unwrap();
    }

    fn attach_at(mount: OwnedFd, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        let target = std::fs::File::open(at).unwrap();
        crate::sys::mount::attach(mount.as_fd(), target.as_fd()).unwrap();
    }

    fn detach_at(at: &Path) {
        nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }

    #[test]
    fn options_split_into_filesystem_options_and_mount_attributes() {
        let spec = RootfsMountSpec {
            kind: "bind".into(),
            source: "/x".into(),
            options: vec!["rbind".into(), "ro".into()],
        };
        assert!(spec.is_bind() && spec.read_only());
        assert!(!overlay(Path::new("/d"), &["l1"]).is_bind());
        assert_eq!(
            common_ancestor(Path::new("/s/9/fs"), Path::new("/s/9/work")),
            Some(PathBuf::from("/s/9"))
        );
        assert_eq!(common_ancestor(Path::new("rel"), Path::new("/a")), None);
    }

    // Needs root, as the suite does.
    #[test]
    fn an_overlay_of_plain_layers_is_built_detached() {
        let dir = tempfile::tempdir().unwrap();
        layered(dir.path());
        let mount = overlay(dir.path(), &["l1", "l2"]).build(None).unwrap();
        let at = dir.path().join("merged");
        attach_at(mount, &at);
        let top = std::fs::read_to_string(at.join("top")).unwrap();
        let bottom = std::fs::read_to_string(at.join("bottom")).unwrap();
        std::fs::write(at.join("new"), "upper").unwrap();
        detach_at(&at);
        assert_eq!((top.as_str(), bottom.as_str()), ("l1", "l2"));
        assert!(dir.path().join("snap/fs/new").exists());
    }

    #[test]
    fn an_overlay_of_idmapped_layers_keeps_on_disk_owners() {
        let dir = tempfile::tempdir().unwrap();
        layered(dir.path());
        let ns = IdMappedNamespace::create(300_000, 65_536).unwrap();
        let mount = overlay(dir.path(), &["l1", "l2"]).build(Some(&ns)).unwrap();
        let at = dir.path().join("merged");
        attach_at(mount, &at);
        let seen = std::fs::metadata(at.join("bottom")).unwrap().uid();
        // A file the mapping's uid 1000 writes (host 301000) is 1000 on disk,
        // and copy-up keeps the lower file's owner.
        let wrote = std::process::Command::new("setpriv")
            .args([
                "--reuid=301000",
                "--regid=301000",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg(format!("echo more >> {}", at.join("bottom").display()))
            .status()
            .unwrap();
        detach_at(&at);
        assert_eq!(seen, 301_000);
        assert!(wrote.success());
        let copied = std::fs::metadata(dir.path().join("snap/fs/bottom")).unwrap();
        assert_eq!((copied.uid(), copied.gid()), (1000, 1000));
    }

    #[test]
    fn a_bind_is_read_only_and_nodev_on_the_host_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let spec = RootfsMountSpec {
            kind: "bind".into(),
            source: dir.path().join("src"),
            options: vec!["rbind".into(), "ro".into()],
        };
        let at = dir.path().join("at");
        attach_at(spec.build(None).unwrap(), &at);
        let err = std::fs::write(at.join("x"), "x").unwrap_err();
        let options = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        detach_at(&at);
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        let line = options
            .lines()
            .find(|l| l.contains(at.to_str().unwrap()))
            .unwrap()
            .to_owned();
        assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
    }

    #[test]
    fn a_missing_source_is_named() {
        let err = RootfsMountSpec::bind(Path::new("/nonexistent/rootfs"))
            .build(None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/rootfs"), "{err}");
    }
}
