//! Mounts made and undone by descriptor, with Linux's mount API (`open_tree`,
//! `fsopen`/`fsmount`, `mount_setattr`, `move_mount`): a mount is built
//! detached, given its attributes (read-only, nosuid, nodev, an id-mapping),
//! and only then attached, onto a mount point the caller opened without
//! following symlinks. Nothing here resolves a path that the guest could
//! have changed between a check and a use.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::mount::{
    fsconfig_create, fsconfig_set_fd, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen,
    move_mount, open_tree, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags,
    OpenTreeFlags,
};

/// Attributes a mount gets before it is attached.
#[derive(Debug, Clone, Copy, Default)]
pub struct MountAttrs<'a> {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    /// The user namespace whose mapping the mount's ids go through.
    pub idmap: Option<BorrowedFd<'a>>,
    pub propagation: Propagation,
}

/// What a mount receives of mounts made later below its source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    /// As it came (a copy of a shared mount is its peer).
    #[default]
    Unchanged,
    /// Nothing, either way.
    Private,
    /// What is mounted below the source later, never the other way.
    Slave,
}

impl Propagation {
    fn flag(self) -> u64 {
        match self {
            Propagation::Unchanged => 0,
            Propagation::Private => libc::MS_PRIVATE,
            Propagation::Slave => libc::MS_SLAVE,
        }
    }
}

impl MountAttrs<'_> {
    fn flags(&self) -> u64 {
        let mut flags = 0;
        for (on, flag) in [
            (self.read_only, MOUNT_ATTR_RDONLY),
            (self.nosuid, MOUNT_ATTR_NOSUID),
            (self.nodev, MOUNT_ATTR_NODEV),
            (self.noexec, MOUNT_ATTR_NOEXEC),
            (self.idmap.is_some(), MOUNT_ATTR_IDMAP),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags
    }
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (include/uapi/linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of the mount (and, with `recursive`, the mounts below
/// it) at `source`, which the host chose: the caller's path, resolved as
/// given.
pub fn clone_tree(source: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    Ok(open_tree(rustix::fs::CWD, source, flags)?)
}

/// Gives the detached mount `tree` (and with `recursive`, its submounts)
/// the attributes `attrs`.
pub fn set_attrs(tree: BorrowedFd, attrs: &MountAttrs, recursive: bool) -> io::Result<()> {
    let flags = attrs.flags();
    if flags == 0 && attrs.propagation == Propagation::Unchanged {
        return Ok(());
    }
    let attr = MountAttr {
        attr_set: flags,
        attr_clr: 0,
        propagation: attrs.propagation.flag(),
        userns_fd: attrs.idmap.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let mut at_flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        at_flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is a valid empty C string, `attr` is a live
    // `struct mount_attr` whose size is passed with it; the kernel reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches the detached mount `tree` onto exactly the inode `target` refers
/// to (no path is resolved again).
pub fn attach(tree: BorrowedFd, target: BorrowedFd) -> io::Result<()> {
    Ok(move_mount(
        tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?)
}

/// Lazily detaches the mount whose root `mount_root` refers to (with
/// everything mounted below it). The path is the descriptor's magic link,
/// which leads to the very mount the descriptor holds.
pub fn detach(mount_root: BorrowedFd) -> io::Result<()> {
    let path = format!("/proc/self/fd/{}", mount_root.as_raw_fd());
    nix::mount::umount2(path.as_str(), nix::mount::MntFlags::MNT_DETACH)?;
    Ok(())
}

/// A filesystem being configured with `fsopen`/`fsconfig`, then created and
/// turned into a detached mount.
pub struct NewFilesystem {
    fd: OwnedFd,
    fstype: String,
}

impl NewFilesystem {
    pub fn open(fstype: &str) -> io::Result<Self> {
        Ok(NewFilesystem {
            fd: fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?,
            fstype: fstype.to_owned(),
        })
    }

    pub fn fstype(&self) -> &str {
        &self.fstype
    }

    pub fn set_string(&self, key: &str, value: &OsStr) -> io::Result<()> {
        fsconfig_set_string(&self.fd, key, value).map_err(|e| self.explain(e))
    }

    pub fn set_flag(&self, key: &str) -> io::Result<()> {
        fsconfig_set_flag(&self.fd, key).map_err(|e| self.explain(e))
    }

    pub fn set_fd(&self, key: &str, fd: BorrowedFd) -> io::Result<()> {
        fsconfig_set_fd(&self.fd, key, fd).map_err(|e| self.explain(e))
    }

    /// Creates the filesystem (the superblock takes the calling thread's
    /// credentials, which overlayfs keeps as its mounter's) and returns it as
    /// a detached mount with `attrs`.
    pub fn mount(self, attrs: &MountAttrs) -> io::Result<OwnedFd> {
        fsconfig_create(&self.fd).map_err(|e| self.explain(e))?;
        self.into_mount(attrs)
    }

    /// Like [`Self::mount`], but the filesystem is created with the
    /// filesystem uid and gid `ids` (and all of our capabilities), on a
    /// thread of its own: credentials are per thread, and only that
    /// thread's are changed. overlayfs keeps these as its mounter's and does
    /// its copy-ups and whiteouts with them; through id-mapped layers they
    /// must be ids the mapping knows.
    pub fn mount_as(self, ids: (u32, u32), attrs: &MountAttrs) -> io::Result<OwnedFd> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _as_ids = FsIds::switch(ids)?;
                    fsconfig_create(&self.fd).map_err(|e| self.explain(e))
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the mounting thread panicked")))
        })?;
        self.into_mount(attrs)
    }

    fn into_mount(self, attrs: &MountAttrs) -> io::Result<OwnedFd> {
        let mut flags = MountAttrFlags::empty();
        for (on, flag) in [
            (attrs.read_only, MountAttrFlags::MOUNT_ATTR_RDONLY),
            (attrs.nosuid, MountAttrFlags::MOUNT_ATTR_NOSUID),
            (attrs.nodev, MountAttrFlags::MOUNT_ATTR_NODEV),
            (attrs.noexec, MountAttrFlags::MOUNT_ATTR_NOEXEC),
        ] {
            if on {
                flags |= flag;
            }
        }
        let mount =
            fsmount(&self.fd, FsMountFlags::FSMOUNT_CLOEXEC, flags).map_err(|e| self.explain(e))?;
        if attrs.idmap.is_some() {
            let idmap_only = MountAttrs {
                idmap: attrs.idmap,
                ..Default::default()
            };
            set_attrs(mount.as_fd(), &idmap_only, false)?;
        }
        Ok(mount)
    }

    /// The kernel's own explanation, which it queues on the context's
    /// descriptor (e.g. overlayfs's "workdir and upperdir must reside under
    /// the same mount"), joined to the errno.
    fn explain(&self, err: rustix::io::Errno) -> io::Error {
        let mut messages = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = rustix::io::read(&self.fd, &mut buf) {
            if n == 0 {
                break;
            }
            messages.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
        }
        let err = io::Error::from(err);
        if messages.is_empty() {
            err
        } else {
            io::Error::new(err.kind(), format!("{err} ({})", messages.join("; ")))
        }
    }
}

/// This thread's filesystem ids switched to others, with the effective
/// capabilities that the switch clears raised again; switched back on drop.
struct FsIds;

impl FsIds {
    fn switch((uid, gid): (u32, u32)) -> io::Result<FsIds> {
        // SAFETY: setfsgid/setfsuid change only this thread's credentials.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        let guard = FsIds;
        raise_effective_capabilities()?;
        Ok(guard)
    }
}

impl Drop for FsIds {
    fn drop(&mut self) {
        // Back to root's, which raises the filesystem capabilities again.
        // SAFETY: as above.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
        }
    }
}

/// Makes this thread's effective capabilities its permitted ones.
fn raise_effective_capabilities() -> io::Result<()> {
    // `struct __user_cap_header_struct` (version 3, this thread) and two
    // `struct __user_cap_data_struct` of (effective, permitted, inheritable).
    let mut header = [0x2008_0522u32, 0];
    let mut data = [0u32; 6];
    // SAFETY: header and data have the sizes the version-3 ABI defines.
    if unsafe { libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    data[0] = data[1];
    data[3] = data[4];
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub mount_point: PathBuf,
    /// The mount's own `ro` (not the filesystem's).
    pub read_only: bool,
    pub fstype: String,
    /// The filesystem's own options (for cgroup v1, its controllers).
    pub super_options: String,
}

/// The mounts of this process's namespace.
pub fn mount_table() -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .map(|line| {
            parse_mountinfo_line(line).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unreadable /proc/self/mountinfo line {line:?}"),
                )
            })
        })
        .collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`: the
/// mount id, the mount point (field 5), its options (field 6) and the type
/// after the `-`.
fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let mount_point = unescape(fields.nth(3)?);
    let read_only = fields.next()?.split(',').any(|o| o == "ro");
    let mut after = fields.skip_while(|f| *f != "-").skip(1);
    let fstype = after.next()?.to_owned();
    let super_options = after.nth(1).unwrap_or_default().to_owned();
    Some(MountEntry {
        id,
        mount_point,
        read_only,
        fstype,
        super_options,
    })
}

/// The kernel escapes space, tab, newline and backslash in mount paths as
/// three octal digits.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(u8::is_ascii_digit));
        match (bytes[i], octal) {
            (b'\\', Some(octal)) => {
                let value = octal
                    .iter()
                    .fold(0u32, |acc, digit| acc * 8 + u32::from(digit - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// The outermost mounts strictly below `dir` in `table`: detaching these
/// (lazily, which takes what is mounted on them too) leaves nothing mounted
/// below `dir`.
pub fn outermost_below<'a>(table: &'a [MountEntry], dir: &Path) -> Vec<&'a MountEntry> {
    let below: Vec<&MountEntry> = table
        .iter()
        .filter(|m| m.mount_point != dir && m.mount_point.starts_with(dir))
        .collect();
    let mut outermost: Vec<&MountEntry> = below
        .iter()
        .filter(|m| {
            !below.iter().any(|other| {
                other.mount_point != m.mount_point && m.mount_point.starts_with(&other.mount_point)
            })
        })
        .copied()
        .collect();
    // Mounts stacked on one mount point: the latest (highest id) first.
    outermost.sort_by_key(|m| std::cmp::Reverse(m.id));
    outermost
}

/// Detaches every mount below `root_path/relative`, where `root` is a
/// descriptor of `root_path`: the outermost ones, each opened from `root`
/// without following a symlink, and detached only if it still is the mount
/// the table names (a guest may have renamed directories in between).
/// Returns the mounts that stayed, with why.
pub fn detach_below(
    root: BorrowedFd,
    root_path: &Path,
    relative: &Path,
) -> Vec<(PathBuf, io::Error)> {
    let table = match mount_table() {
        Ok(table) => table,
        Err(err) => return vec![(root_path.join(relative), err)],
    };
    let mut stayed = Vec::new();
    for entry in outermost_below(&table, &root_path.join(relative)) {
        let Ok(inside) = entry.mount_point.strip_prefix(root_path) else {
            continue;
        };
        let detached = crate::sys::fs::open_beneath(
            root,
            inside,
            rustix::fs::OFlags::PATH,
            crate::sys::fs::Crossing::AnyMount,
        )
        .and_then(
            |fd| match crate::sys::fs::mount_id(fd.as_fd(), OsStr::new(""))? {
                id if id == entry.id => detach(fd.as_fd()),
                _ => Err(io::Error::other("the path no longer leads to that mount")),
            },
        );
        if let Err(err) = detached {
            stayed.push((entry.mount_point.clone(), err));
        }
    }
    stayed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_id_mount_point_and_type() {
        let line = "36 35 98:0 /mnt1 /run/hull/a\\040b rw,noatime master:1 - ext3 /dev/root rw";
        assert_eq!(
            parse_mountinfo_line(line),
            Some(MountEntry {
                id: 36,
                mount_point: "/run/hull/a b".into(),
                read_only: false,
                fstype: "ext3".into(),
                super_options: "rw".into(),
            })
        );
        let no_optional = "40 1 0:50 / /run/hull/s/shared ro,nosuid - tmpfs hull-share rw";
        let entry = parse_mountinfo_line(no_optional).unwrap();
        assert_eq!(entry.fstype, "tmpfs");
        assert!(entry.read_only);
        assert_eq!(parse_mountinfo_line("garbage"), None);
    }

    #[test]
    fn escapes_are_undone_and_stray_backslashes_kept() {
        assert_eq!(
            unescape("/a\\011b\\012c\\134d"),
            PathBuf::from("/a\tb\nc\\d")
        );
        assert_eq!(unescape("/plain\\9"), PathBuf::from("/plain\\9"));
    }

    #[test]
    fn only_the_outermost_mounts_below_a_directory_are_detached() {
        let entry = |id, path: &str| MountEntry {
            id,
            mount_point: path.into(),
            read_only: false,
            fstype: "tmpfs".into(),
            super_options: "rw".into(),
        };
        let table = vec![
            entry(1, "/"),
            entry(2, "/run/hull/s"),
            entry(3, "/run/hull/s/shared"),
            entry(4, "/run/hull/s/shared/c/rootfs"),
            entry(5, "/run/hull/s/other"),
            entry(6, "/run/hull/s/other"),
            entry(7, "/run/hull/sx"),
        ];
        let ids: Vec<u64> = outermost_below(&table, Path::new("/run/hull/s"))
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, vec![6, 5, 3]);
    }

    // Needs root, as the suite does.
    #[test]
    fn a_detached_tmpfs_is_attached_read_only_by_descriptor_and_detached_again() {
        let dir = tempfile::tempdir().unwrap();
        let target = std::fs::File::open(dir.path()).unwrap();
        let fs = NewFilesystem::open("tmpfs").unwrap();
        fs.set_string("size", OsStr::new("1m")).unwrap();
        let mount = fs
            .mount(&MountAttrs {
                read_only: true,
                nodev: true,
                ..Default::default()
            })
            .unwrap();
        attach(mount.as_fd(), target.as_fd()).unwrap();
        let err = std::fs::write(dir.path().join("x"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        let table = mount_table().unwrap();
        let ours: Vec<_> = outermost_below(&table, dir.path().parent().unwrap())
            .into_iter()
            .filter(|m| m.mount_point == dir.path())
            .collect();
        assert_eq!(ours.len(), 1, "{table:?}");
        let root = std::fs::File::open(dir.path()).unwrap();
        detach(root.as_fd()).unwrap();
        drop(root);
        std::fs::write(dir.path().join("x"), "x").unwrap();
    }

    #[test]
    fn the_kernel_explanation_is_kept_in_the_error() {
        let fs = NewFilesystem::open("tmpfs").unwrap();
        let err = fs
            .set_string("size", OsStr::new("lots"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Invalid argument") && err.contains("size"),
            "{err}"
        );
    }
}
