//! What the shim knows of each process: status, pid, exit and stdio.

use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use super::io::{ProcessIo, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// How a process ended, as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn now(status: u32) -> Self {
        Exit {
            status,
            at: SystemTime::now(),
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// Exit status reported when the real one is unknown (the VM died): what a
/// SIGKILL gives.
pub const UNKNOWN_EXIT: u32 = 137;

pub struct Process {
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    /// For an exec not started yet: its OCI process as JSON.
    pub exec_spec: Option<Vec<u8>>,
    pub io: Option<ProcessIo>,
    /// Set (once) when the process's exit has been published.
    pub exit_tx: watch::Sender<Option<Exit>>,
}

impl Process {
    pub fn new(stdio: StdioPaths) -> Self {
        Process {
            pid: 0,
            status: Status::Created,
            stdio,
            exec_spec: None,
            io: None,
            exit_tx: watch::channel(None).0,
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit_tx.subscribe()
    }

    pub fn state_status(&self) -> containerd_shim_protos::api::Status {
        use containerd_shim_protos::api::Status as S;
        match self.status {
            Status::Created => S::CREATED,
            Status::Running => S::RUNNING,
            Status::Paused => S::PAUSED,
            Status::Stopped => S::STOPPED,
        }
    }
}

/// Waits for a watched exit.
pub async fn wait_exit(mut exit: watch::Receiver<Option<Exit>>) -> Option<Exit> {
    let result = exit.wait_for(Option::is_some).await.ok().and_then(|e| *e);
    result
}
