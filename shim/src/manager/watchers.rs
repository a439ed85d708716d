//! What the manager watches in the background: each started process's end,
//! the VM's end, and the guest's out-of-memory reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::calls::DRAIN_TIMEOUT;
use super::container::ManagedContainer;
use super::process::{ProcessExit, ProcessStatus, UNKNOWN_EXIT};
use super::{Booted, Event, Manager};
use crate::hypervisor::Fault;
use crate::watch::{wait_set, wait_set_or_never};

/// The shortest time between two OOM events for one container.
const OOM_EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// How long the OOM watch waits after a report it dropped.
const OOM_FLOOD_PAUSE: Duration = Duration::from_millis(100);

/// Which of the agent's OOM reports are passed on.
#[derive(Default)]
pub(super) struct OomFilter {
    last: HashMap<String, Instant>,
}

impl OomFilter {
    pub(super) fn admit(&mut self, id: &str, known: bool, now: Instant) -> bool {
        if !known {
            self.last.remove(id);
            return false;
        }
        match self.last.get(id) {
            Some(&at) if now.duration_since(at) < OOM_EVENT_INTERVAL => false,
            _ => {
                self.last.insert(id.to_owned(), now);
                true
            }
        }
    }

    #[cfg(test)]
    pub(super) fn remembered(&self) -> usize {
        self.last.len()
    }
}

impl Manager {
    /// Waits for a started process to end, drains its output, records the
    /// exit and sends it. An init's exit is sent after its execs'.
    pub(super) fn watch_exit(&self, container: Arc<ManagedContainer>, exec_id: String, pid: u32) {
        let Some(vm) = self.booted() else { return };
        let manager = self.clone();
        tokio::spawn(async move {
            let id = container.id.clone();
            let exit = tokio::select! {
                waited = vm.agent.wait_process(&id, &exec_id, None) => match waited {
                    Ok(exit) => {
                        if exit.oom_killed {
                            manager.send(Event::OutOfMemory { id: id.clone() });
                        }
                        ProcessExit::from_guest(exit)
                    }
                    Err(err) => {
                        tracing::warn!(container = %id, exec = %exec_id, err = %crate::agent_client::rpc_message(&err), "lost the process");
                        // The guest's processes are out of reach: end the
                        // VM rather than report exits of processes that
                        // may still run in it.
                        if manager.booted().is_some() {
                            vm.with_vm(|vm| vm.fail(Fault::AgentLost("waiting for a process failed")));
                        }
                        ProcessExit::now(UNKNOWN_EXIT)
                    }
                },
                _ = wait_set_or_never(vm.exit.clone()) => ProcessExit::now(UNKNOWN_EXIT),
            };

            // Output first: containerd reads the FIFOs until the exit.
            let (io, execs) = {
                let mut record = container.record();
                let execs: Vec<_> = if exec_id.is_empty() {
                    record.execs.values().map(|e| e.exit_watch()).collect()
                } else {
                    Vec::new()
                };
                let io = record.process_mut(&exec_id).ok().and_then(|p| p.io.take());
                (io, execs)
            };
            if let Some(mut io) = io {
                io.drain(DRAIN_TIMEOUT).await;
            }
            for exec in execs {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, wait_set(exec)).await;
            }
            if let Ok(process) = container.record().process_mut(&exec_id) {
                process.stopped(exit);
            }
            manager.send(Event::Exited {
                id,
                exec_id,
                pid,
                exit,
            });
        });
    }

    /// Watches a VM that came up: its out-of-memory reports, and its end,
    /// which ends the containers that never started (started ones end
    /// through `watch_exit`).
    pub(super) fn watch_vm(&self, vm: Arc<Booted>) {
        let manager = self.clone();
        let exit = vm.exit.clone();
        tokio::spawn(async move {
            let exit = wait_set_or_never(exit).await;
            if manager.booted().is_none() {
                return; // stopped by the shim
            }
            tracing::warn!(%exit, "the sandbox VM stopped");
            for id in manager.container_ids() {
                let Ok(container) = manager.container(&id) else {
                    continue;
                };
                let ended = {
                    let mut record = container.record();
                    let never_started = record.init.status == ProcessStatus::Created
                        && record.init.exit().is_none();
                    if never_started {
                        record.init.stopped(ProcessExit::now(UNKNOWN_EXIT));
                    }
                    never_started.then(|| (record.init.pid, record.init.exit()))
                };
                if let Some((pid, Some(exit))) = ended {
                    manager.send(Event::Exited {
                        id,
                        exec_id: String::new(),
                        pid,
                        exit,
                    });
                }
            }
        });
        self.watch_oom(vm);
    }

    /// Passes on the agent's OOM reports, for this sandbox's containers only
    /// and at most one per container per [`OOM_EVENT_INTERVAL`]: a
    /// compromised agent could otherwise flood containerd with events for
    /// any id. After a dropped report the next one waits, so a flood costs
    /// little.
    fn watch_oom(&self, vm: Arc<Booted>) {
        let manager = self.clone();
        tokio::spawn(async move {
            let mut filter = OomFilter::default();
            while let Ok(id) = vm.agent.next_oom().await {
                let known = manager.container(&id).is_ok();
                if filter.admit(&id, known, Instant::now()) {
                    manager.send(Event::OutOfMemory { id });
                } else {
                    tracing::debug!(container = %crate::guest_text::guest(&id), known, "OOM report dropped");
                    tokio::time::sleep(OOM_FLOOD_PAUSE).await;
                }
            }
        });
    }
}
