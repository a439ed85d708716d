//! The lifecycle calls on one container or process.

use std::sync::Arc;
use std::time::Duration;

use hull_protocols::agent::StatsContainerResponse;

use super::agent::cleanup_deadline;
use super::container::{Creation, ManagedContainer};
use super::error::{agent_failed, LifecycleError};
use super::process::{ProcessExit, ProcessRecord, ProcessStatus, UNKNOWN_EXIT};
use super::stdio::{ProcessIo, StdioPaths, StdioWiring};
use super::{Agent, Event, Manager, ProcessState};

/// How long a Kill whose agent call failed waits for the VM's end to show:
/// a VMM killed under the call breaks the connection a moment before its
/// exit is seen.
const VM_END_GRACE: Duration = Duration::from_secs(2);

/// Signals whose default action ends a process: what a signal does to a
/// container that has no process yet (it is still waiting for the VM).
fn ends_by_default(signal: u32) -> bool {
    let ignored = [
        libc::SIGCHLD,
        libc::SIGCONT,
        libc::SIGURG,
        libc::SIGWINCH,
        libc::SIGSTOP,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ];
    signal != 0 && !ignored.iter().any(|&s| s as u32 == signal)
}

impl Manager {
    /// Starts a container's init (`exec_id` empty) or an exec process. A
    /// container still waiting for the VM is waited for first.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, LifecycleError> {
        let container = self.container(id)?;
        if exec_id.is_empty() {
            container.created().await?;
        }
        let _ops = container.ops.lock().await;
        let agent = self.agent()?;
        let pid = self.start_in_guest(&container, agent, exec_id).await?;
        self.watch_exit(container.clone(), exec_id.to_owned(), pid);
        Ok(pid)
    }

    /// Starts the init or an exec process in the guest, with its stdio.
    async fn start_in_guest(
        &self,
        container: &ManagedContainer,
        agent: Arc<dyn Agent>,
        exec_id: &str,
    ) -> Result<u32, LifecycleError> {
        let id = container.id.as_str();
        let pid = if exec_id.is_empty() {
            let pid = {
                let record = container.record();
                if record.init.status != ProcessStatus::Created || record.init.exit().is_some() {
                    return Err(LifecycleError::WrongState(format!(
                        "container {id} was already started"
                    )));
                }
                record.init.pid
            };
            agent
                .start_container(id)
                .await
                .map_err(agent_failed("starting the container"))?;
            container.record().init.status = ProcessStatus::Running;
            self.send(Event::Started {
                id: id.to_owned(),
                pid,
            });
            pid
        } else {
            let (spec, stdio) = {
                let mut record = container.record();
                let process = record.process_mut(exec_id)?;
                let spec = process.exec_spec.take().ok_or_else(|| {
                    LifecycleError::WrongState(format!("exec {exec_id} was already started"))
                })?;
                (spec, process.stdio.clone())
            };
            let pid = agent
                .exec_process(id, exec_id, spec, stdio.request())
                .await
                .map_err(agent_failed("starting the exec process"))?;
            let wiring = StdioWiring::Fifos(stdio);
            let io = ProcessIo::attach(agent.as_ref(), id, exec_id, &wiring).await?;
            {
                let mut record = container.record();
                let process = record.process_mut(exec_id)?;
                process.pid = pid;
                process.io = Some(io);
                process.status = ProcessStatus::Running;
            }
            self.send(Event::ExecStarted {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                pid,
            });
            pid
        };
        Ok(pid)
    }

    /// Adds an exec process (started by `start`).
    pub fn add_exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: StdioPaths,
    ) -> Result<(), LifecycleError> {
        stdio.validate()?;
        crate::ids::validate("exec id", exec_id)?;
        // What does not parse is the agent's to refuse; what parses is held
        // to the kernel's exec limits here, where the error can say so.
        if let Ok(parsed) = serde_json::from_slice::<oci_spec::runtime::Process>(&process) {
            crate::spec::check_exec_limits(&parsed)?;
        }
        let container = self.container(id)?;
        {
            let mut record = container.record();
            if record.init.status != ProcessStatus::Running {
                return Err(LifecycleError::WrongState(format!(
                    "container {id} is not running"
                )));
            }
            if record.execs.contains_key(exec_id) {
                return Err(LifecycleError::ExecExists(exec_id.to_owned()));
            }
            let mut exec = ProcessRecord::new(stdio);
            exec.exec_spec = Some(process);
            record.execs.insert(exec_id.to_owned(), exec);
        }
        self.send(Event::ExecAdded {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        });
        Ok(())
    }

    /// Signals a process (`all`: every process of the container). A
    /// container still waiting for the VM has no process: a signal that
    /// would end one ends it here.
    pub async fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), LifecycleError> {
        let container = self.container(id)?;
        {
            let record = container.record();
            if record.process(exec_id)?.exit().is_some() && !all {
                return Err(LifecycleError::Finished);
            }
        }
        if exec_id.is_empty() && container.waiting_for_vm() {
            if ends_by_default(signal) {
                let exit = ProcessExit::now(128 + signal);
                if container.abandon(exit) {
                    self.send(Event::Exited {
                        id: id.to_owned(),
                        exec_id: String::new(),
                        pid: 0,
                        exit,
                    });
                    return Ok(());
                }
            } else {
                return Ok(());
            }
        }
        if exec_id.is_empty() {
            container.created().await?;
        }
        // Every process ended with the VM (its exit may still be on its
        // way): nothing is left to signal. containerd's CRI kills a
        // container's processes on its exit, and must not fail then.
        let ended_with_the_vm = || {
            if all {
                Ok(())
            } else {
                Err(LifecycleError::Finished)
            }
        };
        let vm = self.booted().ok_or(LifecycleError::VmNotRunning)?;
        if !vm.alive() {
            return ended_with_the_vm();
        }
        match vm.agent.signal_process(id, exec_id, signal, all).await {
            Ok(()) => Ok(()),
            // The VM ended while the signal was on its way (a kill is what
            // comes to a sandbox that hung): the same answer.
            Err(_) if vm.ends_within(VM_END_GRACE).await => ended_with_the_vm(),
            Err(err) => Err(agent_failed("signalling")(err)),
        }
    }

    /// Removes an exec process, or a container that is not running. The
    /// sandbox goes with its own container or its last one.
    pub async fn delete(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(u32, ProcessExit), LifecycleError> {
        let container = self.container(id)?;
        if !exec_id.is_empty() {
            let mut record = container.record();
            let process = record.process(exec_id)?;
            if process.status == ProcessStatus::Running {
                return Err(LifecycleError::WrongState(format!(
                    "exec {exec_id} is still running"
                )));
            }
            let (pid, exit) = (process.pid, process.exit().unwrap_or(ProcessExit::now(0)));
            record.execs.remove(exec_id);
            return Ok((pid, exit));
        }

        let (status, _, _) = container.init_state();
        if matches!(status, ProcessStatus::Running | ProcessStatus::Paused) {
            return Err(LifecycleError::WrongState(format!(
                "container {id} is still running; kill it first"
            )));
        }
        // A container still waiting for the VM never gets there.
        container.abandon(ProcessExit::now(UNKNOWN_EXIT));
        let ops = container.ops.lock().await;
        let in_guest = matches!(*container.creation.borrow(), Creation::Done(Ok(_)));
        if in_guest {
            self.remove_from_guest(&container).await;
        }
        drop(ops);
        self.inner
            .containers
            .lock()
            .expect("containers lock")
            .remove(id);
        let (_, pid, exit) = container.init_state();
        let exit = exit.unwrap_or(ProcessExit::now(UNKNOWN_EXIT));
        let own_sandbox = self.sandbox_id().as_deref() == Some(id);
        if own_sandbox || !self.has_containers() {
            self.shutdown_sandbox().await;
        }
        self.send(Event::Deleted {
            id: id.to_owned(),
            pid,
            exit,
        });
        Ok((pid, exit))
    }

    /// Removes a created container from the guest (killing it first if it
    /// never started) and its files from the share.
    async fn remove_from_guest(&self, container: &ManagedContainer) {
        let id = &container.id;
        let Some(vm) = self.booted() else { return };
        if vm.alive() {
            let never_started = container.init_state().0 == ProcessStatus::Created;
            if never_started {
                let _ = vm
                    .agent
                    .signal_process(id, "", libc::SIGKILL as u32, true)
                    .await;
                let _ = vm.agent.wait_process(id, "", cleanup_deadline()).await;
            }
            if let Err(err) = vm.agent.remove_container(id).await {
                tracing::warn!(container = %id, err = %crate::agent_client::rpc_message(&err), "RemoveContainer");
            }
        }
        vm.with_vm(|v| v.unmount_container(id));
    }

    /// What State reports; never waits.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<ProcessState, LifecycleError> {
        let container = self.container(id)?;
        let record = container.record();
        let process = record.process(exec_id)?;
        Ok(ProcessState {
            bundle: container.bundle.clone(),
            pid: process.pid,
            status: process.status,
            stdio: process.stdio.clone(),
            exit: process.exit(),
        })
    }

    /// The container's init pid (0 until it is in the guest).
    pub fn init_pid(&self, id: &str) -> Option<u32> {
        self.container(id).ok().map(|c| c.init_state().1)
    }

    /// Waits for a process to end.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ProcessExit, LifecycleError> {
        let exit = self.container(id)?.record().process(exec_id)?.exit_watch();
        crate::watch::wait_set(exit)
            .await
            .ok_or_else(|| LifecycleError::WrongState("the process went away".into()))
    }

    /// The container's processes in the guest (none while it waits for the VM).
    pub async fn pids(&self, id: &str) -> Result<Vec<u32>, LifecycleError> {
        let container = self.container(id)?;
        if !matches!(*container.creation.borrow(), Creation::Done(Ok(_))) {
            return Ok(Vec::new());
        }
        self.agent()?
            .list_processes(id)
            .await
            .map_err(agent_failed("listing processes"))
    }

    pub async fn pause(&self, id: &str) -> Result<(), LifecycleError> {
        self.change_run_state(id, true).await
    }

    pub async fn resume(&self, id: &str) -> Result<(), LifecycleError> {
        self.change_run_state(id, false).await
    }

    async fn change_run_state(&self, id: &str, pause: bool) -> Result<(), LifecycleError> {
        let container = self.container(id)?;
        let _ops = container.ops.lock().await;
        let agent = self.agent()?;
        if pause {
            agent
                .pause_container(id)
                .await
                .map_err(agent_failed("pausing"))?;
        } else {
            agent
                .resume_container(id)
                .await
                .map_err(agent_failed("resuming"))?;
        }
        container.record().init.status = if pause {
            ProcessStatus::Paused
        } else {
            ProcessStatus::Running
        };
        self.send(if pause {
            Event::Paused { id: id.to_owned() }
        } else {
            Event::Resumed { id: id.to_owned() }
        });
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<StatsContainerResponse, LifecycleError> {
        self.container(id)?;
        self.agent()?
            .stats_container(id)
            .await
            .map_err(agent_failed("reading statistics"))
    }

    pub async fn update(&self, id: &str, resources: Vec<u8>) -> Result<(), LifecycleError> {
        self.container(id)?;
        self.agent()?
            .update_container(id, resources)
            .await
            .map_err(agent_failed("updating resources"))
    }

    pub async fn resize_terminal(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<(), LifecycleError> {
        self.container(id)?.record().process(exec_id)?;
        self.agent()?
            .resize_terminal(id, exec_id, rows, columns)
            .await
            .map_err(agent_failed("resizing the terminal"))
    }

    /// Ends a process's stdin (containerd's CloseIO).
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), LifecycleError> {
        let stdin = {
            let container = self.container(id)?;
            let record = container.record();
            record.process(exec_id)?.io.as_ref().map(ProcessIo::stdin)
        };
        if let Some(stdin) = stdin {
            stdin.close().await;
        }
        Ok(())
    }
}

/// How long a process's output may take to drain after it exited.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
