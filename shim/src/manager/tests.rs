//! The lifecycle state machine against a fake agent and a fake VM: create,
//! start, exec, kill, wait, delete, a boot that others wait on, VM death
//! and agent errors, with no VM anywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hull_protocols::agent as api;
use hull_protocols::stdio::StreamHeader;
use oci_spec::runtime::Spec;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

use super::agent::{Agent, AgentResult, GuestExit};
use super::vm::{BootRequest, BootedVm, Cancel, ContainerShareError, Launcher};
use super::watchers::OomFilter;
use super::*;
use crate::agent_client;
use crate::hypervisor::VmExit;
use crate::pod::CONTAINER_TYPE_ANNOTATION;
use crate::spec::{HostShare, SANDBOX_ID_ANNOTATION};

/// Long enough for anything that should happen at once; calls that would
/// block never get there.
const PROMPTLY: Duration = Duration::from_secs(5);

fn rpc_error(code: ttrpc::Code, message: &str) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.to_owned()))
}

/// The guest as the fake agent keeps it: each process's pid and exit.
#[derive(Default)]
struct Guest {
    next_pid: u32,
    /// (container, exec) → its exit, once it ended.
    processes: HashMap<(String, String), watch::Sender<Option<GuestExit>>>,
    calls: Vec<String>,
    /// CreateContainer fails with this.
    fail_create: Option<String>,
    /// StartContainer waits until this is true.
    hold_start: Option<watch::Receiver<bool>>,
}

#[derive(Default, Clone)]
struct FakeAgent {
    guest: Arc<Mutex<Guest>>,
}

impl FakeAgent {
    fn call(&self, what: String) {
        self.guest.lock().unwrap().calls.push(what);
    }

    fn calls(&self) -> Vec<String> {
        self.guest.lock().unwrap().calls.clone()
    }

    fn spawn(&self, id: &str, exec_id: &str) -> u32 {
        let mut guest = self.guest.lock().unwrap();
        guest.next_pid += 1;
        guest
            .processes
            .insert((id.into(), exec_id.into()), watch::channel(None).0);
        guest.next_pid
    }

    /// Ends a process in the guest.
    fn exit(&self, id: &str, exec_id: &str, status: u32) {
        let guest = self.guest.lock().unwrap();
        let process = &guest.processes[&(id.to_owned(), exec_id.to_owned())];
        process.send_replace(Some(GuestExit {
            status,
            exited_at_unix_nanos: 1,
            oom_killed: false,
        }));
    }

    fn exit_of(&self, id: &str, exec_id: &str) -> AgentResult<watch::Receiver<Option<GuestExit>>> {
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
        crate::watch::wait_set(exit)
            .await
            .ok_or_else(|| rpc_error(ttrpc::Code::UNAVAILABLE, "gone"))
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
        panic!("no stdio was asked for, yet {header:?} was opened")
    }
}

/// What happened to the fake VM.
#[derive(Default)]
struct VmLog {
    mounted: Vec<String>,
    unmounted: Vec<String>,
    boots: usize,
    cancelled: Vec<String>,
    shutdowns: usize,
}

struct FakeVm {
    agent: FakeAgent,
    exit: watch::Receiver<Option<VmExit>>,
    log: Arc<Mutex<VmLog>>,
}

#[async_trait]
impl BootedVm for FakeVm {
    fn agent(&self) -> Arc<dyn Agent> {
        Arc::new(self.agent.clone())
    }

    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit.clone()
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

    async fn shutdown(self: Box<Self>) {
        self.log.lock().unwrap().shutdowns += 1;
    }
}

/// Boots a fake VM once `gate` opens; fails the boot if `fail` says so.
struct FakeLauncher {
    agent: FakeAgent,
    gate: watch::Receiver<bool>,
    fail: Option<String>,
    vm_exit: watch::Sender<Option<VmExit>>,
    log: Arc<Mutex<VmLog>>,
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
            exit: self.vm_exit.subscribe(),
            log: self.log.clone(),
        }))
    }
}

struct Harness {
    manager: Manager,
    events: mpsc::UnboundedReceiver<Event>,
    agent: FakeAgent,
    gate: watch::Sender<bool>,
    vm_exit: watch::Sender<Option<VmExit>>,
    log: Arc<Mutex<VmLog>>,
}

impl Harness {
    fn new() -> Self {
        Self::with_boot_failure(None)
    }

    fn with_boot_failure(fail: Option<&str>) -> Self {
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

    fn boot(&self) {
        self.gate.send_replace(true);
    }

    /// A container of the pod `pod` (`sandbox`: its pause container).
    fn request(&self, id: &str, pod: &str, sandbox: bool) -> ContainerRequest {
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
    async fn event(&mut self) -> Event {
        tokio::time::timeout(PROMPTLY, self.events.recv())
            .await
            .expect("an event came")
            .expect("the manager is alive")
    }

    /// A pod whose VM is up, with its pause container started.
    async fn running_pod(&mut self) {
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

async fn promptly<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PROMPTLY, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer at once"))
}

#[tokio::test]
async fn containers_created_while_the_vm_boots_answer_state_pids_and_kill_at_once() {
    let mut h = Harness::new();
    let pid = promptly("create", h.manager.create(h.request("pod", "pod", true)))
        .await
        .unwrap();
    assert_eq!(pid, 0, "created before the VM is up");
    assert!(h.manager.booting());
    let pid = promptly("create", h.manager.create(h.request("app", "pod", false)))
        .await
        .unwrap();
    assert_eq!(pid, 0);
    for id in ["pod", "app"] {
        let state = h.manager.state(id, "").unwrap();
        assert_eq!((state.status, state.pid), (ProcessStatus::Created, 0));
        assert_eq!(
            promptly("pids", h.manager.pids(id)).await.unwrap(),
            Vec::<u32>::new()
        );
    }
    // Start waits for the VM; meanwhile State still answers.
    let start = tokio::spawn({
        let manager = h.manager.clone();
        async move { manager.start("app", "").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!start.is_finished(), "Start returned before the VM was up");
    assert_eq!(
        h.manager.state("app", "").unwrap().status,
        ProcessStatus::Created
    );
    assert!(
        h.agent.calls().is_empty(),
        "the agent was called before it existed"
    );

    h.boot();
    let pid = promptly("start", start).await.unwrap().unwrap();
    assert!(pid > 0);
    assert_eq!(
        h.manager.state("app", "").unwrap().status,
        ProcessStatus::Running
    );
    assert_eq!(h.log.lock().unwrap().boots, 1, "one VM for the pod");
    let mounted = h.log.lock().unwrap().mounted.clone();
    assert!(mounted.contains(&"pod".to_owned()) && mounted.contains(&"app".to_owned()));
    assert!(matches!(h.event().await, Event::Created { ref id, pid: 0, .. } if id == "pod"));
    assert!(matches!(h.event().await, Event::Created { ref id, pid: 0, .. } if id == "app"));
    assert!(matches!(h.event().await, Event::Started { ref id, .. } if id == "app"));
}

#[tokio::test]
async fn a_container_killed_before_the_vm_is_up_ends_with_the_signal_and_its_delete_cancels_the_boot(
) {
    let mut h = Harness::new();
    h.manager
        .create(h.request("c1", "c1", false))
        .await
        .unwrap();
    assert!(matches!(h.event().await, Event::Created { .. }));
    // An ignored signal does nothing; SIGTERM ends it, as it would a fresh process.
    promptly(
        "kill",
        h.manager.kill("c1", "", libc::SIGWINCH as u32, false),
    )
    .await
    .unwrap();
    assert_eq!(
        h.manager.state("c1", "").unwrap().status,
        ProcessStatus::Created
    );
    promptly(
        "kill",
        h.manager.kill("c1", "", libc::SIGTERM as u32, false),
    )
    .await
    .unwrap();
    match h.event().await {
        Event::Exited { id, exit, .. } => assert_eq!((id.as_str(), exit.status), ("c1", 143)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        promptly("wait", h.manager.wait("c1", ""))
            .await
            .unwrap()
            .status,
        143
    );
    let state = h.manager.state("c1", "").unwrap();
    assert_eq!(state.status, ProcessStatus::Stopped);
    let err = h.manager.start("c1", "").await.unwrap_err();
    assert!(
        err.to_string().contains("stopped before it was created"),
        "{err}"
    );

    let (_, exit) = promptly("delete", h.manager.delete("c1", ""))
        .await
        .unwrap();
    assert_eq!(exit.status, 143);
    assert!(matches!(h.event().await, Event::Deleted { .. }));
    let log = h.log.lock().unwrap();
    assert_eq!(log.cancelled.len(), 1, "the boot was cancelled");
    assert!(log.mounted.is_empty() && h.agent.calls().is_empty());
    assert!(matches!(
        h.manager.state("c1", ""),
        Err(LifecycleError::ContainerNotFound(_))
    ));
}

#[tokio::test]
async fn a_failed_boot_fails_every_container_that_waited_and_delete_leaves_nothing() {
    let h = Harness::with_boot_failure(Some("no kernel"));
    h.manager
        .create(h.request("pod", "pod", true))
        .await
        .unwrap();
    h.manager
        .create(h.request("app", "pod", false))
        .await
        .unwrap();
    h.boot();
    for id in ["pod", "app"] {
        let err = promptly("start", h.manager.start(id, ""))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no kernel"), "{err}");
    }
    // A container created after the failure is refused with the same cause.
    let err = h
        .manager
        .create(h.request("late", "pod", false))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no kernel"), "{err}");
    for id in ["app", "pod"] {
        promptly("delete", h.manager.delete(id, "")).await.unwrap();
    }
    assert!(h.agent.calls().is_empty());
    assert_eq!(h.log.lock().unwrap().shutdowns, 0, "no VM was left to stop");
    assert!(h.manager.shutdown().await);
}

#[tokio::test]
async fn exec_kill_wait_and_delete_after_the_vm_is_up() {
    let mut h = Harness::new();
    h.running_pod().await;
    let pid = h
        .manager
        .create(h.request("app", "pod", false))
        .await
        .unwrap();
    assert!(pid > 0, "created in the guest before Create returns");
    h.manager.start("app", "").await.unwrap();
    assert!(matches!(h.event().await, Event::Created { pid: p, .. } if p == pid));
    assert!(matches!(h.event().await, Event::Started { .. }));

    h.manager
        .add_exec("app", "e1", b"{}".to_vec(), StdioPaths::default())
        .unwrap();
    let err = h
        .manager
        .add_exec("app", "e1", b"{}".to_vec(), StdioPaths::default())
        .unwrap_err();
    assert!(matches!(err, LifecycleError::ExecExists(_)));
    h.manager.start("app", "e1").await.unwrap();
    assert!(matches!(h.event().await, Event::ExecAdded { .. }));
    assert!(matches!(h.event().await, Event::ExecStarted { .. }));
    let err = h.manager.start("app", "e1").await.unwrap_err();
    assert!(err.to_string().contains("already started"), "{err}");
    h.agent.exit("app", "e1", 3);
    assert_eq!(
        promptly("wait", h.manager.wait("app", "e1"))
            .await
            .unwrap()
            .status,
        3
    );
    assert!(
        matches!(h.event().await, Event::Exited { ref exec_id, exit, .. } if exec_id == "e1" && exit.status == 3)
    );
    h.manager.delete("app", "e1").await.unwrap();
    assert!(matches!(
        h.manager.state("app", "e1"),
        Err(LifecycleError::ExecNotFound(_))
    ));

    let err = h.manager.delete("app", "").await.unwrap_err();
    assert!(err.to_string().contains("still running"), "{err}");
    h.manager.pause("app").await.unwrap();
    assert_eq!(
        h.manager.state("app", "").unwrap().status,
        ProcessStatus::Paused
    );
    h.manager.resume("app").await.unwrap();
    h.manager
        .kill("app", "", libc::SIGKILL as u32, false)
        .await
        .unwrap();
    assert_eq!(
        promptly("wait", h.manager.wait("app", ""))
            .await
            .unwrap()
            .status,
        137
    );
    let err = h
        .manager
        .kill("app", "", libc::SIGKILL as u32, false)
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::Finished));
    h.manager.delete("app", "").await.unwrap();
    let calls = h.agent.calls();
    assert!(calls.contains(&"remove app".to_owned()), "{calls:?}");
    assert!(h.log.lock().unwrap().unmounted.contains(&"app".to_owned()));
    assert_eq!(
        h.log.lock().unwrap().shutdowns,
        0,
        "the pod's VM stays for its pause container"
    );

    // The pod's own container takes the VM with it.
    h.manager
        .kill("pod", "", libc::SIGKILL as u32, false)
        .await
        .unwrap();
    h.manager.wait("pod", "").await.unwrap();
    h.manager.delete("pod", "").await.unwrap();
    assert_eq!(h.log.lock().unwrap().shutdowns, 1);
    assert!(h.manager.shutdown().await);
}

#[tokio::test]
async fn vm_death_ends_started_and_never_started_containers() {
    let mut h = Harness::new();
    h.running_pod().await;
    h.manager
        .create(h.request("idle", "pod", false))
        .await
        .unwrap();
    h.vm_exit.send_replace(Some(VmExit::Killed));
    for id in ["pod", "idle"] {
        let exit = promptly("wait", h.manager.wait(id, "")).await.unwrap();
        assert_eq!(exit.status, UNKNOWN_EXIT, "{id}");
    }
    let mut exited = Vec::new();
    while exited.len() < 2 {
        if let Event::Exited { id, .. } = h.event().await {
            exited.push(id);
        }
    }
    exited.sort();
    assert_eq!(exited, ["idle", "pod"]);
    // A dead VM's containers delete without the agent.
    let calls = h.agent.calls().len();
    h.manager.delete("idle", "").await.unwrap();
    h.manager.delete("pod", "").await.unwrap();
    assert_eq!(h.agent.calls().len(), calls);
    assert_eq!(h.log.lock().unwrap().shutdowns, 1);
}

#[tokio::test]
async fn an_agent_error_is_returned_with_its_message_and_the_container_is_undone() {
    let mut h = Harness::new();
    h.running_pod().await;
    h.agent.guest.lock().unwrap().fail_create = Some("exec: \"nope\" not found".into());
    let err = h
        .manager
        .create(h.request("app", "pod", false))
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::Agent { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(matches!(
        h.manager.state("app", ""),
        Err(LifecycleError::ContainerNotFound(_))
    ));
    assert!(h.log.lock().unwrap().unmounted.contains(&"app".to_owned()));
    // The pod keeps its VM, and a container of another sandbox is refused.
    assert_eq!(h.log.lock().unwrap().shutdowns, 0);
    let err = h
        .manager
        .create(h.request("other", "other-pod", true))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LifecycleError::OtherSandbox { .. }),
        "{err:?}"
    );
    let err = h
        .manager
        .create(h.request("pod", "pod", true))
        .await
        .unwrap_err();
    assert!(matches!(err, LifecycleError::ContainerExists(_)));
}

#[tokio::test]
async fn one_containers_slow_call_does_not_hold_up_another() {
    let mut h = Harness::new();
    h.running_pod().await;
    h.manager
        .create(h.request("slow", "pod", false))
        .await
        .unwrap();
    h.manager
        .create(h.request("quick", "pod", false))
        .await
        .unwrap();
    let (release, hold) = watch::channel(false);
    h.agent.guest.lock().unwrap().hold_start = Some(hold);
    let slow = tokio::spawn({
        let manager = h.manager.clone();
        async move { manager.start("slow", "").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!slow.is_finished());
    let started = Instant::now();
    h.manager.state("quick", "").unwrap();
    h.manager.state("slow", "").unwrap();
    promptly("pids", h.manager.pids("quick")).await.unwrap();
    promptly(
        "kill",
        h.manager.kill("pod", "", libc::SIGWINCH as u32, false),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < PROMPTLY);
    release.send_replace(true);
    promptly("start", slow).await.unwrap().unwrap();
}

#[test]
fn oom_reports_pass_only_for_known_containers_once_a_second() {
    let mut filter = OomFilter::default();
    let start = Instant::now();
    assert!(!filter.admit("not-ours", false, start));
    assert!(filter.admit("c1", true, start));
    for ms in [1, 10, 500, 999] {
        assert!(!filter.admit("c1", true, start + Duration::from_millis(ms)));
    }
    assert!(filter.admit("c2", true, start + Duration::from_millis(1)));
    assert!(filter.admit("c1", true, start + Duration::from_millis(1000)));
    // A flood of unknown ids keeps nothing.
    for n in 0..10_000 {
        assert!(!filter.admit(&format!("x{n}"), false, start));
    }
    assert_eq!(filter.remembered(), 2);
}
