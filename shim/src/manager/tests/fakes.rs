//! The fake agent, VM and launcher the lifecycle tests run against, and a
//! harness that puts them behind a manager.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hull_protocols::agent as api;
use hull_protocols::stdio::StreamHeader;
use oci_spec::runtime::Spec;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

use super::super::agent::{Agent, AgentResult, GuestExit};
use super::super::vm::{BootRequest, BootedVm, Cancel, ContainerShareError, Launcher};
use super::super::*;
use super::PROMPTLY;
use crate::agent_client;
use crate::hypervisor::{Fault, VmExit};
use crate::pod::CONTAINER_TYPE_ANNOTATION;
use crate::spec::{HostShare, SANDBOX_ID_ANNOTATION};

fn rpc_error(code: ttrpc::Code, message: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.to_owned()))
}

/// The guest as the fake agent keeps it: each process's pid and exit.
#[derive(Default)]
pub struct Guest {
    pub next_pid: u32,
    /// (container, exec) → its exit, once it ended.
    pub processes: HashMap<(String, String), watch::Sender<Option<GuestExit>>>,
    pub calls: Vec<String>,
    /// CreateContainer fails with this.
    pub fail_create: Option<String>,
    /// StartContainer waits until this is true.
    pub hold_start: Option<watch::Receiver<bool>>,
    /// SignalProcess waits until this is true (a guest that hung).
    pub hold_signal: Option<watch::Receiver<bool>>,
    /// SignalProcess fails with this (a connection the VMM's end broke).
    pub fail_signal: Option<String>,
    /// Set when the connection to the agent breaks: every wait fails.
    pub disconnected: watch::Sender<bool>,
    /// Stdio: stdout opens (a stream whose far end is kept here, so it
    /// never ends), stderr is refused.
    pub stdout_only: bool,
    pub far_ends: Vec<UnixStream>,
}

#[derive(Default, Clone)]
pub struct FakeAgent {
    pub guest: Arc<Mutex<Guest>>,
}

impl FakeAgent {
    pub fn call(&self, what: String) {
        self.guest.lock().unwrap().calls.push(what);
    }

    pub fn calls(&self) -> Vec<String> {
        self.guest.lock().unwrap().calls.clone()
    }

    pub fn spawn(&self, id: &str, exec_id: &str) -> u32 {
        let mut guest = self.guest.lock().unwrap();
        guest.next_pid += 1;
        guest
            .processes
            .insert((id.into(), exec_id.into()), watch::channel(None).0);
        guest.next_pid
    }

    /// Ends a process in the guest.
    pub fn exit(&self, id: &str, exec_id: &str, status: u32) {
        let guest = self.guest.lock().unwrap();
        let process = &guest.processes[&(id.to_owned(), exec_id.to_owned())];
        process.send_replace(Some(GuestExit {
            status,
            exited_at_unix_nanos: 1,
            oom_killed: false,
        }));
    }

    pub fn exit_of(
        &self,
        id: &str,
        exec_id: &str,
    ) -> AgentResult<watch::Receiver<Option<GuestExit>>> {
        let guest = self.guest.lock().unwrap();
        guest
            .processes
            .get(&(id.to_owned(), exec_id.to_owned()))
            .map(|p| p.subscribe())
            .ok_or_else(|| rpc_error(ttrpc::Code::NOT_FOUND, "no such process"))
    }
}

#[async_trait]
impl Agent for FakeAgent {
    async fn create_container(&self, id: &str, spec: Vec<u8>, _: api::Stdio) -> AgentResult<u32> {
        self.call(format!("create {id}"));
        serde_json::from_slice::<Spec>(&spec).expect("the guest gets a valid spec");
        if let Some(message) = self.guest.lock().unwrap().fail_create.clone() {
            return Err(rpc_error(ttrpc::Code::INVALID_ARGUMENT, &message));
        }
        Ok(self.spawn(id, ""))
    }

    async fn start_container(&self, id: &str) -> AgentResult<()> {
        self.call(format!("start {id}"));
        let hold = self.guest.lock().unwrap().hold_start.clone();
        if let Some(mut hold) = hold {
            let _ = hold.wait_for(|released| *released).await;
        }
        Ok(())
    }

    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        _: Vec<u8>,
        _: api::Stdio,
    ) -> AgentResult<u32> {
        self.call(format!("exec {id} {exec_id}"));
        Ok(self.spawn(id, exec_id))
    }

    async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        _: bool,
    ) -> AgentResult<()> {
        self.call(format!("signal {id} {exec_id} {signal}"));
        let (hold, fail) = {
            let guest = self.guest.lock().unwrap();
            (guest.hold_signal.clone(), guest.fail_signal.clone())
        };
        if let Some(mut hold) = hold {
            let _ = hold.wait_for(|released| *released).await;
        }
        if let Some(message) = fail {
            return Err(rpc_error(ttrpc::Code::UNAVAILABLE, &message));
        }
        let process = self.exit_of(id, exec_id)?;
        drop(process);
        if signal == libc::SIGKILL as u32 || signal == libc::SIGTERM as u32 {
            self.exit(id, exec_id, 128 + signal);
        }
        Ok(())
    }

    async fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        _: Option<Duration>,
    ) -> AgentResult<GuestExit> {
        let exit = self.exit_of(id, exec_id)?;
        let mut disconnected = self.guest.lock().unwrap().disconnected.subscribe();
        tokio::select! {
            exit = crate::watch::wait_set(exit) => {
                exit.ok_or_else(|| rpc_error(ttrpc::Code::UNAVAILABLE, "gone"))
            }
            _ = disconnected.wait_for(|gone| *gone) => {
                Err(ttrpc::Error::Socket("closed".into()))
            }
        }
    }

    async fn remove_container(&self, id: &str) -> AgentResult<()> {
        self.call(format!("remove {id}"));
        Ok(())
    }

    async fn list_processes(&self, id: &str) -> AgentResult<Vec<u32>> {
        let guest = self.guest.lock().unwrap();
        Ok(guest
            .processes
            .keys()
            .filter(|(c, _)| c == id)
            .map(|_| 1)
            .collect())
    }

    async fn pause_container(&self, id: &str) -> AgentResult<()> {
        self.call(format!("pause {id}"));
        Ok(())
    }

    async fn resume_container(&self, id: &str) -> AgentResult<()> {
        self.call(format!("resume {id}"));
        Ok(())
    }

    async fn stats_container(&self, _: &str) -> AgentResult<api::StatsContainerResponse> {
        Ok(Default::default())
    }

    async fn update_container(&self, _: &str, _: Vec<u8>) -> AgentResult<()> {
        Ok(())
    }

    async fn resize_terminal(&self, _: &str, _: &str, _: u32, _: u32) -> AgentResult<()> {
        Ok(())
    }

    async fn next_oom(&self) -> AgentResult<String> {
        std::future::pending().await
    }

    async fn open_stream(
        &self,
        header: &StreamHeader,
    ) -> Result<UnixStream, agent_client::AgentClientError> {
        let mut guest = self.guest.lock().unwrap();
        assert!(
            guest.stdout_only,
            "no stdio was asked for, yet {header:?} was opened"
        );
        if header.kind != hull_protocols::stdio::StreamKind::Stdout {
            return Err(agent_client::AgentClientError::StreamRefused {
                stream: header.kind.to_string(),
                reason: "refused by the test".into(),
            });
        }
        let (ours, far) = UnixStream::pair().unwrap();
        guest.far_ends.push(far);
        Ok(ours)
    }
}

/// What happened to the fake VM.
#[derive(Default)]
pub struct VmLog {
    pub mounted: Vec<String>,
    pub unmounted: Vec<String>,
    pub boots: usize,
    pub cancelled: Vec<String>,
    pub shutdowns: usize,
    pub faults: Vec<Fault>,
}

pub struct FakeVm {
    pub agent: FakeAgent,
    pub exit: watch::Sender<Option<VmExit>>,
    pub log: Arc<Mutex<VmLog>>,
}

#[async_trait]
impl BootedVm for FakeVm {
    fn agent(&self) -> Arc<dyn Agent> {
        Arc::new(self.agent.clone())
    }

    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit.subscribe()
    }

    fn mount_container(
        &self,
        id: &str,
        _: &[RootfsMountSpec],
        _: &[HostShare],
    ) -> Result<(), ContainerShareError> {
        self.log.lock().unwrap().mounted.push(id.to_owned());
        Ok(())
    }

    fn unmount_container(&self, id: &str) {
        self.log.lock().unwrap().unmounted.push(id.to_owned());
    }

    fn vmm_pid(&self) -> Option<u32> {
        None
    }

    fn host_pids(&self) -> Vec<u32> {
        Vec::new()
    }

    fn fail(&self, fault: Fault) {
        // As the real one: a no-op once the VM has ended.
        if self.exit.borrow().is_some() {
            return;
        }
        self.log.lock().unwrap().faults.push(fault);
        self.exit.send_replace(Some(VmExit::Failed(fault)));
    }

    async fn shutdown(self: Box<Self>) {
        self.log.lock().unwrap().shutdowns += 1;
    }
}

/// Boots a fake VM once `gate` opens; fails the boot if `fail` says so.
pub struct FakeLauncher {
    pub agent: FakeAgent,
    pub gate: watch::Receiver<bool>,
    pub fail: Option<String>,
    pub vm_exit: watch::Sender<Option<VmExit>>,
    pub log: Arc<Mutex<VmLog>>,
}

#[async_trait]
impl Launcher for FakeLauncher {
    fn preflight(&self, _: &Config, _: &SandboxOptions) -> Result<(), sandbox::SandboxError> {
        Ok(())
    }

    async fn boot(
        &self,
        _: BootRequest,
        cancel: Cancel,
    ) -> Result<Box<dyn BootedVm>, sandbox::SandboxError> {
        self.log.lock().unwrap().boots += 1;
        let mut gate = self.gate.clone();
        tokio::select! {
            _ = gate.wait_for(|open| *open) => {}
            why = cancel => {
                self.log.lock().unwrap().cancelled.push(why.clone());
                return Err(sandbox::SandboxError::Cancelled(why));
            }
        }
        if let Some(message) = &self.fail {
            return Err(sandbox::SandboxError::Cancelled(message.clone()));
        }
        Ok(Box::new(FakeVm {
            agent: self.agent.clone(),
            exit: self.vm_exit.clone(),
            log: self.log.clone(),
        }))
    }
}

pub struct Harness {
    pub manager: Manager,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub agent: FakeAgent,
    pub gate: watch::Sender<bool>,
    pub vm_exit: watch::Sender<Option<VmExit>>,
    pub log: Arc<Mutex<VmLog>>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_boot_failure(None)
    }

    pub fn with_boot_failure(fail: Option<&str>) -> Self {
        let agent = FakeAgent::default();
        let (gate, gate_rx) = watch::channel(false);
        let vm_exit = watch::channel(None).0;
        let log = Arc::new(Mutex::new(VmLog::default()));
        let launcher = FakeLauncher {
            agent: agent.clone(),
            gate: gate_rx,
            fail: fail.map(str::to_owned),
            vm_exit: vm_exit.clone(),
            log: log.clone(),
        };
        let (manager, events) = Manager::new(Arc::new(launcher), Arc::new(Progress::new(false)));
        Harness {
            manager,
            events,
            agent,
            gate,
            vm_exit,
            log,
        }
    }

    pub fn boot(&self) {
        self.gate.send_replace(true);
    }

    /// A container of the pod `pod` (`sandbox`: its pause container).
    pub fn request(&self, id: &str, pod: &str, sandbox: bool) -> ContainerRequest {
        let mut spec = Spec::default();
        let mut annotations = HashMap::new();
        annotations.insert(SANDBOX_ID_ANNOTATION.to_owned(), pod.to_owned());
        let kind = if sandbox { "sandbox" } else { "container" };
        annotations.insert(CONTAINER_TYPE_ANNOTATION.to_owned(), kind.to_owned());
        spec.set_annotations(Some(annotations));
        ContainerRequest {
            id: id.to_owned(),
            bundle: format!("/run/bundles/{id}"),
            spec,
            rootfs: vec![RootfsMountSpec::bind(Path::new("/rootfs"))],
            stdio: StdioWiring::Fifos(StdioPaths::default()),
            config: Config::default(),
        }
    }

    /// The next event, which must come promptly.
    pub async fn event(&mut self) -> Event {
        tokio::time::timeout(PROMPTLY, self.events.recv())
            .await
            .expect("an event came")
            .expect("the manager is alive")
    }

    /// A pod whose VM is up, with its pause container started.
    pub async fn running_pod(&mut self) {
        self.boot();
        self.manager
            .create(self.request("pod", "pod", true))
            .await
            .unwrap();
        self.manager.start("pod", "").await.unwrap();
        assert!(matches!(self.event().await, Event::Created { .. }));
        assert!(matches!(self.event().await, Event::Started { .. }));
    }
}
