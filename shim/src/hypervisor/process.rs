//! A VMM as a child process of the shim: started with its stdout and stderr
//! in the console log's pipe, in the sandbox's cgroups, dying with the shim
//! (PDEATHSIG), watched for its exit, stopped with a grace period before
//! SIGKILL, and killed at once through a [`VmmKiller`] when another part of
//! the sandbox fails. Both backends run this way.

use std::os::fd::RawFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use super::{Fault, HypervisorError, VmExit, VmmHost};
use crate::sys::child::{ChildEnd, ChildKiller, WatchedChild};

pub struct VmmProcess {
    child: Option<WatchedChild>,
    exit_tx: watch::Sender<Option<VmExit>>,
    /// Why the VMM was killed, when a part of the sandbox failed.
    fault: Arc<Mutex<Option<Fault>>>,
}

impl Default for VmmProcess {
    fn default() -> Self {
        VmmProcess {
            child: None,
            exit_tx: watch::channel(None).0,
            fault: Default::default(),
        }
    }
}

/// Kills a running VMM because a part of its sandbox failed; its exit then
/// reads [`VmExit::Failed`] with the fault. A no-op once the VMM has ended.
#[derive(Clone)]
pub struct VmmKiller {
    child: ChildKiller,
    exit: watch::Receiver<Option<VmExit>>,
    fault: Arc<Mutex<Option<Fault>>>,
}

impl VmmKiller {
    pub fn kill(&self, fault: Fault) {
        if self.exit.borrow().is_some() {
            return;
        }
        let mut recorded = self.fault.lock().expect("fault lock");
        if recorded.is_none() {
            tracing::warn!(%fault, "stopping the sandbox VM");
            *recorded = Some(fault);
        }
        self.child.kill();
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
        let child = WatchedChild::spawn(&mut command).map_err(spawn_error)?;
        let end = child.end_watch();
        self.child = Some(child);
        let exit_tx = self.exit_tx.clone();
        let fault = self.fault.clone();
        tokio::spawn(async move {
            let exit = match crate::watch::wait_set(end).await {
                Some(ChildEnd::Exited(status)) => VmExit::Exited(status),
                Some(ChildEnd::Killed) | None => match *fault.lock().expect("fault lock") {
                    Some(fault) => VmExit::Failed(fault),
                    None => VmExit::Killed,
                },
            };
            exit_tx.send_replace(Some(exit));
        });
        Ok(())
    }

    /// Waits up to `grace` for the VMM to end by itself, then kills it.
    pub async fn stop(&mut self, grace: Duration) -> VmExit {
        let Some(child) = &self.child else {
            return VmExit::Exited(None);
        };
        child.stop(grace).await;
        crate::watch::wait_set(self.exit_tx.subscribe())
            .await
            .unwrap_or(VmExit::Killed)
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit_tx.subscribe()
    }

    /// Kills the VMM for a fault; `None` before it started.
    pub fn killer(&self) -> Option<VmmKiller> {
        let child = self.child.as_ref()?;
        Some(VmmKiller {
            child: child.killer(),
            exit: self.exit_tx.subscribe(),
            fault: self.fault.clone(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(WatchedChild::pid)
    }
}
