//! `hull-vmm jail [OPTIONS] -- PROGRAM [ARGS...]`: confines this process with the jail's
//! steps, then execs PROGRAM in its place (docs/vmm.md, "hull-vmm jail"). Hull's shim starts
//! QEMU and virtiofsd this way.
//!
//! Everything is checked before the first step ([`ExecJail::prepare`]), so bad input
//! changes nothing and names itself: PROGRAM is absolute and an executable file, and with
//! `--root` it is reachable in the new root (through its binds and symbolic links); bind
//! sources exist; devices are character devices of the host; no entry of the new root is
//! inside another; cgroups are cgroup directories; kept descriptors are open; the user
//! namespace is one this process can enter, with uid and gid 0 mapped (a child process
//! tries it); a single thread runs. Then ([`PreparedExecJail::exec`]), in order:
//!
//! 1. the cgroups are joined, while this process is still root and before it allocates
//!    anything more;
//! 2. with `--root` (or `--unshare mount`): its own mount namespace, every mount made
//!    private, so nothing propagates back to the host;
//! 3. with `--root DIR`: the bind sources are captured (`open_tree`, read-only, nosuid,
//!    nodev throughout), a tmpfs is mounted over DIR (only this namespace sees it), the
//!    directories, binds, symbolic links and device nodes are made in it, it is made
//!    read-only, `pivot_root` moves into it and the old root is detached;
//! 4. the net, IPC and UTS namespaces asked for;
//! 5. the resource limits, while raising a hard limit is still allowed;
//! 6. the credentials: with `--uid`/`--gid`, the bounding set emptied, no supplementary
//!    groups, the gid, the uid, the parent-death signal set again and the remaining
//!    capability sets cleared; with `--userns-fd`, no supplementary groups, `setns` into
//!    the namespace, gid and uid 0 there, the parent-death signal set again;
//! 7. the working directory (`--chdir`, or `/` of the new root), entered as the final user;
//! 8. every descriptor above 2 closed but the `--keep-fd` ones, which lose close-on-exec;
//! 9. `PR_SET_NO_NEW_PRIVS`, then `execve`.
//!
//! A step that fails ends this process before `execve`: PROGRAM never runs half-jailed.

use std::convert::Infallible;
use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use super::credentials::{become_user, CredentialsError, UserNamespace};
use super::mount::{self, BindSpec, DeviceSpec, MountError, RootPlan, SymlinkSpec};
use super::process::{self, Cgroup, Namespaces, ProcessError, Rlimit};

#[derive(Debug, thiserror::Error)]
pub enum ExecJailError {
    #[error("PROGRAM {0}: give an absolute path")]
    RelativeProgram(PathBuf),
    #[error("PROGRAM {path}: {source}")]
    Program {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("PROGRAM {0} is not an executable file")]
    NotExecutable(PathBuf),
    #[error(
        "PROGRAM {program} is not reachable inside the new root {root}: bind it, or a directory holding it, with --ro-bind"
    )]
    Unreachable { program: PathBuf, root: PathBuf },
    #[error("--root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--root {0} is not a directory")]
    RootNotDirectory(PathBuf),
    #[error("--uid {uid} --gid {gid}: the jail drops root, give a non-root uid and gid (or --userns-fd)")]
    RootUser { uid: u32, gid: u32 },
    #[error("--keep-fd {0}: not an open descriptor")]
    KeepClosed(RawFd),
    #[error("--keep-fd {0} is the --userns-fd descriptor, which the jail uses up")]
    KeepUserNamespace(RawFd),
    #[error("--chdir {0}: give an absolute path")]
    RelativeChdir(PathBuf),
    #[error("{0} threads are running, and the jail's steps apply to the calling thread only")]
    Threads(usize),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("chdir {path} as the jailed user: {source}")]
    Chdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Executing {program}: {source}")]
    Exec {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What `hull-vmm jail` was asked for, as parsed from its command line.
#[derive(Debug, Clone, Default)]
pub struct ExecJail {
    pub root: Option<PathBuf>,
    pub ro_binds: Vec<BindSpec>,
    pub symlinks: Vec<SymlinkSpec>,
    pub devices: Vec<DeviceSpec>,
    /// `--uid` and `--gid`.
    pub user: Option<(u32, u32)>,
    pub userns_fd: Option<RawFd>,
    pub unshare: Namespaces,
    pub cgroups: Vec<PathBuf>,
    pub rlimits: Vec<Rlimit>,
    pub keep_fds: Vec<RawFd>,
    pub chdir: Option<PathBuf>,
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// Who the program runs as.
#[derive(Debug)]
enum Identity {
    /// As the caller (root, with its capabilities).
    Unchanged,
    User(Uid, Gid),
    Namespace(UserNamespace),
}

/// An [`ExecJail`] checked against the host; nothing is changed yet.
#[derive(Debug)]
pub struct PreparedExecJail {
    cgroups: Vec<Cgroup>,
    mount_namespace: bool,
    /// The canonical root directory and what goes in it.
    root: Option<(PathBuf, RootPlan)>,
    unshare: Namespaces,
    rlimits: Vec<Rlimit>,
    identity: Identity,
    chdir: Option<PathBuf>,
    keep_fds: Vec<RawFd>,
    program: PathBuf,
    args: Vec<OsString>,
}

impl ExecJail {
    /// Checks everything against the host (see the module's documentation).
    pub fn prepare(self) -> Result<PreparedExecJail, ExecJailError> {
        let threads = process::thread_count()?;
        if threads != 1 {
            return Err(ExecJailError::Threads(threads));
        }
        if !self.program.is_absolute() {
            return Err(ExecJailError::RelativeProgram(self.program));
        }
        let root = match &self.root {
            Some(dir) => {
                let canonical = dir.canonicalize().map_err(|source| ExecJailError::Root {
                    path: dir.clone(),
                    source,
                })?;
                if !canonical.is_dir() {
                    return Err(ExecJailError::RootNotDirectory(dir.clone()));
                }
                let plan = RootPlan::new(&self.ro_binds, &self.symlinks, &self.devices)?;
                let host =
                    plan.resolve(&self.program)
                        .ok_or_else(|| ExecJailError::Unreachable {
                            program: self.program.clone(),
                            root: dir.clone(),
                        })?;
                check_executable(&self.program, &host)?;
                Some((canonical, plan))
            }
            None => {
                check_executable(&self.program, &self.program)?;
                None
            }
        };
        let cgroups = self
            .cgroups
            .iter()
            .map(|path| Cgroup::check(path))
            .collect::<Result<Vec<_>, _>>()?;
        for &fd in &self.keep_fds {
            if Some(fd) == self.userns_fd {
                return Err(ExecJailError::KeepUserNamespace(fd));
            }
            process::check_open(fd).map_err(|_| ExecJailError::KeepClosed(fd))?;
        }
        if let Some(dir) = &self.chdir {
            if !dir.is_absolute() {
                return Err(ExecJailError::RelativeChdir(dir.clone()));
            }
        }
        let identity = match (self.user, self.userns_fd) {
            (Some((uid, gid)), _) if uid == 0 || gid == 0 => {
                return Err(ExecJailError::RootUser { uid, gid });
            }
            (Some((uid, gid)), _) => Identity::User(Uid::from_raw(uid), Gid::from_raw(gid)),
            (None, Some(fd)) => Identity::Namespace(UserNamespace::take(fd)?),
            (None, None) => Identity::Unchanged,
        };
        let chdir = self
            .chdir
            .or_else(|| root.as_ref().map(|_| PathBuf::from("/")));
        Ok(PreparedExecJail {
            cgroups,
            mount_namespace: root.is_some() || self.unshare.mount,
            root,
            unshare: self.unshare,
            rlimits: self.rlimits,
            identity,
            chdir,
            keep_fds: self.keep_fds,
            program: self.program,
            args: self.args,
        })
    }
}

/// `host`, the file `program` names, must be a regular file someone may execute.
fn check_executable(program: &Path, host: &Path) -> Result<(), ExecJailError> {
    let meta = std::fs::metadata(host).map_err(|source| ExecJailError::Program {
        path: program.to_owned(),
        source,
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(ExecJailError::NotExecutable(program.to_owned()));
    }
    Ok(())
}

impl PreparedExecJail {
    /// Takes the steps in order and execs the program; returns only if a step failed.
    pub fn exec(self) -> ExecJailError {
        match self.apply() {
            Ok(never) => match never {},
            Err(err) => err,
        }
    }

    fn apply(self) -> Result<Infallible, ExecJailError> {
        for cgroup in &self.cgroups {
            cgroup.join()?;
        }
        if self.mount_namespace {
            mount::enter_private_mount_namespace()?;
        }
        if let Some((dir, plan)) = &self.root {
            let owner = match &self.identity {
                Identity::Unchanged => None,
                Identity::User(uid, gid) => Some((*uid, *gid)),
                Identity::Namespace(namespace) => {
                    let (uid, gid) = namespace.host_ids();
                    Some((Uid::from_raw(uid), Gid::from_raw(gid)))
                }
            };
            plan.build(dir, owner)?;
            mount::pivot_into(dir)?;
        }
        self.unshare.unshare_others()?;
        for limit in &self.rlimits {
            limit.apply()?;
        }
        match self.identity {
            Identity::Unchanged => {}
            Identity::User(uid, gid) => become_user(uid, gid)?,
            Identity::Namespace(namespace) => namespace.enter()?,
        }
        if let Some(dir) = &self.chdir {
            nix::unistd::chdir(dir).map_err(|e| ExecJailError::Chdir {
                path: dir.clone(),
                source: e.into(),
            })?;
        }
        process::close_inherited_fds(&self.keep_fds)?;
        for &fd in &self.keep_fds {
            process::clear_cloexec(fd)?;
        }
        process::set_no_new_privs()?;
        let source = std::process::Command::new(&self.program)
            .args(&self.args)
            .exec();
        Err(ExecJailError::Exec {
            program: self.program,
            source,
        })
    }
}
