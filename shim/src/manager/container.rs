//! One container as the manager keeps it. Its record (status, pids, exits)
//! sits behind a lock that is never held across an await, so State, Wait and
//! Kill answer at once; calls that change the container in the guest take
//! its own `ops` lock, so they queue only behind calls on the same container.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::error::LifecycleError;
use super::process::{ProcessExit, ProcessRecord, ProcessStatus};
use super::stdio::{StdioPaths, StdioWiring};
use crate::rootfs::RootfsMountSpec;

/// Where a container is on its way into the guest.
#[derive(Debug, Clone)]
pub enum Creation {
    /// Waiting for the sandbox's VM to boot.
    Waiting,
    /// Created in the guest (with this pid), or not, and why.
    Done(Result<u32, Arc<LifecycleError>>),
    /// Killed or deleted before it reached the guest.
    Abandoned,
}

/// What creating a container in the guest needs, kept while it waits for
/// the VM.
pub struct GuestCreate {
    /// The container's OCI spec as containerd gave it.
    pub spec: oci_spec::runtime::Spec,
    pub rootfs: Vec<RootfsMountSpec>,
    pub stdio: StdioWiring,
}

pub struct ManagedContainer {
    pub id: String,
    pub bundle: String,
    /// Serializes the calls that change this container in the guest.
    pub ops: tokio::sync::Mutex<()>,
    pub creation: watch::Sender<Creation>,
    record: Mutex<Record>,
}

pub struct Record {
    pub init: ProcessRecord,
    pub execs: HashMap<String, ProcessRecord>,
}

impl Record {
    pub fn process(&self, exec_id: &str) -> Result<&ProcessRecord, LifecycleError> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| LifecycleError::ExecNotFound(exec_id.to_owned()))
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut ProcessRecord, LifecycleError> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| LifecycleError::ExecNotFound(exec_id.to_owned()))
    }
}

impl ManagedContainer {
    pub fn new(id: &str, bundle: &str, stdio: StdioPaths, creation: Creation) -> Self {
        ManagedContainer {
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            ops: tokio::sync::Mutex::new(()),
            creation: watch::channel(creation).0,
            record: Mutex::new(Record {
                init: ProcessRecord::new(stdio),
                execs: HashMap::new(),
            }),
        }
    }

    /// The record, for a moment (never across an await).
    pub fn record(&self) -> MutexGuard<'_, Record> {
        self.record.lock().expect("container record lock")
    }

    /// Whether the container is still waiting for the VM.
    pub fn waiting_for_vm(&self) -> bool {
        matches!(*self.creation.borrow(), Creation::Waiting)
    }

    /// Waits until the container is in the guest; its pid there.
    pub async fn created(&self) -> Result<u32, LifecycleError> {
        let mut creation = self.creation.subscribe();
        let settled = creation
            .wait_for(|c| !matches!(c, Creation::Waiting))
            .await
            .map(|c| c.clone());
        match settled {
            Ok(Creation::Done(Ok(pid))) => Ok(pid),
            Ok(Creation::Done(Err(err))) => Err(LifecycleError::Creation(err)),
            _ => Err(LifecycleError::WrongState(format!(
                "container {} was stopped before it was created",
                self.id
            ))),
        }
    }

    /// Stops a container that never reached the guest: no process there
    /// to signal, so the end is recorded here. False if it had got further.
    pub fn abandon(&self, exit: ProcessExit) -> bool {
        let abandoned = self.creation.send_if_modified(|c| {
            let waiting = matches!(c, Creation::Waiting);
            if waiting {
                *c = Creation::Abandoned;
            }
            waiting
        });
        if abandoned {
            self.record().init.stopped(exit);
        }
        abandoned
    }

    /// The init's status, pid and exit.
    pub fn init_state(&self) -> (ProcessStatus, u32, Option<ProcessExit>) {
        let record = self.record();
        (record.init.status, record.init.pid, record.init.exit())
    }
}
