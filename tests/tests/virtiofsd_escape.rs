//! virtiofsd as the shim runs it, facing a hostile guest kernel. virtiofsd
//! passes the names in FUSE requests unchecked to mkdirat, unlinkat,
//! symlinkat, renameat2, mknodat and linkat, so `..`, a `/` or a symlink in
//! a name is stopped only by its sandbox (`--sandbox namespace`, the share
//! its root) and, unprivileged, by its user namespace. This test sets the
//! share up as the shim does (a volume and a rootfs mounted in it), starts
//! virtiofsd with the shim's arguments and jail, speaks FUSE to it as a
//! virtiofs driver through hull-vmm's virtio-fs device, and sends names that
//! climb out of the share from its root, from a subdirectory and from the
//! mounts in it. Whatever virtiofsd replies, nothing outside the share may
//! appear, disappear or change, and no reply may name a file outside it;
//! the guest's ordinary requests must still work, with the owner they ask
//! for on disk.
//!
//! Needs root (mounts, user namespaces), virtiofsd, and hull-vmm built (`cargo
//! test --workspace` builds it).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hull_shim::config::Config;
use hull_shim::rootfs::{RootfsMountSpec, ShareBind, SharedDir};
use hull_shim::sandbox::{
    create_state_dir, remove_state, share_user_namespace, SandboxPaths, Virtiofsd, VirtiofsdLaunch,
    SHARED_DIR_NAME,
};
use hull_shim::sys::process::find_program;
use hull_vmm::devices::virtio::test_support::fs::{FsGuest, FuseResult};
use hull_vmm::devices::virtio::test_support::fuse::{FuseEntryOut, FUSE_ROOT_ID};

/// The guest user of the ordinary requests: neither root nor the owner of
/// the volume, so the owner of what they make can only come from the request.
const USER: (u32, u32) = (1234, 5678);
/// Enough `../` to climb from any directory of the test to `/`.
const CLIMB: usize = 16;
const PRECIOUS: &[u8] = b"precious host data";
const CONSOLE: &[u8] = b"guest console";
/// Where the volume is bound in the share, as the shim binds a container's.
const VOLUME: &str = "c1/mounts/0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Root of the sandbox's id-mapping user namespace (this host allows it).
    Unprivileged,
    /// Host root, still in its own namespaces.
    Privileged,
}

#[tokio::test]
async fn an_unprivileged_virtiofsd_keeps_a_hostile_guest_in_the_share() {
    guest_stays_in_the_share(Mode::Unprivileged).await;
}

#[tokio::test]
async fn a_privileged_virtiofsd_keeps_a_hostile_guest_in_the_share() {
    guest_stays_in_the_share(Mode::Privileged).await;
}

async fn guest_stays_in_the_share(mode: Mode) {
    let jailer = hull_tests::artifacts::bin_dir().join("hull-vmm");
    assert!(
        jailer.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (make test)",
        jailer.display()
    );
    let config = Config::default();
    let binary = find_program(&config.virtiofsd).unwrap_or_else(|| {
        panic!(
            "{} not found: install it with `make deps`",
            config.virtiofsd.display()
        )
    });

    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().canonicalize().unwrap();
    // Searchable by anyone, as most host directories are, and a victim
    // anyone may write to (like /tmp): an unprivileged virtiofsd outside its
    // sandbox could change it, so only the sandbox stands in the way.
    chmod(&top, 0o755);
    let victim = top.join("victim");
    std::fs::create_dir_all(victim.join("empty")).unwrap();
    std::fs::write(victim.join("precious"), PRECIOUS).unwrap();
    chmod(&victim, 0o777);
    chmod(&victim.join("empty"), 0o777);
    chmod(&victim.join("precious"), 0o666);
    // Root's, writable by anyone: what the guest's user makes in it can
    // only be owned by that user through the request's credentials.
    let volume = top.join("volume");
    std::fs::create_dir(&volume).unwrap();
    chmod(&volume, 0o777);
    let rootfs = top.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/sh"), "#!").unwrap();

    let state = top.join("state");
    let paths = SandboxPaths::new(&state, "escape");
    create_state_dir(&state, &paths.dir).unwrap();
    std::fs::write(&paths.console_log, CONSOLE).unwrap();
    let remove_state_guard = RemoveState(&paths);

    let userns = match mode {
        Mode::Unprivileged => {
            Some(Arc::new(share_user_namespace(&config).unwrap().expect(
                "this kernel cannot id-map the share, so virtiofsd would run as root",
            )))
        }
        Mode::Privileged => None,
    };
    let share = SharedDir::create(&paths.dir, SHARED_DIR_NAME, userns.clone()).unwrap();
    let bind = ShareBind {
        source: volume.clone(),
        read_only: false,
        recursive: true,
        recursive_read_only: false,
        receives_host_mounts: false,
    };
    share.bind(&bind, Path::new(VOLUME)).unwrap();
    share
        .mount_rootfs("c1", &[RootfsMountSpec::bind(&rootfs)])
        .unwrap();

    let log = File::options()
        .create(true)
        .append(true)
        .open(&paths.virtiofsd_log)
        .unwrap();
    let launch = VirtiofsdLaunch {
        jailer: &jailer,
        binary: &binary,
        userns: userns.as_deref(),
    };
    let virtiofsd = Virtiofsd::start(
        &launch,
        &paths.virtiofsd,
        &paths.shared,
        OwnedFd::from(log),
        Vec::new(),
    )
    .unwrap();
    let read_log = || std::fs::read_to_string(&paths.virtiofsd_log).unwrap_or_default();
    let mut guest = FsGuest::mount(&paths.virtiofsd)
        .unwrap_or_else(|e| panic!("{e}; virtiofsd's log: {}", read_log()));

    // What the guest may do: make, write and rename files as its user.
    let host_base = userns.as_ref().map_or(0, |ns| ns.host_base());
    ordinary_requests_work(&mut guest, &volume, &paths.shared.join(VOLUME), host_base);
    let victim_path = victim.strip_prefix("/").unwrap().to_str().unwrap();
    let bases = prepare_bases(&mut guest, victim_path);

    // The share and what is mounted in it are the guest's to change.
    let skip = [paths.shared.clone(), volume.clone(), rootfs.clone()];
    let before = snapshot(&top, &skip, &paths.virtiofsd_log);
    for (path, what) in [
        (victim.join("precious"), PRECIOUS),
        (paths.console_log.clone(), CONSOLE),
    ] {
        let relative = path.strip_prefix(&top).unwrap();
        assert!(
            matches!(&before[relative], Node::File { content, .. } if content == what),
            "the snapshot does not see {}",
            path.display()
        );
    }

    let mut attack = Attack::new(&mut guest, &before, &top);
    for base in &bases {
        attack.from(base, victim_path);
    }
    let Attack {
        replies,
        outside_replies,
        ..
    } = attack;
    eprintln!("{mode:?}: {}", summary(&replies));

    let after = snapshot(&top, &skip, &paths.virtiofsd_log);
    let changes = changes(&before, &after);
    let succeeded: Vec<&str> = replies
        .iter()
        .filter(|r| r.ends_with(" -> ok"))
        .map(String::as_str)
        .collect();
    assert!(
        changes.is_empty() && outside_replies.is_empty(),
        "{mode:?}: the guest acted outside the share through virtiofsd:\n{}\n{}\n\
         the requests that succeeded:\n{}\nvirtiofsd's log: {}",
        changes.join("\n"),
        outside_replies.join("\n"),
        succeeded.join("\n"),
        read_log()
    );
    // virtiofsd still serves, and what the guest made is still there.
    let volume_base = bases.iter().find(|b| b.label == "volume").unwrap();
    let made = guest.lookup(volume_base.node, b"made-dir").unwrap();
    assert_eq!(made.attr.uid, USER.0);

    // Closing the session ends virtiofsd; the share goes as the shim removes it.
    drop(guest);
    virtiofsd.stop(Duration::from_secs(5)).await;
    drop(share);
    drop(remove_state_guard);
    assert!(!paths.dir.exists());
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !table.contains(top.to_str().unwrap()),
        "mounts left under {}:\n{table}",
        top.display()
    );
    assert_eq!(std::fs::read(victim.join("precious")).unwrap(), PRECIOUS);
    assert_eq!(
        std::fs::read(volume.join("renamed-file")).unwrap(),
        b"written by the guest"
    );
    assert!(rootfs.join("bin/sh").exists());
}

/// Makes a directory and a file in the volume as [`USER`], writes the file
/// and renames it: all must work, and what they made must be the user's on
/// disk, and the id-mapping's view of it through the share.
fn ordinary_requests_work(guest: &mut FsGuest, volume: &Path, in_share: &Path, host_base: u32) {
    let c1 = guest.lookup(FUSE_ROOT_ID, b"c1").unwrap();
    let mounts = guest.lookup(c1.nodeid, b"mounts").unwrap();
    let volume_node = guest.lookup(mounts.nodeid, b"0").unwrap().nodeid;

    guest.set_caller(USER.0, USER.1);
    let made = guest.mkdir(volume_node, b"made-dir", 0o755).unwrap();
    assert_eq!((made.attr.uid, made.attr.gid), USER);
    let (file, open) = guest
        .create(made.nodeid, b"made-file", libc::O_WRONLY as u32, 0o644)
        .unwrap();
    assert_eq!((file.attr.uid, file.attr.gid), USER);
    let data = b"written by the guest";
    let written = guest.write(file.nodeid, open.fh, 0, data).unwrap();
    assert_eq!(written as usize, data.len());
    guest.release(file.nodeid, open.fh).unwrap();
    guest
        .rename(made.nodeid, b"made-file", volume_node, b"renamed-file")
        .unwrap();
    guest.set_caller(0, 0);
    let plain = guest.mkdir(FUSE_ROOT_ID, b"plain", 0o755).unwrap();
    assert_eq!((plain.attr.uid, plain.attr.gid), (0, 0));

    assert_eq!(std::fs::read(volume.join("renamed-file")).unwrap(), data);
    assert!(!volume.join("made-dir/made-file").exists());
    for name in ["made-dir", "renamed-file"] {
        let on_disk = std::fs::metadata(volume.join(name)).unwrap();
        assert_eq!((on_disk.uid(), on_disk.gid()), USER, "{name} on disk");
        let mapped = std::fs::metadata(in_share.join(name)).unwrap();
        assert_eq!(
            (mapped.uid(), mapped.gid()),
            (host_base + USER.0, host_base + USER.1),
            "{name} through the share"
        );
    }
}

/// A directory the attack sends names from; `depth` is how far below the
/// share's root it is.
struct Base {
    label: &'static str,
    node: u64,
    depth: usize,
    /// A file of the share in it, for LINK.
    bait: u64,
}

/// The share's root, a directory of the share, the volume and the rootfs
/// (both mounts), each given a subdirectory `a`, a file `bait`, and the
/// symlinks `out` (absolute) and `up` (relative) to the victim's directory,
/// which the guest may plant but never follow out of the share.
fn prepare_bases(guest: &mut FsGuest, victim: &str) -> Vec<Base> {
    let c1 = guest.lookup(FUSE_ROOT_ID, b"c1").unwrap().nodeid;
    let mounts = guest.lookup(c1, b"mounts").unwrap().nodeid;
    let nodes = [
        ("share root", FUSE_ROOT_ID, 0),
        ("c1", c1, 1),
        ("volume", guest.lookup(mounts, b"0").unwrap().nodeid, 3),
        ("rootfs", guest.lookup(c1, b"rootfs").unwrap().nodeid, 2),
    ];
    nodes
        .into_iter()
        .map(|(label, node, depth)| {
            guest.mkdir(node, b"a", 0o755).unwrap();
            let absolute = format!("/{victim}");
            guest.symlink(node, b"out", absolute.as_bytes()).unwrap();
            let relative = format!("{}{victim}", "../".repeat(CLIMB));
            guest.symlink(node, b"up", relative.as_bytes()).unwrap();
            let (bait, open) = guest
                .create(node, b"bait", libc::O_WRONLY as u32, 0o644)
                .unwrap();
            guest.release(bait.nodeid, open.fh).unwrap();
            Base {
                label,
                node,
                depth,
                bait: bait.nodeid,
            }
        })
        .collect()
}

/// The requests that try to leave the share, and what came of them.
struct Attack<'a> {
    guest: &'a mut FsGuest,
    /// Inode numbers and modes of what is outside the share, by path.
    outside: HashMap<(u64, u32), PathBuf>,
    /// Every request and its reply, as `base op name -> reply`.
    replies: Vec<String>,
    /// Replies that named a file outside the share.
    outside_replies: Vec<String>,
    /// Files made to be renamed away, numbered.
    baits: usize,
}

impl<'a> Attack<'a> {
    fn new(guest: &'a mut FsGuest, outside: &BTreeMap<PathBuf, Node>, top: &Path) -> Self {
        let outside = outside
            .iter()
            .filter_map(|(path, node)| node.meta().map(|m| ((m.ino, m.mode), top.join(path))))
            .collect();
        Attack {
            guest,
            outside,
            replies: Vec::new(),
            outside_replies: Vec::new(),
            baits: 0,
        }
    }

    /// Sends every hostile name from `base`, with every request that takes
    /// one, as the guest's root (whom virtiofsd does not switch ids for).
    fn from(&mut self, base: &Base, victim: &str) {
        let up = |n: usize| "../".repeat(n);
        // Directories outside the share, relative to `base`: its parent,
        // the sandbox's state directory (directly and through `a`), and the
        // victim (by climbing, by an absolute name, through the symlinks).
        let beside_share = up(base.depth + 1);
        let mut places = vec![
            "..".to_owned(),
            beside_share.trim_end_matches('/').to_owned(),
            format!("a/{}", up(base.depth + 2).trim_end_matches('/')),
            format!("{}{victim}", up(CLIMB)),
            format!("a/{}{victim}", up(CLIMB + 1)),
            format!("/{victim}"),
            "out".to_owned(),
            "up".to_owned(),
        ];
        places.dedup();
        // The names through a place first: a bare place (`out`) may be
        // renamed over or removed, in the share, by what is sent with it.
        let mut targets = Vec::new();
        for place in &places {
            for leaf in ["x", "precious", "empty", "console.log"] {
                targets.push((place.clone(), Some(leaf)));
            }
        }
        targets.extend(places.into_iter().map(|place| (place, None)));
        for (place, leaf) in targets {
            self.with_names(base, &place, leaf);
        }
    }

    /// Every request with a name for `leaf` in `place` (`place` itself
    /// without one). A request that makes a name makes its own (`x-mkdir`),
    /// so that each one meets nothing an earlier one made.
    fn with_names(&mut self, base: &Base, place: &str, leaf: Option<&str>) {
        let (b, node) = (base.label, base.node);
        let name = |op: &str| -> Vec<u8> {
            match leaf {
                Some("x") => format!("{place}/x-{op}"),
                Some(leaf) => format!("{place}/{leaf}"),
                None => place.to_owned(),
            }
            .into_bytes()
        };
        let n = name("lookup");
        match self.entry(b, "LOOKUP", &n, |g| g.lookup(node, &n)) {
            Ok(entry) if entry.attr.mode & libc::S_IFMT == libc::S_IFDIR => {
                self.inside(base, entry.nodeid, &n)
            }
            // A file outside could be linked to from outside.
            Ok(entry) => {
                let link = [&n[..], b"-link"].concat();
                let _ = self.entry(b, "LINK looked up", &link, |g| {
                    g.link(entry.nodeid, node, &link)
                });
            }
            Err(_) => {}
        }
        let n = name("mkdir");
        let _ = self.entry(b, "MKDIR", &n, |g| g.mkdir(node, &n, 0o777));
        let n = name("mknod");
        let fifo = libc::S_IFIFO | 0o666;
        let _ = self.entry(b, "MKNOD", &n, |g| g.mknod(node, &n, fifo, 0));
        self.create(b, node, &name("create"));
        let n = name("symlink");
        let target = b"/etc/shadow";
        let _ = self.entry(b, "SYMLINK", &n, |g| g.symlink(node, &n, target));
        let n = name("link");
        let bait = base.bait;
        let _ = self.entry(b, "LINK", &n, |g| g.link(bait, node, &n));
        let n = name("rename");
        let fresh = self.bait(node);
        self.record(b, "RENAME to", &n, |g| g.rename(node, &fresh, node, &n));
        let n = name("exchange");
        let fresh = self.bait(node);
        self.record(b, "RENAME2 exchange", &n, |g| {
            g.rename2(node, &fresh, node, &n, libc::RENAME_EXCHANGE)
        });
        // Names of what is there already, or of what MKDIR may have made.
        let n = name("mkdir");
        // Both names outside: a rename that crosses no mount.
        let moved = [&n[..], b"-moved"].concat();
        self.record(b, "RENAME within", &n, |g| g.rename(node, &n, node, &moved));
        self.record(b, "RENAME from", &n, |g| {
            g.rename(node, &n, node, b"stolen")
        });
        self.record(b, "UNLINK", &n, |g| g.unlink(node, &n));
        self.record(b, "RMDIR", &n, |g| g.rmdir(node, &n));
    }

    /// Requests in a directory a LOOKUP of `name` returned: harmless if it
    /// is the share's, as it must be.
    fn inside(&mut self, base: &Base, dir: u64, name: &[u8]) {
        let label = format!("{} (in {})", base.label, String::from_utf8_lossy(name));
        let b = label.as_str();
        let _ = self.entry(b, "MKDIR", b"planted", |g| g.mkdir(dir, b"planted", 0o777));
        self.create(b, dir, b"planted-file");
        self.record(b, "UNLINK", b"precious", |g| g.unlink(dir, b"precious"));
        self.record(b, "RMDIR", b"empty", |g| g.rmdir(dir, b"empty"));
        let (from, bait) = (base.node, base.bait);
        let _ = self.entry(b, "LINK", b"planted-link", |g| {
            g.link(bait, dir, b"planted-link")
        });
        let fresh = self.bait(from);
        self.record(b, "RENAME into", b"planted-rename", |g| {
            g.rename(from, &fresh, dir, b"planted-rename")
        });
        self.record(b, "RENAME out", b"precious", |g| {
            g.rename(dir, b"precious", from, b"stolen")
        });
        self.record(b, "RENAME within", b"precious", |g| {
            g.rename(dir, b"precious", dir, b"precious-moved")
        });
    }

    /// CREATE truncating what is there, and writing to it if that worked.
    fn create(&mut self, b: &str, node: u64, name: &[u8]) {
        let flags = (libc::O_WRONLY | libc::O_TRUNC) as u32;
        let created = self.guest.create(node, name, flags, 0o666);
        let reply = created.map(|(entry, open)| {
            self.check_entry(b, "CREATE", name, &entry);
            let _ = self.guest.write(entry.nodeid, open.fh, 0, b"escaped");
            let _ = self.guest.release(entry.nodeid, open.fh);
        });
        self.push(b, "CREATE", name, reply);
    }

    /// A file of the share in `node` to rename, a new one each time.
    fn bait(&mut self, node: u64) -> Vec<u8> {
        self.baits += 1;
        let name = format!("bait-{}", self.baits).into_bytes();
        let (entry, open) = self
            .guest
            .create(node, &name, libc::O_WRONLY as u32, 0o644)
            .expect("a file in the share");
        self.guest.release(entry.nodeid, open.fh).unwrap();
        name
    }

    /// A request whose reply is an entry, which must be the share's.
    fn entry(
        &mut self,
        b: &str,
        op: &str,
        name: &[u8],
        request: impl FnOnce(&mut FsGuest) -> FuseResult<FuseEntryOut>,
    ) -> FuseResult<FuseEntryOut> {
        let reply = request(self.guest);
        if let Ok(entry) = &reply {
            self.check_entry(b, op, name, entry);
        }
        self.push(b, op, name, reply.map(|_| ()));
        reply
    }

    fn record(
        &mut self,
        b: &str,
        op: &str,
        name: &[u8],
        request: impl FnOnce(&mut FsGuest) -> FuseResult<()>,
    ) {
        let reply = request(self.guest);
        self.push(b, op, name, reply);
    }

    fn check_entry(&mut self, b: &str, op: &str, name: &[u8], entry: &FuseEntryOut) {
        if let Some(path) = self.outside.get(&(entry.attr.ino, entry.attr.mode)) {
            self.outside_replies.push(format!(
                "{b} {op} {}: replied with the inode of {}",
                String::from_utf8_lossy(name),
                path.display()
            ));
        }
    }

    fn push(&mut self, b: &str, op: &str, name: &[u8], reply: FuseResult<()>) {
        let reply = match reply {
            Ok(()) => "ok".to_owned(),
            Err(errno) => format!("{:?}", nix::errno::Errno::from_raw(-errno)),
        };
        self.replies.push(format!(
            "{b} {op} {} -> {reply}",
            String::from_utf8_lossy(name)
        ));
    }
}

/// How each request was answered from the share's root, for the record.
fn summary(replies: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for reply in replies {
        let (_, outcome) = reply.rsplit_once(" -> ").unwrap();
        *counts.entry(outcome).or_default() += 1;
    }
    let from_root: Vec<&str> = replies
        .iter()
        .filter(|r| r.starts_with("share root ") && (r.contains("/x-") || r.contains(" .. ")))
        .map(String::as_str)
        .collect();
    format!(
        "{} requests, replies {counts:?}; from the share's root:\n{}",
        replies.len(),
        from_root.join("\n")
    )
}

/// What the test compares of a file outside the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    ino: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    /// The share, or a directory mounted in it: the guest's to change.
    Skipped,
    /// virtiofsd's log, which it writes to while it runs.
    Log,
    Dir(Meta),
    File {
        meta: Meta,
        content: Vec<u8>,
    },
    Symlink {
        meta: Meta,
        target: PathBuf,
    },
    Other(Meta),
}

impl Node {
    fn meta(&self) -> Option<&Meta> {
        match self {
            Node::Skipped | Node::Log => None,
            Node::Dir(meta) | Node::Other(meta) => Some(meta),
            Node::File { meta, .. } | Node::Symlink { meta, .. } => Some(meta),
        }
    }
}

/// Everything below `top` but `skip`, by path relative to it; times with
/// nanoseconds, so that a file made and removed again still shows.
fn snapshot(top: &Path, skip: &[PathBuf], log: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(
        top: &Path,
        path: &Path,
        skip: &[PathBuf],
        log: &Path,
        into: &mut BTreeMap<PathBuf, Node>,
    ) {
        let relative = path.strip_prefix(top).unwrap().to_owned();
        if skip.iter().any(|s| s == path) {
            into.insert(relative, Node::Skipped);
            return;
        }
        if path == log {
            into.insert(relative, Node::Log);
            return;
        }
        let stat = std::fs::symlink_metadata(path).unwrap();
        let meta = Meta {
            ino: stat.ino(),
            mode: stat.mode(),
            uid: stat.uid(),
            gid: stat.gid(),
            size: stat.size(),
            nlink: stat.nlink(),
            mtime: (stat.mtime(), stat.mtime_nsec()),
            ctime: (stat.ctime(), stat.ctime_nsec()),
        };
        let kind = stat.file_type();
        let node = if kind.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                walk(top, &entry.unwrap().path(), skip, log, into);
            }
            Node::Dir(meta)
        } else if kind.is_file() {
            Node::File {
                meta,
                content: std::fs::read(path).unwrap(),
            }
        } else if kind.is_symlink() {
            Node::Symlink {
                meta,
                target: std::fs::read_link(path).unwrap(),
            }
        } else {
            Node::Other(meta)
        };
        into.insert(relative, node);
    }
    let mut nodes = BTreeMap::new();
    walk(top, top, skip, log, &mut nodes);
    nodes
}

fn changes(before: &BTreeMap<PathBuf, Node>, after: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut changes = Vec::new();
    for (path, node) in before {
        match after.get(path) {
            None => changes.push(format!("disappeared: {} ({node:?})", path.display())),
            Some(now) if now != node => {
                changes.push(format!("changed: {}: {node:?} -> {now:?}", path.display()))
            }
            Some(_) => {}
        }
    }
    for (path, node) in after {
        if !before.contains_key(path) {
            changes.push(format!("appeared: {} ({node:?})", path.display()));
        }
    }
    changes
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Detaches the share and removes the sandbox's state as the shim does,
/// also when the test fails half-way, so that no mount outlives it.
struct RemoveState<'a>(&'a SandboxPaths);

impl Drop for RemoveState<'_> {
    fn drop(&mut self) {
        remove_state(self.0, false);
    }
}
