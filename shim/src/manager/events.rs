//! What happened to a sandbox's containers, in the order it happened: the
//! containerd adapter publishes each as a task event.

use super::process::ProcessExit;
use super::stdio::StdioPaths;
use crate::rootfs::RootfsMountSpec;

#[derive(Debug, Clone)]
pub enum Event {
    Created {
        id: String,
        bundle: String,
        rootfs: Vec<RootfsMountSpec>,
        stdio: StdioPaths,
        pid: u32,
    },
    Started {
        id: String,
        pid: u32,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    /// A process ended (`exec_id` empty: the container's init).
    Exited {
        id: String,
        exec_id: String,
        pid: u32,
        exit: ProcessExit,
    },
    OutOfMemory {
        id: String,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
    Deleted {
        id: String,
        pid: u32,
        exit: ProcessExit,
    },
}
