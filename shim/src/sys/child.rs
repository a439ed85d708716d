//! A helper process (a VMM, the vsock backend, virtiofsd) as a child of the
//! shim: one task waits for it, its end is kept for anyone who watches late,
//! and any task holding a [`ChildKiller`] can kill it. The kill goes through
//! the waiting task, which owns the child, so a pid that was already reaped
//! (and maybe reused) is never signalled.

use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{watch, Notify};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEnd {
    /// By itself, with this status (None when a signal ended it).
    Exited(Option<i32>),
    /// We killed it.
    Killed,
}

pub struct WatchedChild {
    pid: Option<u32>,
    end: watch::Receiver<Option<ChildEnd>>,
    kill: Arc<Notify>,
}

/// Kills a [`WatchedChild`] from anywhere; a no-op once it has ended.
#[derive(Clone)]
pub struct ChildKiller(Arc<Notify>);

impl ChildKiller {
    pub fn kill(&self) {
        // A stored permit: the waiting task kills even if it is not
        // waiting on it at this instant.
        self.0.notify_one();
    }
}

impl WatchedChild {
    /// Spawns `command` (which should `kill_on_drop`) and starts waiting
    /// for it.
    pub fn spawn(command: &mut Command) -> std::io::Result<Self> {
        let mut child = command.spawn()?;
        let pid = child.id();
        let (end_tx, end) = watch::channel(None);
        let kill = Arc::new(Notify::new());
        let killed = kill.clone();
        tokio::spawn(async move {
            let end = tokio::select! {
                status = child.wait() => ChildEnd::Exited(status.ok().and_then(|s| s.code())),
                _ = killed.notified() => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    ChildEnd::Killed
                }
            };
            // send_replace: kept even when nobody watches yet.
            end_tx.send_replace(Some(end));
        });
        Ok(WatchedChild { pid, end, kill })
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// `None` while it runs.
    pub fn end_watch(&self) -> watch::Receiver<Option<ChildEnd>> {
        self.end.clone()
    }

    pub fn killer(&self) -> ChildKiller {
        ChildKiller(self.kill.clone())
    }

    /// Waits up to `grace` for the child to end by itself, then kills it.
    pub async fn stop(&self, grace: Duration) -> ChildEnd {
        let end = self.end.clone();
        if let Ok(Some(done)) = tokio::time::timeout(grace, crate::watch::wait_set(end)).await {
            return done;
        }
        self.killer().kill();
        crate::watch::wait_set(self.end.clone())
            .await
            .unwrap_or(ChildEnd::Killed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> Command {
        let mut command = Command::new("sleep");
        command.arg("1000").kill_on_drop(true);
        command
    }

    #[tokio::test]
    async fn a_child_that_exits_reports_its_status() {
        let mut command = Command::new("sh");
        command.args(["-c", "exit 3"]);
        let child = WatchedChild::spawn(&mut command).unwrap();
        let end = crate::watch::wait_set(child.end_watch()).await;
        assert_eq!(end, Some(ChildEnd::Exited(Some(3))));
        // Late watchers and stop see the same end.
        assert_eq!(child.stop(Duration::ZERO).await, ChildEnd::Exited(Some(3)));
    }

    #[tokio::test]
    async fn a_killer_ends_the_child_and_stop_waits_out_its_grace_first() {
        let child = WatchedChild::spawn(&mut sleeper()).unwrap();
        let pid = child.pid().unwrap();
        child.killer().kill();
        let end = crate::watch::wait_set(child.end_watch()).await;
        assert_eq!(end, Some(ChildEnd::Killed));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

        let child = WatchedChild::spawn(&mut sleeper()).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            child.stop(Duration::from_millis(200)).await,
            ChildEnd::Killed
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_child_killed_by_someone_else_exited_without_a_status() {
        let child = WatchedChild::spawn(&mut sleeper()).unwrap();
        let pid = nix::unistd::Pid::from_raw(child.pid().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let end = crate::watch::wait_set(child.end_watch()).await;
        assert_eq!(end, Some(ChildEnd::Exited(None)));
        // A killer after the end does nothing.
        child.killer().kill();
    }
}
