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

/// How long a helper's end may precede the VMM's own: a VMM that stops
/// (the guest powered off) ends its helpers too, and they may be seen first.
const HELPER_END_GRACE: Duration = Duration::from_secs(1);

impl VmmKiller {
    /// For a helper that ended while the VMM ran: the fault is the VMM's
    /// cause of death unless the VMM exits cleanly (then the helper only
    /// followed a guest that powered off), and the VMM is killed if it has
    /// not ended by itself within [`HELPER_END_GRACE`] (QEMU, for one, often
    /// exits by itself when a vhost-user backend goes).
    pub async fn helper_ended(&self, fault: Fault) {
        if !self.record(fault) {
            return;
        }
        let ended = crate::watch::wait_set(self.exit.clone());
        if tokio::time::timeout(HELPER_END_GRACE, ended).await.is_err() {
            self.kill(fault);
        }
    }

    /// Kills the VMM for `fault`.
    pub fn kill(&self, fault: Fault) {
        if self.record(fault) {
            tracing::warn!(%fault, "stopping the sandbox VM");
            self.child.kill();
        }
    }

    /// Records `fault` as the VMM's cause of death, unless it has ended or
    /// another fault came first; whether the VMM still runs.
    fn record(&self, fault: Fault) -> bool {
        if self.exit.borrow().is_some() {
            return false;
        }
        self.fault.lock().expect("fault lock").get_or_insert(fault);
        true
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
            let end = crate::watch::wait_set(end).await;
            let fault = *fault.lock().expect("fault lock");
            let exit = match (end, fault) {
                // A clean power-off, whatever its helpers did after.
                (Some(ChildEnd::Exited(Some(0))), _) => VmExit::Exited(Some(0)),
                (_, Some(fault)) => VmExit::Failed(fault),
                (Some(ChildEnd::Exited(status)), None) => VmExit::Exited(status),
                (Some(ChildEnd::Killed) | None, None) => VmExit::Killed,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::Helper;

    const FAULT: Fault = Fault::HelperEnded {
        helper: Helper::Virtiofsd,
        status: None,
    };

    /// A "VMM" running `script` under sh, with a pipe as its console.
    fn vmm(script: &str) -> VmmProcess {
        let (_read, write) = nix::unistd::pipe().unwrap();
        let host = VmmHost {
            console: write,
            cgroup_procs: Vec::new(),
        };
        let mut process = VmmProcess::default();
        let args = ["-c".to_owned(), script.to_owned()];
        process
            .spawn(Path::new("/bin/sh"), &args, &host, Vec::new())
            .unwrap();
        process
    }

    async fn exit_after_helper_ended(script: &str) -> VmExit {
        let process = vmm(script);
        process.killer().unwrap().helper_ended(FAULT).await;
        crate::watch::wait_set(process.exit_watch()).await.unwrap()
    }

    #[tokio::test]
    async fn a_helper_that_ends_under_a_running_vmm_stops_it_naming_the_helper() {
        assert_eq!(
            exit_after_helper_ended("sleep 100").await,
            VmExit::Failed(FAULT)
        );
        // QEMU exits by itself when a vhost-user backend goes: still the
        // helper's fault.
        assert_eq!(
            exit_after_helper_ended("sleep 0.2; exit 1").await,
            VmExit::Failed(FAULT)
        );
    }

    #[tokio::test]
    async fn a_helper_that_only_followed_a_clean_power_off_is_no_fault() {
        assert_eq!(
            exit_after_helper_ended("sleep 0.2; exit 0").await,
            VmExit::Exited(Some(0))
        );
        let process = vmm("exit 0");
        crate::watch::wait_set(process.exit_watch()).await;
        let killer = process.killer().unwrap();
        killer.helper_ended(FAULT).await;
        killer.kill(FAULT);
        assert_eq!(
            *process.exit_watch().borrow(),
            Some(VmExit::Exited(Some(0)))
        );
    }
}
