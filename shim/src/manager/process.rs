//! What the manager knows of each process: status, pid, exit and stdio.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::agent::GuestExit;
use super::stdio::{ProcessIo, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    pub status: u32,
    pub at: SystemTime,
}

impl ProcessExit {
    pub fn now(status: u32) -> Self {
        ProcessExit {
            status,
            at: SystemTime::now(),
        }
    }

    /// The guest's report; a time before 1970 is taken as 1970.
    pub fn from_guest(exit: GuestExit) -> Self {
        ProcessExit {
            status: exit.status,
            at: UNIX_EPOCH + Duration::from_nanos(exit.exited_at_unix_nanos.max(0) as u64),
        }
    }
}

/// ProcessExit status reported when the real one is unknown (the VM died): what a
/// SIGKILL gives.
pub const UNKNOWN_EXIT: u32 = 137;

pub struct ProcessRecord {
    pub pid: u32,
    pub status: ProcessStatus,
    pub stdio: StdioPaths,
    /// For an exec not started yet: its OCI process as JSON.
    pub exec_spec: Option<Vec<u8>>,
    pub io: Option<ProcessIo>,
    /// Set (once) when the process's exit has been recorded.
    pub exit_tx: watch::Sender<Option<ProcessExit>>,
}

impl ProcessRecord {
    pub fn new(stdio: StdioPaths) -> Self {
        ProcessRecord {
            pid: 0,
            status: ProcessStatus::Created,
            stdio,
            exec_spec: None,
            io: None,
            exit_tx: watch::channel(None).0,
        }
    }

    pub fn exit(&self) -> Option<ProcessExit> {
        *self.exit_tx.borrow()
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<ProcessExit>> {
        self.exit_tx.subscribe()
    }

    /// Records the end: the status and, for State and Wait, the exit.
    pub fn stopped(&mut self, exit: ProcessExit) {
        self.status = ProcessStatus::Stopped;
        // send_replace keeps the exit for State even when nobody waits.
        self.exit_tx.send_replace(Some(exit));
    }
}
