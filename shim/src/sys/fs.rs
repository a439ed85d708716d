//! Files and directories reached from a directory descriptor without ever
//! following a symlink, leaving the directory, or (where it matters)
//! crossing into another mount: the way the shim works inside directories
//! that the guest can write to (the virtio-fs share), where any component
//! may have been replaced by a symlink to a host path.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{
    chownat, mkdirat, openat2, statx, unlinkat, AtFlags, Dir, FileType, Gid, Mode, OFlags,
    ResolveFlags, StatxFlags, Uid,
};

/// Which mount a resolution may end on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// Only the directory's own mount: a mount point on the way is an error.
    SameMount,
    /// Any mount below the directory (to reach a mount's root).
    AnyMount,
}

/// Opens `path` beneath `dir`: `..` cannot leave it, no symlink (nor magic
/// link) is followed anywhere on the path.
pub fn open_beneath(
    dir: BorrowedFd,
    path: &Path,
    flags: OFlags,
    crossing: Crossing,
) -> io::Result<OwnedFd> {
    let mut resolve =
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    if crossing == Crossing::SameMount {
        resolve |= ResolveFlags::NO_XDEV;
    }
    let mode = if flags.contains(OFlags::CREATE) {
        Mode::from_raw_mode(0o644)
    } else {
        Mode::empty()
    };
    Ok(openat2(
        dir,
        path,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        mode,
        resolve,
    )?)
}

/// The directory `path` beneath `dir` on `dir`'s own mount, created with
/// `mode` (and `owner`) where missing, one component at a time.
pub fn mkdir_all_beneath(
    dir: BorrowedFd,
    path: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<OwnedFd> {
    let mut current = open_beneath(dir, Path::new("."), dir_flags(), Crossing::SameMount)?;
    for name in normal_components(path)? {
        current = mkdir_in(current.as_fd(), name, mode, owner)?;
    }
    Ok(current)
}

/// The directory `name` in `dir` (created if missing), never a symlink and
/// on `dir`'s mount.
pub fn mkdir_in(
    dir: BorrowedFd,
    name: &OsStr,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<OwnedFd> {
    let created = match mkdirat(dir, name, Mode::from_raw_mode(mode)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(err) => return Err(err.into()),
    };
    let child = open_beneath(dir, Path::new(name), dir_flags(), Crossing::SameMount)?;
    if created {
        set_owner(child.as_fd(), owner)?;
    }
    Ok(child)
}

/// An empty regular file `name` in `dir` to mount a file on (created if
/// missing, never truncated, never a symlink, on `dir`'s mount).
pub fn file_in(dir: BorrowedFd, name: &OsStr, owner: Option<(u32, u32)>) -> io::Result<OwnedFd> {
    let file = open_beneath(
        dir,
        Path::new(name),
        OFlags::RDONLY | OFlags::CREATE,
        Crossing::SameMount,
    )?;
    let stat = rustix::fs::fstat(&file)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a regular file",
                name.to_string_lossy()
            ),
        ));
    }
    set_owner(file.as_fd(), owner)?;
    Ok(file)
}

fn set_owner(fd: BorrowedFd, owner: Option<(u32, u32)>) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        // fchown(2) refuses O_PATH descriptors; the empty path takes them.
        chownat(fd, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH)?;
    }
    Ok(())
}

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY
}

/// The components of a relative path with no `.`, `..` or root in it.
pub fn normal_components(path: &Path) -> io::Result<Vec<&OsStr>> {
    path.components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", path.display()),
            )),
        })
        .collect()
}

/// The id of the mount `fd` (or `name` in it) is on, without following a
/// symlink.
pub fn mount_id(dir: BorrowedFd, name: &OsStr) -> io::Result<u64> {
    let flags = if name.is_empty() {
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    let stat = statx(dir, name, flags, StatxFlags::MNT_ID)?;
    Ok(stat.stx_mnt_id)
}

/// What [`remove_beneath`] could not remove.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Entries on another mount (still mounted): left alone.
    pub mounts: Vec<OsString>,
    /// Entries whose removal failed, with the reason.
    pub failed: Vec<(OsString, String)>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.failed.is_empty()
    }
}

/// Removes `name` in `dir` and, if it is a directory, everything in it, but
/// never follows a symlink (a symlink is removed as a link) and never goes
/// into another mount: a directory that is a mount point stays, with what is
/// below it, and so do the directories above it.
pub fn remove_beneath(dir: BorrowedFd, name: &OsStr) -> Leftovers {
    let mut leftovers = Leftovers::default();
    match mount_id(dir, OsStr::new("")) {
        Ok(dir_mount) => remove_entry(dir, name, dir_mount, name, &mut leftovers),
        Err(err) => leftovers.failed.push((name.to_owned(), err.to_string())),
    }
    leftovers
}

fn remove_entry(
    dir: BorrowedFd,
    name: &OsStr,
    dir_mount: u64,
    shown: &OsStr,
    leftovers: &mut Leftovers,
) {
    let failed = |leftovers: &mut Leftovers, err: &dyn std::fmt::Display| {
        leftovers.failed.push((shown.to_owned(), err.to_string()));
    };
    let stat = match statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::TYPE | StatxFlags::MNT_ID,
    ) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return,
        Err(err) => return failed(leftovers, &err),
    };
    if stat.stx_mnt_id != dir_mount {
        leftovers.mounts.push(shown.to_owned());
        return;
    }
    if FileType::from_raw_mode(stat.stx_mode.into()) != FileType::Directory {
        if let Err(err) = unlinkat(dir, name, AtFlags::empty()) {
            failed(leftovers, &err);
        }
        return;
    }
    let child = match open_beneath(
        dir,
        Path::new(name),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Crossing::SameMount,
    ) {
        Ok(child) => child,
        Err(err) => return failed(leftovers, &err),
    };
    let names: Vec<OsString> = match Dir::read_from(&child) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|entry| OsStr::from_bytes(entry.file_name().to_bytes()).to_owned())
            .filter(|n| n != "." && n != "..")
            .collect(),
        Err(err) => return failed(leftovers, &err),
    };
    let before = leftovers.mounts.len() + leftovers.failed.len();
    for entry in names {
        let shown = Path::new(shown).join(&entry);
        remove_entry(
            child.as_fd(),
            &entry,
            dir_mount,
            shown.as_os_str(),
            leftovers,
        );
    }
    // Something below stayed: so must this directory.
    if leftovers.mounts.len() + leftovers.failed.len() == before {
        if let Err(err) = unlinkat(dir, name, AtFlags::REMOVEDIR) {
            failed(leftovers, &err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn open_dir(path: &Path) -> OwnedFd {
        std::fs::File::open(path).unwrap().into()
    }

    #[test]
    fn nothing_beneath_a_directory_follows_a_symlink_or_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        symlink(&outside, share.join("link")).unwrap();
        let root = open_dir(&share);

        for path in ["link/x", "../outside", "link"] {
            let err = mkdir_all_beneath(root.as_fd(), Path::new(path), 0o755, None).unwrap_err();
            assert!(
                matches!(
                    err.raw_os_error(),
                    Some(libc::ELOOP)
                        | Some(libc::EXDEV)
                        | Some(libc::EINVAL)
                        | Some(libc::ENOTDIR)
                ) || err.kind() == io::ErrorKind::InvalidInput,
                "{path}: {err}"
            );
        }
        let err = file_in(root.as_fd(), OsStr::new("link"), None).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        let made = mkdir_all_beneath(root.as_fd(), Path::new("c1/mounts"), 0o750, None).unwrap();
        file_in(made.as_fd(), OsStr::new("0"), None).unwrap();
        assert!(share.join("c1/mounts/0").is_file());
    }

    #[test]
    fn an_existing_file_mount_point_is_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "kept").unwrap();
        let root = open_dir(dir.path());
        file_in(root.as_fd(), OsStr::new("f"), None).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f")).unwrap(),
            "kept"
        );
    }

    #[test]
    fn removal_takes_links_as_links_and_stops_at_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious"), "data").unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/file"), "x").unwrap();
        symlink(&victim, tree.join("a/escape")).unwrap();
        std::fs::create_dir_all(tree.join("m/mounted")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &tree.join("m/mounted"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(tree.join("m/mounted/inside"), "x").unwrap();

        let root = open_dir(dir.path());
        let leftovers = remove_beneath(root.as_fd(), OsStr::new("tree"));
        assert_eq!(leftovers.mounts, vec![OsString::from("tree/m/mounted")]);
        assert!(leftovers.failed.is_empty(), "{leftovers:?}");
        assert!(!tree.join("a").exists());
        assert!(tree.join("m/mounted/inside").exists());
        assert_eq!(
            std::fs::read_to_string(victim.join("precious")).unwrap(),
            "data"
        );
        nix::mount::umount2(&tree.join("m/mounted"), nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert!(remove_beneath(root.as_fd(), OsStr::new("tree")).is_empty());
        assert!(!tree.exists());
    }
}
