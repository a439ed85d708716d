//! The process-wide steps of a jail: cgroups, resource limits, the namespaces other than
//! mount and user, inherited descriptors, `no_new_privs`, and the single-thread check the
//! per-thread steps depend on.

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("Cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cgroup {0} is not a cgroup directory (on a cgroup or cgroup2 filesystem, with a cgroup.procs)")]
    NotCgroup(PathBuf),
    #[error("Joining the cgroup {path} (writing 0 to its cgroup.procs): {source}")]
    JoinCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "Resource limit {0:?}: expected NAME=SOFT[:HARD], NAME one of nofile, nproc, core, fsize, memlock, as, stack, SOFT and HARD numbers or `unlimited`"
    )]
    RlimitSyntax(String),
    #[error("Resource limit {0:?}: the soft limit is above the hard one")]
    RlimitOrder(String),
    #[error("Setting the resource limit {name} to {soft}:{hard}: {source}")]
    SetRlimit {
        name: &'static str,
        soft: String,
        hard: String,
        #[source]
        source: io::Error,
    },
    #[error("Namespace {0:?}: expected a comma-separated list of mount, net, ipc, uts")]
    UnknownNamespace(String),
    #[error("unshare of the {what} namespaces: {source}")]
    Unshare {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("Descriptor {0} is not open")]
    NotOpen(RawFd),
    #[error("Closing inherited descriptors from {from}: {source}")]
    CloseFds {
        from: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("Keeping descriptor {fd} open across exec: {source}")]
    KeepFd {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(#[source] io::Error),
    #[error("Counting this process's threads in /proc/self/task: {0}")]
    Threads(#[source] io::Error),
}

/// A cgroup directory, v1 or v2, that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Canonical.
    path: PathBuf,
    version: CgroupVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl Cgroup {
    /// Checks that `path` is a directory of a cgroup (v1) or cgroup2 hierarchy.
    pub fn check(path: &Path) -> Result<Cgroup, ProcessError> {
        let error = |source| ProcessError::Cgroup {
            path: path.to_owned(),
            source,
        };
        let canonical = path.canonicalize().map_err(error)?;
        let fs = statfs(&canonical).map_err(|e| error(e.into()))?;
        let version = match fs.filesystem_type() {
            CGROUP2_SUPER_MAGIC => CgroupVersion::V2,
            CGROUP_SUPER_MAGIC => CgroupVersion::V1,
            _ => return Err(ProcessError::NotCgroup(path.to_owned())),
        };
        if !canonical.join("cgroup.procs").is_file() {
            return Err(ProcessError::NotCgroup(path.to_owned()));
        }
        Ok(Cgroup {
            path: canonical,
            version,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Moves this process (all its threads) into the cgroup: "0" names the writer, in
    /// either version, whatever PID namespace it is in.
    pub fn join(&self) -> Result<(), ProcessError> {
        std::fs::write(self.path.join("cgroup.procs"), "0").map_err(|source| {
            ProcessError::JoinCgroup {
                path: self.path.clone(),
                source,
            }
        })
    }
}

/// A resource limit `--rlimit` can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RlimitResource {
    Nofile,
    Nproc,
    Core,
    Fsize,
    Memlock,
    As,
    Stack,
}

impl RlimitResource {
    const ALL: [RlimitResource; 7] = [
        RlimitResource::Nofile,
        RlimitResource::Nproc,
        RlimitResource::Core,
        RlimitResource::Fsize,
        RlimitResource::Memlock,
        RlimitResource::As,
        RlimitResource::Stack,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RlimitResource::Nofile => "nofile",
            RlimitResource::Nproc => "nproc",
            RlimitResource::Core => "core",
            RlimitResource::Fsize => "fsize",
            RlimitResource::Memlock => "memlock",
            RlimitResource::As => "as",
            RlimitResource::Stack => "stack",
        }
    }

    fn resource(self) -> Resource {
        match self {
            RlimitResource::Nofile => Resource::RLIMIT_NOFILE,
            RlimitResource::Nproc => Resource::RLIMIT_NPROC,
            RlimitResource::Core => Resource::RLIMIT_CORE,
            RlimitResource::Fsize => Resource::RLIMIT_FSIZE,
            RlimitResource::Memlock => Resource::RLIMIT_MEMLOCK,
            RlimitResource::As => Resource::RLIMIT_AS,
            RlimitResource::Stack => Resource::RLIMIT_STACK,
        }
    }
}

/// One resource limit: `NAME=SOFT[:HARD]`, the hard limit the soft one unless given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: RlimitResource,
    pub soft: u64,
    pub hard: u64,
}

impl FromStr for Rlimit {
    type Err = ProcessError;

    fn from_str(arg: &str) -> Result<Rlimit, ProcessError> {
        let syntax = || ProcessError::RlimitSyntax(arg.to_owned());
        let (name, values) = arg.split_once('=').ok_or_else(syntax)?;
        let resource = RlimitResource::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(syntax)?;
        let value = |s: &str| match s {
            "unlimited" | "infinity" => Ok(libc::RLIM_INFINITY),
            _ => s.parse::<u64>().map_err(|_| syntax()),
        };
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (value(soft)?, value(hard)?),
            None => (value(values)?, value(values)?),
        };
        // RLIM_INFINITY is u64::MAX, so it compares as the largest value.
        if soft > hard {
            return Err(ProcessError::RlimitOrder(arg.to_owned()));
        }
        Ok(Rlimit {
            resource,
            soft,
            hard,
        })
    }
}

impl Rlimit {
    pub fn apply(&self) -> Result<(), ProcessError> {
        setrlimit(self.resource.resource(), self.soft, self.hard).map_err(|e| {
            ProcessError::SetRlimit {
                name: self.resource.name(),
                soft: limit_text(self.soft),
                hard: limit_text(self.hard),
                source: e.into(),
            }
        })
    }
}

fn limit_text(value: u64) -> String {
    match value {
        libc::RLIM_INFINITY => "unlimited".into(),
        value => value.to_string(),
    }
}

/// Open files of hull-vmm and of the vsock backend: the vsock muxer's host streams (1024
/// connections and 256 clients still handshaking at most) with room for every other
/// descriptor a VM holds (KVM, up to 32 vCPUs, irqfds and eventfds, images, taps, sockets).
pub const CONFINED_OPEN_FILES: u64 = 2048;

/// The limits hull-vmm and the vsock backend put on themselves: a bounded number of open
/// files (never raised above the hard limit they were given, so this needs no privilege)
/// and no core dumps (guest memory would end up in them). RLIMIT_NPROC is left alone: it
/// counts every process and thread of the real uid, which VMs jailed as the same uid share,
/// so a bound could stop another VM from starting its vCPUs; seccomp already forbids new
/// processes once the threads are started.
pub fn confined_limits() -> Result<Vec<Rlimit>, ProcessError> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| ProcessError::SetRlimit {
        name: "nofile",
        soft: CONFINED_OPEN_FILES.to_string(),
        hard: CONFINED_OPEN_FILES.to_string(),
        source: e.into(),
    })?;
    let open_files = CONFINED_OPEN_FILES.min(hard);
    Ok(vec![
        Rlimit {
            resource: RlimitResource::Nofile,
            soft: open_files,
            hard: open_files,
        },
        Rlimit {
            resource: RlimitResource::Core,
            soft: 0,
            hard: 0,
        },
    ])
}

/// Applies [`confined_limits`].
pub fn apply_confined_limits() -> Result<(), ProcessError> {
    confined_limits()?.iter().try_for_each(Rlimit::apply)
}

/// The namespaces `--unshare` can give a program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub mount: bool,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

impl FromStr for Namespaces {
    type Err = ProcessError;

    fn from_str(list: &str) -> Result<Namespaces, ProcessError> {
        let mut namespaces = Namespaces::default();
        for name in list.split(',') {
            match name {
                "mount" => namespaces.mount = true,
                "net" => namespaces.net = true,
                "ipc" => namespaces.ipc = true,
                "uts" => namespaces.uts = true,
                _ => return Err(ProcessError::UnknownNamespace(name.to_owned())),
            }
        }
        Ok(namespaces)
    }
}

impl Namespaces {
    /// Unshares the net, IPC and UTS namespaces asked for; the mount namespace is
    /// `super::mount`'s, since it must come with its propagation made private.
    pub fn unshare_others(&self) -> Result<(), ProcessError> {
        let mut flags = CloneFlags::empty();
        let mut names = Vec::new();
        for (wanted, flag, name) in [
            (self.net, CloneFlags::CLONE_NEWNET, "net"),
            (self.ipc, CloneFlags::CLONE_NEWIPC, "IPC"),
            (self.uts, CloneFlags::CLONE_NEWUTS, "UTS"),
        ] {
            if wanted {
                flags |= flag;
                names.push(name);
            }
        }
        if flags.is_empty() {
            return Ok(());
        }
        unshare(flags).map_err(|e| ProcessError::Unshare {
            what: names.join(", "),
            source: e.into(),
        })
    }
}

/// Fails unless `fd` is an open descriptor.
pub fn check_open(fd: RawFd) -> Result<(), ProcessError> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(ProcessError::NotOpen(fd));
    }
    Ok(())
}

/// Closes every descriptor from 3 up but those in `keep`, so nothing the caller left open
/// by mistake (a directory outside the jail, a socket) reaches the confined process.
pub fn close_inherited_fds(keep: &[RawFd]) -> Result<(), ProcessError> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from: RawFd = 3;
    for fd in keep.into_iter().chain([RawFd::MAX]) {
        if fd > from {
            let last = if fd == RawFd::MAX {
                u32::MAX
            } else {
                fd as u32 - 1
            };
            // SAFETY: close_range takes two descriptor numbers and flags, no pointers; the
            // descriptors it closes are not used again (the kept ones are skipped).
            let rc = unsafe { libc::syscall(libc::SYS_close_range, from as u32, last, 0u32) };
            if rc != 0 {
                return Err(ProcessError::CloseFds {
                    from,
                    source: io::Error::last_os_error(),
                });
            }
        }
        from = fd.saturating_add(1);
    }
    Ok(())
}

/// Lets `fd` survive `execve`.
pub fn clear_cloexec(fd: RawFd) -> Result<(), ProcessError> {
    // SAFETY: F_SETFD sets the descriptor flags of an fd; no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(ProcessError::KeepFd {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `execve` can no longer grant privileges (setuid bits, file capabilities); inherited by
/// every child.
pub fn set_no_new_privs() -> Result<(), ProcessError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ProcessError::NoNewPrivs(io::Error::last_os_error()));
    }
    Ok(())
}

/// Threads of this process that run its code. KVM's own workers
/// (`kvm-nx-lpage-recovery` on recent kernels) are tasks of the process
/// too, but they never return to user space.
pub fn thread_count() -> Result<usize, ProcessError> {
    let count = || -> io::Result<usize> {
        let mut count = 0;
        for task in std::fs::read_dir("/proc/self/task")? {
            let path = task?.path().join("stat");
            let stat = match std::fs::read_to_string(&path) {
                Ok(stat) => stat,
                // A thread that ended since the directory was listed.
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ESRCH) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            let user = is_user_thread(&stat)
                .ok_or_else(|| io::Error::other(format!("unreadable {}", path.display())))?;
            count += usize::from(user);
        }
        Ok(count)
    };
    count().map_err(ProcessError::Threads)
}

/// Whether the task whose `/proc/<pid>/task/<tid>/stat` line is `stat` is a
/// thread of the program rather than a kernel worker; `None` when the line
/// cannot be read.
fn is_user_thread(stat: &str) -> Option<bool> {
    // Field 9, after the parenthesised name, holds the task's flags.
    let (_, rest) = stat.rsplit_once(')')?;
    let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
    Some(flags & PF_USER_WORKER == 0)
}

/// A kernel worker living in a user process (`include/linux/sched.h`).
const PF_USER_WORKER: u64 = 0x0000_4000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_workers_are_not_threads_of_the_vmm() {
        // A vCPU thread (flags of a user thread) and KVM's NX huge page
        // worker (PF_USER_WORKER); names may hold spaces and parentheses.
        let vcpu = "41 (vcpu 0 (x)) S 1 41 41 0 -1 4194368 92 0 0 0";
        let worker = "42 (kvm-nx-lpage-re) S 1 41 41 0 -1 2113600 0 0 0 0";
        assert_eq!(is_user_thread(vcpu), Some(true));
        assert_eq!(is_user_thread(worker), Some(false));
        assert_eq!(is_user_thread("43 (cut"), None);
        assert!(thread_count().unwrap() >= 1);
    }

    #[test]
    fn rlimits_parse_and_bad_ones_are_named() {
        assert_eq!(
            "nofile=64:128".parse::<Rlimit>().unwrap(),
            Rlimit {
                resource: RlimitResource::Nofile,
                soft: 64,
                hard: 128
            }
        );
        let core: Rlimit = "core=0".parse().unwrap();
        assert_eq!((core.soft, core.hard), (0, 0));
        let stack: Rlimit = "stack=8388608:unlimited".parse().unwrap();
        assert_eq!(stack.hard, libc::RLIM_INFINITY);
        for name in ["nproc", "fsize", "memlock", "as"] {
            let limit: Rlimit = format!("{name}=1").parse().unwrap();
            assert_eq!(limit.resource.name(), name);
        }
        for bad in [
            "cpu=1",
            "nofile",
            "nofile=",
            "nofile=x",
            "nofile=1:",
            "nofile=-1",
            "=1",
        ] {
            let err = bad.parse::<Rlimit>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        let err = "nofile=10:5".parse::<Rlimit>().unwrap_err().to_string();
        assert!(
            err.contains("nofile=10:5") && err.contains("above"),
            "{err}"
        );
    }

    #[test]
    fn confined_limits_bound_open_files_and_forbid_core_dumps() {
        let limits = confined_limits().unwrap();
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(limits[0].resource, RlimitResource::Nofile);
        assert_eq!(limits[0].soft, CONFINED_OPEN_FILES.min(hard));
        assert_eq!(limits[0].hard, limits[0].soft);
        assert_eq!(
            (limits[1].resource, limits[1].hard),
            (RlimitResource::Core, 0)
        );
        assert!(limits.iter().all(|l| l.resource != RlimitResource::Nproc));
    }

    #[test]
    fn namespace_lists_parse_and_unknown_names_are_named() {
        assert_eq!(
            "net,ipc,uts".parse::<Namespaces>().unwrap(),
            Namespaces {
                mount: false,
                net: true,
                ipc: true,
                uts: true
            }
        );
        assert!("mount".parse::<Namespaces>().unwrap().mount);
        for bad in ["pid", "net,user", "", "net,"] {
            let err = bad.parse::<Namespaces>().unwrap_err().to_string();
            assert!(
                err.contains("expected a comma-separated list"),
                "{bad}: {err}"
            );
        }
        let err = "net,pid".parse::<Namespaces>().unwrap_err().to_string();
        assert!(err.contains("\"pid\""), "{err}");
    }

    #[test]
    fn a_cgroup_is_checked_on_its_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), b"").unwrap();
        let err = Cgroup::check(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(dir.path().to_str().unwrap()) && err.contains("not a cgroup"),
            "{err}"
        );
        let missing = dir.path().join("missing");
        let err = Cgroup::check(&missing).unwrap_err().to_string();
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
    }
}
