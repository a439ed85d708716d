//! Reaps every child and orphan of the agent and hands each exit status to
//! whoever waits for that pid.
//!
//! The agent is PID 1 in the guest (a child subreaper on the host), so it is
//! the parent of last resort of every container process. A single reaper owns
//! `waitpid(-1)`; nothing else in the agent may wait for a child, or the two
//! would steal statuses from each other.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + N for a process killed by signal N (as a shell
    /// and runc report it).
    pub status: i32,
    pub at: SystemTime,
}

/// Exits of pids nobody has asked for yet are kept this long (by count), so a
/// process that ends before its pid is registered is not lost.
const UNCLAIMED_LIMIT: usize = 4096;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, Exit>,
    unclaimed_order: VecDeque<i32>,
}

#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
}

impl Reaper {
    /// Starts reaping on SIGCHLD. Must be called inside the tokio runtime.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let reaper = Arc::new(Reaper::default());
        let mut sigchld = signal(SignalKind::child())?;
        let task_reaper = reaper.clone();
        tokio::spawn(async move {
            loop {
                task_reaper.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns a child through `spawn` and registers its pid before any exit
    /// of it can be reaped, so the status cannot be confused with a stale one.
    pub fn spawn<T>(
        &self,
        spawn: impl FnOnce() -> std::io::Result<T>,
        pid_of: impl Fn(&T) -> u32,
    ) -> std::io::Result<(T, oneshot::Receiver<Exit>)> {
        let mut state = self.state.lock().expect("reaper lock");
        let child = spawn()?;
        let pid = pid_of(&child) as i32;
        state.unclaimed.remove(&pid);
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(pid, tx);
        Ok((child, rx))
    }

    /// Waits for the exit of `pid`, which may already have happened.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state.lock().expect("reaper lock");
        match state.unclaimed.remove(&pid) {
            Some(exit) => {
                let _ = tx.send(exit);
            }
            None => {
                state.waiters.insert(pid, tx);
            }
        }
        rx
    }

    fn reap_all(&self) {
        let mut state = self.state.lock().expect("reaper lock");
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed");
                    return;
                }
            };
            let exit = Exit {
                status,
                at: SystemTime::now(),
            };
            let pid = pid.as_raw();
            tracing::debug!(pid, status, "reaped");
            match state.waiters.remove(&pid) {
                Some(waiter) => {
                    let _ = waiter.send(exit);
                }
                None => {
                    if state.unclaimed_order.len() >= UNCLAIMED_LIMIT {
                        if let Some(old) = state.unclaimed_order.pop_front() {
                            state.unclaimed.remove(&old);
                        }
                    }
                    state.unclaimed.insert(pid, exit);
                    state.unclaimed_order.push_back(pid);
                }
            }
        }
    }
}
