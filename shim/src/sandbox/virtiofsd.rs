//! virtiofsd (the Rust daemon) serving a sandbox's share. It parses every
//! FUSE request the guest sends, so it runs in its own sandbox
//! (`--sandbox namespace`: new mount, PID and network namespaces, the share
//! pivoted to as its root, so a `..` in a guest's name cannot leave it),
//! under its own seccomp filter, without the capabilities it does not
//! need: no CAP_DAC_READ_SEARCH (file handles are off: `open_by_handle_at`
//! reaches any file of a filesystem, whatever the namespace), no CAP_MKNOD
//! (the guest cannot make device nodes on the host), no CAP_SETFCAP.
//!
//! Its vhost-user socket is bound by the shim and passed as a listening
//! descriptor (`--fd`): no waiting for a socket file to appear, and no
//! stale one from an earlier sandbox can count as ready.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use super::SandboxError;
use crate::sys::child::{ChildEnd, WatchedChild};
use crate::sys::process::{die_with_parent, pass_fds};
use crate::sys::userns::IdMappedNamespace;

/// The descriptor virtiofsd finds its listening socket at.
const LISTEN_FD: i32 = 3;

/// virtiofsd's arguments, listening on [`LISTEN_FD`]. It is started in
/// the share (its working directory) and shares `.`: an unprivileged
/// virtiofsd may lack search permission on the share's parents (a state
/// directory under a 0700 directory), and needs none this way.
pub fn arguments() -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--fd".into(),
        LISTEN_FD.to_string(),
        "--shared-dir".into(),
        ".".into(),
    ];
    args.extend(
        [
            "--sandbox",
            "namespace",
            "--seccomp",
            "kill",
            "--inode-file-handles=never",
            "--modcaps=-mknod:-setfcap",
            "--cache",
            "auto",
            "--announce-submounts",
            "--log-level",
            "warn",
        ]
        .map(String::from),
    );
    args
}

/// How virtiofsd is started: through hull-vmm's jail, in the sandbox's
/// id-mapping user namespace when it runs unprivileged.
pub struct VirtiofsdLaunch<'a> {
    pub jailer: &'a Path,
    pub binary: &'a Path,
    pub userns: Option<&'a IdMappedNamespace>,
}

/// The descriptor the jailer finds the user namespace at.
const USERNS_FD: i32 = 4;

impl VirtiofsdLaunch<'_> {
    /// `hull-vmm jail ... -- virtiofsd ...`: no new root (virtiofsd makes
    /// the share its root itself), but its own IPC and UTS namespaces,
    /// no_new_privs, no core dumps, and, unprivileged, the user namespace
    /// whose root it becomes.
    pub fn jailed_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["jail".into()];
        if self.userns.is_some() {
            args.extend(["--userns-fd".into(), USERNS_FD.to_string()]);
        }
        args.extend(
            [
                "--unshare",
                "ipc,uts",
                "--rlimit",
                "core=0",
                "--keep-fd",
                &LISTEN_FD.to_string(),
                "--",
            ]
            .map(String::from),
        );
        args.push(self.binary.display().to_string());
        args.extend(arguments());
        args
    }
}

pub struct Virtiofsd {
    child: WatchedChild,
}

impl Virtiofsd {
    /// Binds `socket` and starts virtiofsd on `shared` with it. The VMM can
    /// connect at once: the connection waits in the listen queue.
    pub fn start(
        launch: &VirtiofsdLaunch,
        socket: &Path,
        shared: &Path,
        log: OwnedFd,
        cgroup_procs: Vec<OwnedFd>,
    ) -> Result<Self, SandboxError> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(|source| SandboxError::Io {
            what: format!("binding virtiofsd's socket {}", socket.display()),
            source,
        })?;
        let mut command = Command::new(launch.jailer);
        command
            .args(launch.jailed_args())
            .current_dir(shared)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        die_with_parent(&mut command);
        crate::sys::process::join_cgroups(&mut command, cgroup_procs);
        let mut fds = vec![(listener.as_raw_fd(), LISTEN_FD)];
        if let Some(userns) = launch.userns {
            fds.push((userns.fd().as_raw_fd(), USERNS_FD));
        }
        pass_fds(&mut command, fds);
        let child = WatchedChild::spawn(&mut command).map_err(|source| SandboxError::Spawn {
            program: format!(
                "{} jail -- {}",
                launch.jailer.display(),
                launch.binary.display()
            ),
            hint: "install virtiofsd with `make deps` (cargo install virtiofsd)",
            source,
        })?;
        Ok(Virtiofsd { child })
    }

    /// virtiofsd's end (`None` while it runs).
    pub fn end_watch(&self) -> watch::Receiver<Option<ChildEnd>> {
        self.child.end_watch()
    }

    /// Waits for virtiofsd to exit (it does when the VMM disconnects), and
    /// kills it after `grace`.
    pub async fn stop(self, grace: Duration) {
        self.child.stop(grace).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtiofsd_is_sandboxed_jailed_and_without_file_handles() {
        let ns = IdMappedNamespace::create(400_000, 1000).unwrap();
        let launch = VirtiofsdLaunch {
            jailer: Path::new("/usr/local/bin/hull-vmm"),
            binary: Path::new("/usr/local/bin/virtiofsd"),
            userns: Some(&ns),
        };
        let args = launch.jailed_args().join(" ");
        assert_eq!(
            args,
            "jail --userns-fd 4 --unshare ipc,uts --rlimit core=0 --keep-fd 3 -- \
             /usr/local/bin/virtiofsd --fd 3 --shared-dir . \
             --sandbox namespace --seccomp kill --inode-file-handles=never \
             --modcaps=-mknod:-setfcap --cache auto --announce-submounts --log-level warn"
        );
        let privileged = VirtiofsdLaunch {
            userns: None,
            ..launch
        };
        let args = privileged.jailed_args().join(" ");
        assert!(args.starts_with("jail --unshare ipc,uts"), "{args}");
    }
}
