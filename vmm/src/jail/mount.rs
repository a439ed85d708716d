//! The filesystem a jailed process sees: its own mount namespace, whose changes never reach
//! the host, and a root it is pivoted into. The root is either a directory of the host
//! (hull-vmm and the vsock backend keep theirs: the sandbox directory) or a fresh tmpfs
//! holding only what the caller lists ([`RootPlan`]): read-only binds of host files and
//! directories, symbolic links, and device nodes.

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{mknod, umask, Mode, SFlag};
use nix::unistd::{chdir, chown, fchdir, pivot_root, Gid, Uid};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("--ro-bind {0:?}: expected SRC[:DEST], both absolute paths")]
    BindSyntax(String),
    #[error("--symlink {0:?}: expected TARGET:LINK, LINK an absolute path")]
    SymlinkSyntax(String),
    #[error("--dev {0:?}: expected one of null, zero, full, random, urandom, kvm, net/tun")]
    UnknownDevice(String),
    #[error("Bind source {path}: {source}")]
    BindSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Device /dev/{name} of the host: {source}")]
    HostDevice {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("Device /dev/{0} of the host is not a character device")]
    NotCharDevice(&'static str),
    #[error("{path} in the new root: {why}")]
    BadPath { path: PathBuf, why: &'static str },
    #[error(
        "{path} in the new root is at or inside {other}: a bind, symbolic link or device node can neither repeat nor hold another"
    )]
    Overlap { path: PathBuf, other: PathBuf },
    #[error("{step} {path}: {source}")]
    Step {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn failed(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MountError {
    let path = path.to_owned();
    move |source| MountError::Step { step, path, source }
}

fn failed_nix(step: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> MountError {
    let path = path.to_owned();
    move |e| MountError::Step {
        step,
        path,
        source: e.into(),
    }
}

/// Gives this process its own mount namespace, with every mount made private so nothing it
/// mounts or unmounts propagates back to the host (or in from it).
pub fn enter_private_mount_namespace() -> Result<(), MountError> {
    let root = Path::new("/");
    unshare(CloneFlags::CLONE_NEWNS).map_err(failed_nix("unshare(CLONE_NEWNS) for", root))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(failed_nix("making private the mounts under", root))
}

/// Bind-mounts `dir` onto itself: `pivot_root` wants the new root to be a mount point.
pub fn bind_onto_itself(dir: &Path) -> Result<(), MountError> {
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(failed_nix("bind-mounting onto itself", dir))
}

/// Makes the mount point `dir` the root and detaches the old root, so nothing of the host
/// outside `dir` is left to see; the working directory becomes the new `/`.
pub fn pivot_into(dir: &Path) -> Result<(), MountError> {
    let old_root = std::fs::File::open("/").map_err(failed("opening the old root", dir))?;
    chdir(dir).map_err(failed_nix("chdir into the new root", dir))?;
    // The old root ends up stacked on the new one, so no directory for it is needed inside
    // the new root; it is detached from there.
    pivot_root(".", ".").map_err(failed_nix("pivot_root into", dir))?;
    fchdir(old_root.as_raw_fd()).map_err(failed_nix("fchdir to the old root above", dir))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(failed_nix("detaching the old root above", dir))?;
    drop(old_root);
    chdir("/").map_err(failed_nix("chdir / in", dir))
}

/// `--ro-bind SRC[:DEST]`: a host file or directory, read-only at DEST (SRC by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    pub source: PathBuf,
    pub dest: PathBuf,
}

impl FromStr for BindSpec {
    type Err = MountError;

    fn from_str(arg: &str) -> Result<BindSpec, MountError> {
        let (source, dest) = arg.split_once(':').unwrap_or((arg, arg));
        let (source, dest) = (PathBuf::from(source), PathBuf::from(dest));
        if !source.is_absolute() || !dest.is_absolute() {
            return Err(MountError::BindSyntax(arg.to_owned()));
        }
        Ok(BindSpec { source, dest })
    }
}

/// `--symlink TARGET:LINK`: a symbolic link at LINK pointing to TARGET (as given, so a
/// relative TARGET is relative to LINK's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymlinkSpec {
    pub target: PathBuf,
    pub link: PathBuf,
}

impl FromStr for SymlinkSpec {
    type Err = MountError;

    fn from_str(arg: &str) -> Result<SymlinkSpec, MountError> {
        let syntax = || MountError::SymlinkSyntax(arg.to_owned());
        let (target, link) = arg.split_once(':').ok_or_else(syntax)?;
        let link = PathBuf::from(link);
        if target.is_empty() || !link.is_absolute() {
            return Err(syntax());
        }
        Ok(SymlinkSpec {
            target: target.into(),
            link,
        })
    }
}

/// `--dev NAME`: a device node of the host recreated in the new root's `/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    name: &'static str,
}

/// Devices anyone may use (mode 0666), then devices only the jailed program may use.
const SHARED_DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];
const PRIVATE_DEVICES: [&str; 2] = ["kvm", "net/tun"];

impl FromStr for DeviceSpec {
    type Err = MountError;

    fn from_str(arg: &str) -> Result<DeviceSpec, MountError> {
        SHARED_DEVICES
            .iter()
            .chain(PRIVATE_DEVICES.iter())
            .find(|&&name| name == arg)
            .map(|&name| DeviceSpec { name })
            .ok_or_else(|| MountError::UnknownDevice(arg.to_owned()))
    }
}

impl DeviceSpec {
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn shared(&self) -> bool {
        SHARED_DEVICES.contains(&self.name)
    }
}

/// What one path of the new root is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryKind {
    /// The host's `source` (canonical), a directory or not.
    Bind {
        source: PathBuf,
        dir: bool,
    },
    Symlink {
        target: PathBuf,
    },
    /// A character device with the host node's numbers.
    Device {
        spec: DeviceSpec,
        rdev: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Absolute, normal (no `.` or `..`), not `/`.
    path: PathBuf,
    kind: EntryKind,
}

/// A fresh root checked against the host: every bind source exists, every device is a
/// character device of the host, and no entry is inside another (nothing is ever created
/// through a bind, which would write to the host, or through a symbolic link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPlan {
    /// Sorted by path, so parents come before what they hold.
    entries: Vec<Entry>,
}

impl RootPlan {
    pub fn new(
        binds: &[BindSpec],
        symlinks: &[SymlinkSpec],
        devices: &[DeviceSpec],
    ) -> Result<RootPlan, MountError> {
        let mut entries = Vec::new();
        for bind in binds {
            let source = bind
                .source
                .canonicalize()
                .map_err(|source| MountError::BindSource {
                    path: bind.source.clone(),
                    source,
                })?;
            let dir = source.is_dir();
            entries.push(Entry {
                path: normal_path(&bind.dest)?,
                kind: EntryKind::Bind { source, dir },
            });
        }
        for symlink in symlinks {
            entries.push(Entry {
                path: normal_path(&symlink.link)?,
                kind: EntryKind::Symlink {
                    target: symlink.target.clone(),
                },
            });
        }
        for &spec in devices {
            let host = Path::new("/dev").join(spec.name);
            let meta = std::fs::metadata(&host).map_err(|source| MountError::HostDevice {
                name: spec.name,
                source,
            })?;
            if !meta.file_type().is_char_device() {
                return Err(MountError::NotCharDevice(spec.name));
            }
            entries.push(Entry {
                path: host,
                kind: EntryKind::Device {
                    spec,
                    rdev: meta.rdev(),
                },
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        for (i, entry) in entries.iter().enumerate() {
            if let Some(holder) = entries[..i]
                .iter()
                .find(|other| entry.path.starts_with(&other.path))
            {
                return Err(MountError::Overlap {
                    path: entry.path.clone(),
                    other: holder.path.clone(),
                });
            }
        }
        Ok(RootPlan { entries })
    }

    /// The host file that `path`, absolute in the new root, will name there: symbolic links
    /// are followed as the jailed program's lookup would follow them (the plan's own, and
    /// those inside binds, absolute ones from the new root). `None` if it names nothing,
    /// or something that is not inside a bind.
    pub fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let mut done = PathBuf::from("/");
        let mut todo = components(path);
        let mut links = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                done.pop();
                continue;
            }
            let candidate = done.join(&name);
            let target = match self.lookup(&candidate) {
                Lookup::Missing => return None,
                Lookup::Directory | Lookup::Device => {
                    done = candidate;
                    continue;
                }
                Lookup::Symlink(target) => target.to_owned(),
                Lookup::Host(host) => {
                    let meta = std::fs::symlink_metadata(&host).ok()?;
                    if !meta.file_type().is_symlink() {
                        done = candidate;
                        continue;
                    }
                    std::fs::read_link(&host).ok()?
                }
            };
            // Linux's own limit on links followed in one lookup.
            links += 1;
            if links > 40 {
                return None;
            }
            if target.is_absolute() {
                done = PathBuf::from("/");
            }
            let mut next = components(&target);
            next.extend(todo);
            todo = next;
        }
        match self.lookup(&done) {
            Lookup::Host(host) => Some(host),
            _ => None,
        }
    }

    fn lookup(&self, path: &Path) -> Lookup<'_> {
        for entry in &self.entries {
            let Ok(rest) = path.strip_prefix(&entry.path) else {
                continue;
            };
            return match &entry.kind {
                // Joining an empty path would add a slash, which a file refuses.
                EntryKind::Bind { source, .. } if rest.as_os_str().is_empty() => {
                    Lookup::Host(source.clone())
                }
                EntryKind::Bind { source, .. } => Lookup::Host(source.join(rest)),
                EntryKind::Symlink { target } if rest.as_os_str().is_empty() => {
                    Lookup::Symlink(target)
                }
                EntryKind::Device { .. } if rest.as_os_str().is_empty() => Lookup::Device,
                _ => Lookup::Missing,
            };
        }
        if self.entries.iter().any(|e| e.path.starts_with(path)) {
            Lookup::Directory
        } else {
            Lookup::Missing
        }
    }

    /// Builds the root over `dir` (canonical), in this process's own mount namespace:
    /// each bind source is captured first (`open_tree`, a detached copy of its mount tree,
    /// made read-only, nosuid and nodev throughout with `mount_setattr`), since the tmpfs
    /// then mounted over `dir` hides whatever was below it; then the directories, the binds
    /// (`move_mount`), symbolic links and device nodes are made in the tmpfs, which is
    /// made read-only last. `owner` owns the devices only the jailed program may use.
    pub fn build(&self, dir: &Path, owner: Option<(Uid, Gid)>) -> Result<(), MountError> {
        let mut trees = Vec::new();
        for entry in &self.entries {
            if let EntryKind::Bind { source, .. } = &entry.kind {
                trees.push(capture_read_only(source)?);
            }
        }
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some("mode=0755,size=1m,nr_inodes=4096"),
        )
        .map_err(failed_nix("mounting the new root's tmpfs over", dir))?;
        // Modes below are exact, whatever the caller's umask.
        let old_umask = umask(Mode::empty());
        let populated = self.populate(dir, trees, owner);
        umask(old_umask);
        populated?;
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
            None::<&str>,
        )
        .map_err(failed_nix("making the new root read-only at", dir))
    }

    fn populate(
        &self,
        dir: &Path,
        trees: Vec<OwnedFd>,
        owner: Option<(Uid, Gid)>,
    ) -> Result<(), MountError> {
        let mut trees = trees.into_iter();
        for entry in &self.entries {
            let path = dir.join(entry.path.strip_prefix("/").unwrap_or(&entry.path));
            if let Some(parent) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(failed("creating the directory", parent))?;
            }
            match &entry.kind {
                EntryKind::Bind { dir: true, .. } => std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(failed("creating the mount point", &path))?,
                EntryKind::Bind { dir: false, .. } => {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o444)
                        .open(&path)
                        .map_err(failed("creating the mount point", &path))?;
                }
                EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &path)
                    .map_err(failed("creating the symbolic link", &path))?,
                EntryKind::Device { spec, rdev } => {
                    let mode = if spec.shared() { 0o666 } else { 0o600 };
                    mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(mode), *rdev)
                        .map_err(failed_nix("creating the device node", &path))?;
                    if let (false, Some((uid, gid))) = (spec.shared(), owner) {
                        chown(&path, Some(uid), Some(gid))
                            .map_err(failed_nix("handing the device node over", &path))?;
                    }
                }
            }
            if let EntryKind::Bind { .. } = entry.kind {
                let tree = trees.next().expect("one captured tree per bind");
                move_tree(&tree, &path)?;
            }
        }
        Ok(())
    }
}

enum Lookup<'a> {
    Missing,
    /// A directory made to hold entries.
    Directory,
    Device,
    Symlink(&'a Path),
    /// Inside a bind: this host path.
    Host(PathBuf),
}

/// The components of `path` a lookup walks, `..` kept, `/` and `.` dropped.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// `path` if it is absolute, not `/`, and without `..`.
fn normal_path(path: &Path) -> Result<PathBuf, MountError> {
    let bad = |why| MountError::BadPath {
        path: path.to_owned(),
        why,
    };
    if !path.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(bad("`..` is not allowed"));
    }
    // Drops `.` and repeated or trailing slashes.
    let normal: PathBuf = path.components().collect();
    if normal == Path::new("/") {
        return Err(bad("the root itself is the tmpfs"));
    }
    Ok(normal)
}

// From include/uapi/linux/mount.h: libc has the system call numbers but not these.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(path: &Path) -> Result<CString, MountError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountError::BadPath {
        path: path.to_owned(),
        why: "it holds a NUL byte",
    })
}

/// A detached copy of the mount tree at `source`, read-only, nosuid and nodev throughout.
fn capture_read_only(source: &Path) -> Result<OwnedFd, MountError> {
    let path = c_path(source)?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call; the result is a
    // new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(failed("capturing (open_tree) the bind source", source)(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: open_tree returned a new descriptor nobody else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: an empty path with AT_EMPTY_PATH names the tree's descriptor itself; `attr`
    // is a `struct mount_attr` of the size passed, and outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(failed("making read-only the bind of", source)(
            io::Error::last_os_error(),
        ));
    }
    Ok(tree)
}

/// Attaches the captured `tree` at `path`.
fn move_tree(tree: &OwnedFd, path: &Path) -> Result<(), MountError> {
    let to = c_path(path)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; the empty source path
    // with MOVE_MOUNT_F_EMPTY_PATH names the tree's descriptor.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(failed("attaching the bind at", path)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(arg: &str) -> BindSpec {
        arg.parse().unwrap()
    }

    fn symlink(arg: &str) -> SymlinkSpec {
        arg.parse().unwrap()
    }

    #[test]
    fn specs_parse_and_bad_ones_are_named() {
        assert_eq!(
            bind("/usr"),
            BindSpec {
                source: "/usr".into(),
                dest: "/usr".into()
            }
        );
        assert_eq!(bind("/a/b:/c").dest, PathBuf::from("/c"));
        for bad in ["usr", "/usr:lib", "", ":/x"] {
            let err = bad.parse::<BindSpec>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert_eq!(
            symlink("usr/lib:/lib"),
            SymlinkSpec {
                target: "usr/lib".into(),
                link: "/lib".into()
            }
        );
        for bad in ["usr/lib", "usr/lib:lib", ":/lib"] {
            let err = bad.parse::<SymlinkSpec>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        for name in [
            "null", "zero", "full", "random", "urandom", "kvm", "net/tun",
        ] {
            assert_eq!(name.parse::<DeviceSpec>().unwrap().name(), name);
        }
        let err = "sda".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("\"sda\""), "{err}");
    }

    #[test]
    fn plans_refuse_missing_sources_and_entries_inside_others() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = RootPlan::new(
            &[BindSpec {
                source: missing.clone(),
                dest: "/x".into(),
            }],
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(missing.to_str().unwrap()), "{err}");

        let source = dir.path().to_str().unwrap();
        for (binds, links, named) in [
            (
                vec![format!("{source}:/a"), format!("{source}:/a/b")],
                vec![],
                "/a/b",
            ),
            (vec![format!("{source}:/a")], vec!["x:/a"], "/a"),
            (
                vec![format!("{source}:/lib/x")],
                vec!["usr/lib:/lib"],
                "/lib/x",
            ),
            (vec![format!("{source}:/dev")], vec![], "/dev/null"),
        ] {
            let binds: Vec<BindSpec> = binds.iter().map(|b| bind(b)).collect();
            let links: Vec<SymlinkSpec> = links.iter().map(|l| symlink(l)).collect();
            let err = RootPlan::new(&binds, &links, &["null".parse().unwrap()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(named) && err.contains("inside"), "{err}");
        }
        for (dest, why) in [("/", "root itself"), ("/a/../b", "`..`")] {
            let err = RootPlan::new(
                &[BindSpec {
                    source: dir.path().to_owned(),
                    dest: dest.into(),
                }],
                &[],
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(why), "{dest}: {err}");
        }
    }

    #[test]
    fn programs_resolve_through_plan_and_host_symlinks() {
        // A host tree: usr/bin/prog, usr/bin/alias -> prog, usr/bin/abs -> /usr/bin/prog,
        // usr/bin/out -> /etc/passwd (outside every bind).
        let host = tempfile::tempdir().unwrap();
        let usr = host.path().join("usr");
        std::fs::create_dir_all(usr.join("bin")).unwrap();
        std::fs::write(usr.join("bin/prog"), b"").unwrap();
        std::os::unix::fs::symlink("prog", usr.join("bin/alias")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/prog", usr.join("bin/abs")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", usr.join("bin/out")).unwrap();
        std::os::unix::fs::symlink("loop", usr.join("bin/loop")).unwrap();
        let usr_src = usr.to_str().unwrap();
        let file = host.path().join("tool");
        std::fs::write(&file, b"").unwrap();
        let plan = RootPlan::new(
            &[
                bind(&format!("{usr_src}:/usr")),
                bind(&format!("{}:/opt/tool", file.to_str().unwrap())),
            ],
            &[symlink("usr/bin:/bin"), symlink("/usr/bin/prog:/sbin/p")],
            &["null".parse().unwrap()],
        )
        .unwrap();
        let prog = usr.canonicalize().unwrap().join("bin/prog");
        for path in [
            "/usr/bin/prog",
            "/bin/prog",
            "/bin/alias",
            "/bin/abs",
            "/sbin/p",
            "/usr/../bin/./prog",
        ] {
            assert_eq!(plan.resolve(Path::new(path)), Some(prog.clone()), "{path}");
        }
        assert_eq!(
            plan.resolve(Path::new("/opt/tool")),
            Some(file.canonicalize().unwrap())
        );
        for path in [
            "/usr/bin/missing",
            "/bin/out",
            "/bin/loop",
            "/etc/passwd",
            "/dev/null",
            "/opt",
            "/",
        ] {
            assert_eq!(plan.resolve(Path::new(path)), None, "{path}");
        }
    }
}
