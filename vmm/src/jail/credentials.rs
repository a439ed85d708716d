//! Who a jailed process runs as: a non-root uid and gid with no capabilities left, or root
//! of a user namespace the caller made and mapped. Either way the parent-death signal the
//! caller set survives: the kernel clears it whenever the credentials change.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sched::{setns, CloneFlags};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Pid, Uid};

use crate::seccomp::{drop_bounding_set, drop_capabilities};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{step}: {source}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("User namespace descriptor {fd}: {why}")]
    UserNamespace { fd: RawFd, why: String },
}

fn step(step: impl Into<String>) -> impl FnOnce(nix::Error) -> CredentialsError {
    let step = step.into();
    move |e| CredentialsError::Step {
        step,
        source: e.into(),
    }
}

/// Gives up root for `uid` and `gid`: the bounding set is emptied while CAP_SETPCAP is still
/// held, then no supplementary groups, the gid, the uid (which empties the permitted,
/// effective and ambient sets), and last the inheritable set. No `execve` can bring a
/// capability back.
pub fn become_user(uid: Uid, gid: Gid) -> Result<(), CredentialsError> {
    let parent_death = ParentDeathSignal::get()?;
    drop_bounding_set().map_err(|source| CredentialsError::Step {
        step: "dropping the bounding set".into(),
        source,
    })?;
    setgroups(&[]).map_err(step("setgroups([])"))?;
    setresgid(gid, gid, gid).map_err(step(format!("setresgid({gid})")))?;
    setresuid(uid, uid, uid).map_err(step(format!("setresuid({uid})")))?;
    parent_death.restore()?;
    drop_capabilities().map_err(|source| CredentialsError::Step {
        step: "clearing the remaining capability sets".into(),
        source,
    })
}

/// A user namespace the caller created and mapped, open as a descriptor, and the host ids
/// its root maps to.
#[derive(Debug)]
pub struct UserNamespace {
    fd: OwnedFd,
    host_uid: u32,
    host_gid: u32,
}

impl UserNamespace {
    /// Takes the open descriptor `fd`, which must be a user namespace this process can
    /// enter with uid and gid 0 mapped. A child process tries it first, so a bad namespace
    /// is found before any step of the jail is taken.
    pub fn take(fd: RawFd) -> Result<UserNamespace, CredentialsError> {
        let refused = |why: String| CredentialsError::UserNamespace { fd, why };
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(refused("not an open descriptor".into()));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument; on anything but a namespace file it
        // fails with ENOTTY.
        let kind = unsafe { libc::ioctl(fd, NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWUSER {
            return Err(refused(
                "not a user namespace (open /proc/<pid>/ns/user of a process in it)".into(),
            ));
        }
        // SAFETY: the number was checked to be open, and the caller hands it over.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Close-on-exec: the program must not inherit it.
        // SAFETY: F_SETFD on a descriptor this function now owns.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        let (host_uid, host_gid) = probe_root_ids(&fd).map_err(refused)?;
        Ok(UserNamespace {
            fd,
            host_uid,
            host_gid,
        })
    }

    /// The host uid and gid of the namespace's root, which the jailed program runs as.
    pub fn host_ids(&self) -> (u32, u32) {
        (self.host_uid, self.host_gid)
    }

    /// Joins the namespace and becomes its root. Supplementary groups are dropped first,
    /// while this process is still root of the host's namespace (inside, `setgroups` may be
    /// denied). Needs a single-threaded process.
    pub fn enter(self) -> Result<(), CredentialsError> {
        let parent_death = ParentDeathSignal::get()?;
        setgroups(&[]).map_err(step("setgroups([])"))?;
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWUSER).map_err(step(format!(
            "setns into the user namespace (descriptor {})",
            self.fd.as_raw_fd()
        )))?;
        let root = (Uid::from_raw(0), Gid::from_raw(0));
        setresgid(root.1, root.1, root.1).map_err(step("setresgid(0) in the user namespace"))?;
        setresuid(root.0, root.0, root.0).map_err(step("setresuid(0) in the user namespace"))?;
        parent_death.restore()
    }
}

/// `_IO(NSIO, 0x3)`: the type of namespace a descriptor refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Enters the namespace `fd` in a child and becomes its root there; the host ids the
/// child then has are the ones the jailed program will have.
fn probe_root_ids(fd: &OwnedFd) -> Result<(u32, u32), String> {
    let raw = fd.as_raw_fd();
    // SAFETY: the child only makes raw system calls and `_exit`s, which is safe after fork
    // even in a multi-threaded parent.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("forking to try it: {}", io::Error::last_os_error()));
    }
    if child == 0 {
        // SAFETY: async-signal-safe calls only; the exit code says which one failed.
        unsafe {
            let code = if libc::setns(raw, libc::CLONE_NEWUSER) != 0 {
                1
            } else if libc::setresgid(0, 0, 0) != 0 {
                2
            } else if libc::setresuid(0, 0, 0) != 0 {
                3
            } else {
                0
            };
            libc::_exit(code);
        }
    }
    let child = Pid::from_raw(child);
    // SAFETY: all zeroes is a valid siginfo_t for waitid to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // Waits for the exit but leaves the child a zombie, whose credentials /proc still shows.
    // SAFETY: `info` outlives the call.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            child.as_raw() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    let ids = if rc != 0 {
        Err(format!(
            "waiting for the child that tried it: {}",
            io::Error::last_os_error()
        ))
    } else {
        // SAFETY: waitid succeeded for an exited child, so si_status holds its exit code.
        let code = unsafe { info.si_status() };
        match code {
            0 => read_real_ids(child),
            1 => Err(
                "this process cannot join it (setns refused: not a user namespace it may enter)"
                    .into(),
            ),
            2 => Err("gid 0 is not mapped in it (write its gid_map first)".into()),
            _ => Err("uid 0 is not mapped in it (write its uid_map first)".into()),
        }
    };
    let _ = nix::sys::wait::waitpid(child, None);
    ids
}

/// The real uid and gid of `pid`, as this process sees them.
fn read_real_ids(pid: Pid) -> Result<(u32, u32), String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|ids| ids.split_whitespace().next())
            .and_then(|id| id.parse::<u32>().ok())
            .ok_or_else(|| format!("no {name} line in {path}"))
    };
    Ok((field("Uid:")?, field("Gid:")?))
}

/// The signal the caller asked for when its parent dies (`PR_SET_PDEATHSIG`, as Hull's shim
/// sets it so that a killed shim cannot leak its VMs). The kernel clears it when the
/// process's credentials change, so the jail reads it before and sets it again after.
pub struct ParentDeathSignal {
    signal: libc::c_int,
    parent: Pid,
}

impl ParentDeathSignal {
    pub fn get() -> Result<Self, CredentialsError> {
        let mut signal: libc::c_int = 0;
        // SAFETY: PR_GET_PDEATHSIG writes one int, which outlives the call.
        if unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut signal as *mut libc::c_int) } < 0 {
            return Err(CredentialsError::Step {
                step: "PR_GET_PDEATHSIG".into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(ParentDeathSignal {
            signal,
            parent: nix::unistd::getppid(),
        })
    }

    /// Sets the signal again; if the parent died meanwhile, delivers it now, as the kernel
    /// would have.
    pub fn restore(&self) -> Result<(), CredentialsError> {
        if self.signal == 0 {
            return Ok(());
        }
        // SAFETY: PR_SET_PDEATHSIG takes the signal number by value.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, self.signal as libc::c_ulong) } < 0 {
            return Err(CredentialsError::Step {
                step: "PR_SET_PDEATHSIG".into(),
                source: io::Error::last_os_error(),
            });
        }
        if nix::unistd::getppid() != self.parent {
            // SAFETY: raise() with the signal the caller chose.
            unsafe { libc::raise(self.signal) };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_that_are_not_user_namespaces_are_refused() {
        let file = std::fs::File::open("/proc/self/ns/net").unwrap();
        let raw = file.as_raw_fd();
        let err = UserNamespace::take(raw).unwrap_err().to_string();
        assert!(
            err.contains(&raw.to_string()) && err.contains("not a user namespace"),
            "{err}"
        );
        let null = std::fs::File::open("/dev/null").unwrap();
        let err = UserNamespace::take(null.as_raw_fd())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a user namespace"), "{err}");
        // A closed number.
        let closed = null.as_raw_fd();
        drop(null);
        let err = UserNamespace::take(closed).unwrap_err().to_string();
        assert!(err.contains("not an open descriptor"), "{err}");
        // Still open: refusing does not take the descriptor.
        drop(file);
    }
}
