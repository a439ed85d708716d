//! A VMM as a child process of the shim: started with its stdout and stderr
//! in the console log's pipe, in the sandbox's cgroups, dying with the shim
//! (PDEATHSIG), watched for its exit, and stopped with a grace period before
//! SIGKILL. Both backends run this way.

use std::os::fd::RawFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use super::{HypervisorError, VmExit, VmmHost};

pub struct VmmProcess {
    pid: Option<u32>,
    exit_tx: watch::Sender<Option<VmExit>>,
    /// Set when we kill the VMM, so its exit reads as `Killed`.
    killed: Arc<AtomicBool>,
}

impl Default for VmmProcess {
    fn default() -> Self {
        VmmProcess {
            pid: None,
            exit_tx: watch::channel(None).0,
            killed: Default::default(),
        }
    }
}

impl VmmProcess {
    /// Starts `binary args` with `host`'s console and cgroups, with each
    /// `(fd, target)` of `fds` open in the child as descriptor `target`.
    pub fn spawn(
        &mut self,
        binary: &Path,
        args: &[String],
        host: &VmmHost,
        fds: Vec<(RawFd, RawFd)>,
    ) -> Result<(), HypervisorError> {
        let spawn_error = |source| HypervisorError::Spawn {
            program: binary.display().to_string(),
            source,
        };
        let stdout = host.console.try_clone().map_err(spawn_error)?;
        let stderr = host.console.try_clone().map_err(spawn_error)?;
        let cgroups = host.open_cgroup_procs().map_err(spawn_error)?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        crate::sys::process::die_with_parent(&mut command);
        crate::sys::process::join_cgroups(&mut command, cgroups);
        crate::sys::process::pass_fds(&mut command, fds);
        let mut child = command.spawn().map_err(|source| HypervisorError::Spawn {
            program: binary.display().to_string(),
            source,
        })?;
        self.pid = child.id();
        let exit_tx = self.exit_tx.clone();
        let killed = self.killed.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let exit = if killed.load(Ordering::SeqCst) {
                VmExit::Killed
            } else {
                VmExit::Exited(status.ok().and_then(|s| s.code()))
            };
            // send_replace: the value must be kept even when nobody watches yet.
            exit_tx.send_replace(Some(exit));
        });
        Ok(())
    }

    /// Waits up to `grace` for the VMM to end by itself, then kills it.
    pub async fn stop(&mut self, grace: Duration) -> VmExit {
        let Some(pid) = self.pid else {
            return VmExit::Exited(None);
        };
        let mut exit = self.exit_tx.subscribe();
        let wait = |exit: watch::Receiver<Option<VmExit>>| async move {
            crate::watch::wait_set(exit).await.unwrap_or(VmExit::Killed)
        };
        if let Ok(done) = tokio::time::timeout(grace, wait(exit.clone())).await {
            return done;
        }
        self.killed.store(true, Ordering::SeqCst);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        exit.mark_changed();
        wait(exit).await
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit_tx.subscribe()
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}
