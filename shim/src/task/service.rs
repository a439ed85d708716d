//! The task service: containerd's Task API v2 mapped onto one sandbox VM
//! and its agent. Requests that only read state answer from the shim's own
//! records; everything about processes goes to the agent.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::*;
use containerd_shim::protos::events::task::*;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics::*;
use hull_protocols::agent as agent_api;
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageDyn};
use tokio::sync::{watch, Mutex};
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use super::io::{ProcessIo, StdioPaths};
use super::process::{wait_exit, Exit, Process, Status, UNKNOWN_EXIT};
use crate::agent_client::{context, rpc_message, AgentClient};
use crate::config::Config;
use crate::hypervisor::VmExit;
use crate::pod::{network_namespace, vm_size, Role};
use crate::rootfs::{RootfsMountSpec, ShareBind};
use crate::sandbox::{Progress, SandboxOptions, SandboxVm, GUEST_SHARE_DIR};
use crate::spec::{
    guest_spec, is_memory_volume, rootfs_in_share, sandbox_id, shm_source, PodContext,
};

/// How long a process's output may take to drain after it exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of ordinary agent calls.
const AGENT_CALL: Duration = Duration::from_secs(60);

type TtrpcResult<T> = ttrpc::Result<T>;

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn invalid_id(err: crate::ids::InvalidId) -> ttrpc::Error {
    status(Code::INVALID_ARGUMENT, format!("Hull: {err}"))
}

fn agent_error(what: &str) -> impl FnOnce(ttrpc::Error) -> ttrpc::Error + '_ {
    move |err| {
        let code = match &err {
            ttrpc::Error::RpcStatus(s) => s.code(),
            _ => Code::UNAVAILABLE,
        };
        status(code, format!("{what}: {}", rpc_message(&err)))
    }
}

struct Sandbox {
    id: String,
    vm: SandboxVm,
    agent: AgentClient,
    vm_exit: watch::Receiver<Option<VmExit>>,
}

struct Container {
    bundle: String,
    init: Process,
    execs: HashMap<String, Process>,
}

impl Container {
    fn process(&self, exec_id: &str) -> TtrpcResult<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }

    fn process_mut(&mut self, exec_id: &str) -> TtrpcResult<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec_id} not found")))
    }
}

#[derive(Default)]
struct State {
    sandbox: Option<Sandbox>,
    /// The pod's pause container, once created.
    pod: PodContext,
    containers: HashMap<String, Container>,
}

impl State {
    fn container(&self, id: &str) -> TtrpcResult<&Container> {
        self.containers
            .get(id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id} not found")))
    }

    fn container_mut(&mut self, id: &str) -> TtrpcResult<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id} not found")))
    }

    fn agent(&self) -> TtrpcResult<AgentClient> {
        self.sandbox
            .as_ref()
            .map(|s| s.agent.clone())
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the sandbox VM is not running"))
    }
}

/// The shortest time between two TaskOOM events for one container.
const OOM_EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// How long the OOM watch waits after a report it dropped.
const OOM_FLOOD_PAUSE: Duration = Duration::from_millis(100);

/// Which of the agent's OOM reports are published.
#[derive(Default)]
struct OomFilter {
    last: HashMap<String, std::time::Instant>,
}

impl OomFilter {
    fn admit(&mut self, id: &str, known: bool, now: std::time::Instant) -> bool {
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
}

#[derive(Clone)]
pub struct TaskService {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    state: Arc<Mutex<State>>,
}

impl TaskService {
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        TaskService {
            namespace,
            publisher: Arc::new(publisher),
            exit,
            state: Arc::default(),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = ttrpc::context::with_timeout(0);
        if let Err(err) = self
            .publisher
            .publish(ctx, topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, %err, "publishing an event");
        }
    }

    /// Pause and resume: `call` asks the agent for the change while the state
    /// is locked, then the container takes `to` and `event` is published.
    /// `doing` names the change in the error an agent failure returns.
    async fn change_run_state<T, F>(
        &self,
        id: &str,
        call: impl FnOnce(AgentClient) -> F,
        doing: &str,
        to: Status,
        (topic, event): (&str, Box<dyn MessageDyn>),
    ) -> TtrpcResult<Empty>
    where
        F: Future<Output = ttrpc::Result<T>>,
    {
        let mut state = self.state.lock().await;
        let agent = state.agent()?;
        let container = state.container_mut(id)?;
        call(agent).await.map_err(agent_error(doing))?;
        container.init.status = to;
        drop(state);
        self.publish(topic, event).await;
        Ok(Empty::new())
    }

    /// Boots the sandbox VM for the first container of the sandbox.
    async fn boot(
        &self,
        sandbox_id: &str,
        config: &Config,
        options: &SandboxOptions,
    ) -> TtrpcResult<Sandbox> {
        let vm = SandboxVm::start_with(config, sandbox_id, options, &Progress::new(false))
            .await
            .map_err(|err| status(Code::FAILED_PRECONDITION, format!("Hull: {err}")))?;
        let agent = vm.agent().clone();
        let vm_exit = vm.exit_watch();
        let sandbox = Sandbox {
            id: sandbox_id.to_owned(),
            vm,
            agent: agent.clone(),
            vm_exit: vm_exit.clone(),
        };
        self.watch_oom(agent);
        // Processes waiting on the agent see the VM's end through the same
        // watch (watch_exit); this only records it.
        tokio::spawn(async move {
            if let Some(exit) = wait_vm(vm_exit).await {
                tracing::warn!(?exit, "the sandbox VM stopped");
            }
        });
        Ok(sandbox)
    }

    /// Turns the agent's OOM reports into TaskOOM events, for containers of
    /// this shim only and at most one per container per
    /// [`OOM_EVENT_INTERVAL`]: a compromised agent could otherwise flood
    /// containerd with events for any id. After a dropped report the next
    /// poll waits, so a flood costs little.
    fn watch_oom(&self, agent: AgentClient) {
        let service = self.clone();
        tokio::spawn(async move {
            let request = agent_api::GetOOMEventRequest::default();
            let mut filter = OomFilter::default();
            while let Ok(event) = agent
                .api()
                .get_oom_event(context(Duration::ZERO), &request)
                .await
            {
                let id = event.container_id;
                let known = service.state.lock().await.containers.contains_key(&id);
                if filter.admit(&id, known, std::time::Instant::now()) {
                    service.publish_oom(&id).await;
                } else {
                    tracing::debug!(container = %crate::guest_text::guest(&id), known, "OOM report dropped");
                    tokio::time::sleep(OOM_FLOOD_PAUSE).await;
                }
            }
        });
    }

    async fn publish_oom(&self, container_id: &str) {
        let event = TaskOOM {
            container_id: container_id.to_owned(),
            ..Default::default()
        };
        self.publish(TASK_OOM_EVENT_TOPIC, Box::new(event)).await;
    }

    /// Waits for a started process to exit, drains its output, records and
    /// publishes the exit. An init's exit is published after its execs'.
    fn watch_exit(&self, container_id: String, exec_id: String, pid: u32) {
        let service = self.clone();
        tokio::spawn(async move {
            let (agent, vm_exit) = {
                let state = service.state.lock().await;
                match state.sandbox.as_ref() {
                    Some(s) => (s.agent.clone(), s.vm_exit.clone()),
                    None => return,
                }
            };
            let request = agent_api::WaitProcessRequest {
                container_id: container_id.clone(),
                exec_id: exec_id.clone(),
                ..Default::default()
            };
            let exit = tokio::select! {
                waited = agent.api().wait_process(context(Duration::ZERO), &request) => match waited {
                    Ok(response) => {
                        if response.oom_killed {
                            service.publish_oom(&container_id).await;
                        }
                        Exit {
                            status: response.status as u32,
                            at: UNIX_EPOCH + Duration::from_nanos(response.exited_at_unix_nanos.max(0) as u64),
                        }
                    }
                    Err(err) => {
                        tracing::warn!(container = %container_id, exec = %exec_id, err = %rpc_message(&err), "lost the process");
                        Exit::now(UNKNOWN_EXIT)
                    }
                },
                _ = wait_vm(vm_exit) => Exit::now(UNKNOWN_EXIT),
            };

            // Output first: containerd reads the FIFOs until the exit.
            let (io, execs) = {
                let mut state = service.state.lock().await;
                let Ok(container) = state.container_mut(&container_id) else {
                    return;
                };
                let execs: Vec<_> = if exec_id.is_empty() {
                    container.execs.values().map(Process::exit_watch).collect()
                } else {
                    Vec::new()
                };
                let io = container
                    .process_mut(&exec_id)
                    .ok()
                    .and_then(|p| p.io.take());
                (io, execs)
            };
            if let Some(mut io) = io {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, io.drain()).await;
            }
            for exec in execs {
                if exec.borrow().is_none() {
                    let _ = tokio::time::timeout(DRAIN_TIMEOUT, wait_exit(exec)).await;
                }
            }
            {
                let mut state = service.state.lock().await;
                if let Ok(process) = state
                    .container_mut(&container_id)
                    .and_then(|c| c.process_mut(&exec_id))
                {
                    process.status = Status::Stopped;
                    // send_replace keeps the exit for State even when nobody waits.
                    process.exit_tx.send_replace(Some(exit));
                }
            }
            let id = if exec_id.is_empty() {
                container_id.clone()
            } else {
                exec_id.clone()
            };
            service
                .publish(
                    TASK_EXIT_EVENT_TOPIC,
                    Box::new(TaskExit {
                        container_id,
                        id,
                        pid,
                        exit_status: exit.status,
                        exited_at: Some(exit.timestamp()).into(),
                        ..Default::default()
                    }),
                )
                .await;
        });
    }

    /// Stops the VM and everything around it.
    async fn shutdown_sandbox(state: &mut State) {
        if let Some(sandbox) = state.sandbox.take() {
            tracing::info!(sandbox = %sandbox.id, "stopping the sandbox VM");
            sandbox.vm.shutdown().await;
        }
    }
}

async fn wait_vm(mut exit: watch::Receiver<Option<VmExit>>) -> Option<VmExit> {
    let result = exit.wait_for(Option::is_some).await.ok().and_then(|e| *e);
    match result {
        Some(exit) => Some(exit),
        None => std::future::pending().await,
    }
}

/// Loads Hull's configuration: the task's `ConfigPath` option, else
/// HULL_CONFIG, else /etc/hull/config.toml.
fn load_config(options: &protobuf::MessageField<Any>) -> TtrpcResult<Config> {
    let from_options = options
        .as_ref()
        .and_then(|any| super::options::config_path(&any.type_url, &any.value));
    Config::load(from_options.as_deref().map(Path::new))
        .map_err(|err| status(Code::INVALID_ARGUMENT, format!("Hull: {err}")))
}

/// containerd's rootfs mounts for `request`, or a bind of the bundle's
/// rootfs when it sends none (`ctr run --rootfs`).
fn rootfs_mounts(request: &CreateTaskRequest, spec_root: &Path) -> Vec<RootfsMountSpec> {
    if request.rootfs.is_empty() {
        return vec![RootfsMountSpec::bind(
            &Path::new(&request.bundle).join(spec_root),
        )];
    }
    request
        .rootfs
        .iter()
        .map(|m| RootfsMountSpec {
            kind: m.type_.clone(),
            source: m.source.clone().into(),
            options: m.options.clone(),
        })
        .collect()
}

/// Undoes a container's rootfs and host shares in the sandbox's share and
/// removes what it had there, never through a mount or a symlink.
fn remove_container_share(sandbox: &Sandbox, id: &str) {
    let leftovers = sandbox.vm.share().remove_container(id);
    if !leftovers.is_empty() {
        tracing::warn!(container = %id, ?leftovers, "left in the share");
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        stdio
            .validate()
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        let spec_path = Path::new(&req.bundle).join("config.json");
        let spec = oci_spec::runtime::Spec::load(&spec_path).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("reading {}: {e}", spec_path.display()),
            )
        })?;
        let sandbox_id = sandbox_id(&spec, &req.id);
        crate::ids::validate("container id", &req.id).map_err(invalid_id)?;
        crate::ids::validate(
            "sandbox id (annotation io.kubernetes.cri.sandbox-id)",
            &sandbox_id,
        )
        .map_err(invalid_id)?;
        let config = load_config(&req.options)?;
        let role = Role::of(&spec);
        let spec_root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        let sandbox_shm = (role == Role::Sandbox).then(|| shm_source(&spec)).flatten();

        let mut state = self.state.lock().await;
        if state.containers.contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let options = SandboxOptions {
            size: vm_size(&spec, &config)
                .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?,
            netns: (role == Role::Sandbox)
                .then(|| network_namespace(&spec))
                .flatten(),
        };
        // Everything the guest cannot do is refused before a VM starts.
        let guest = guest_spec(
            spec,
            &req.id,
            Path::new(GUEST_SHARE_DIR),
            &state.pod,
            &is_memory_volume,
        )
        .map_err(|e| status(Code::INVALID_ARGUMENT, format!("Hull: {e}")))?;
        if state.sandbox.is_none() {
            state.sandbox = Some(self.boot(&sandbox_id, &config, &options).await?);
        }
        let sandbox = state.sandbox.as_ref().expect("booted");
        if sandbox.id != sandbox_id {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "container {} belongs to sandbox {sandbox_id}, not to this shim's {}",
                    req.id, sandbox.id
                ),
            ));
        }
        let agent = sandbox.agent.clone();

        let created = async {
            let share = sandbox.vm.share();
            let rootfs = share
                .mount_rootfs(&req.id, &rootfs_mounts(&req, &spec_root))
                .map_err(|e| status(Code::INTERNAL, format!("Hull: {e}")))?;
            debug_assert_eq!(rootfs, rootfs_in_share(&req.id));
            for host in &guest.shares {
                let bind = ShareBind {
                    source: host.source.clone(),
                    read_only: host.read_only,
                    recursive: host.recursive,
                };
                share
                    .bind(&bind, &host.share_path)
                    .map_err(|e| status(Code::INVALID_ARGUMENT, format!("Hull: {e}")))?;
            }
            let response = agent
                .api()
                .create_container(
                    context(AGENT_CALL),
                    &agent_api::CreateContainerRequest {
                        container_id: req.id.clone(),
                        oci_spec: serde_json::to_vec(&guest.spec).expect("spec serializes"),
                        stdio: Some(stdio.request()).into(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(agent_error("creating the container in the guest"))?;
            let io = ProcessIo::attach(&agent, &req.id, "", &stdio)
                .await
                .map_err(|e| status(Code::INTERNAL, e.to_string()))?;
            Ok::<_, ttrpc::Error>((response.pid, io))
        }
        .await;
        let (pid, io) = match created {
            Ok(created) => created,
            Err(err) => {
                if let Some(sandbox) = &state.sandbox {
                    remove_container_share(sandbox, &req.id);
                }
                if state.containers.is_empty() {
                    Self::shutdown_sandbox(&mut state).await;
                }
                return Err(err);
            }
        };
        let mut init = Process::new(stdio);
        init.pid = pid;
        init.io = Some(io);
        if role == Role::Sandbox {
            state.pod = PodContext {
                sandbox_pid: Some(pid),
                sandbox_shm,
            };
        }
        state.containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                init,
                execs: HashMap::new(),
            },
        );
        drop(state);
        self.publish(
            TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let mut state = self.state.lock().await;
        let agent = state.agent()?;
        let container = state.container_mut(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            if container.init.status != Status::Created {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {} was already started", req.id),
                ));
            }
            agent
                .api()
                .start_container(
                    context(AGENT_CALL),
                    &agent_api::StartContainerRequest {
                        container_id: req.id.clone(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(agent_error("starting the container"))?;
            container.init.status = Status::Running;
            container.init.pid
        } else {
            let process = container.process_mut(&req.exec_id)?;
            let spec = process.exec_spec.take().ok_or_else(|| {
                status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} was already started", req.exec_id),
                )
            })?;
            let response = agent
                .api()
                .exec_process(
                    context(AGENT_CALL),
                    &agent_api::ExecProcessRequest {
                        container_id: req.id.clone(),
                        exec_id: req.exec_id.clone(),
                        process: spec,
                        stdio: Some(process.stdio.request()).into(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(agent_error("starting the exec process"))?;
            let io = ProcessIo::attach(&agent, &req.id, &req.exec_id, &process.stdio)
                .await
                .map_err(|e| status(Code::INTERNAL, e.to_string()))?;
            process.pid = response.pid;
            process.io = Some(io);
            process.status = Status::Running;
            response.pid
        };
        drop(state);
        if req.exec_id.is_empty() {
            self.publish(
                TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        } else {
            self.publish(
                TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        }
        self.watch_exit(req.id.clone(), req.exec_id.clone(), pid);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let mut state = self.state.lock().await;
        if !req.exec_id.is_empty() {
            let container = state.container_mut(&req.id)?;
            let process = container.process(&req.exec_id)?;
            if process.status == Status::Running {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} is still running", req.exec_id),
                ));
            }
            let exit = process.exit().unwrap_or(Exit::now(0));
            let pid = process.pid;
            container.execs.remove(&req.exec_id);
            return Ok(DeleteResponse {
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            });
        }

        let container = state.container(&req.id)?;
        if matches!(container.init.status, Status::Running | Status::Paused) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is still running; kill it first", req.id),
            ));
        }
        let never_started = container.init.status == Status::Created;
        let vm_alive = state
            .sandbox
            .as_ref()
            .is_some_and(|s| s.vm_exit.borrow().is_none());
        if vm_alive {
            let agent = state.agent()?;
            if never_started {
                let kill = agent_api::SignalProcessRequest {
                    container_id: req.id.clone(),
                    signal: libc::SIGKILL as u32,
                    all: true,
                    ..Default::default()
                };
                let _ = agent.api().signal_process(context(AGENT_CALL), &kill).await;
                let wait = agent_api::WaitProcessRequest {
                    container_id: req.id.clone(),
                    ..Default::default()
                };
                let _ = agent
                    .api()
                    .wait_process(context(Duration::from_secs(10)), &wait)
                    .await;
            }
            let remove = agent_api::RemoveContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            if let Err(err) = agent
                .api()
                .remove_container(context(AGENT_CALL), &remove)
                .await
            {
                tracing::warn!(container = %req.id, err = %rpc_message(&err), "RemoveContainer");
            }
        }
        let container = state.containers.remove(&req.id).expect("checked above");
        if let Some(sandbox) = &state.sandbox {
            remove_container_share(sandbox, &req.id);
        }
        let exit = container.init.exit().unwrap_or(Exit::now(UNKNOWN_EXIT));
        let own_sandbox = state.sandbox.as_ref().is_some_and(|s| s.id == req.id);
        if own_sandbox || state.containers.is_empty() {
            Self::shutdown_sandbox(&mut state).await;
        }
        drop(state);
        self.publish(
            TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                pid: container.init.pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                id: req.id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(DeleteResponse {
            pid: container.init.pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let agent = {
            let state = self.state.lock().await;
            state.container(&req.id)?;
            state.agent()?
        };
        let response = agent
            .api()
            .list_processes(
                context(AGENT_CALL),
                &agent_api::ListProcessesRequest {
                    container_id: req.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_error("listing processes"))?;
        Ok(PidsResponse {
            processes: response
                .pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let request = agent_api::PauseContainerRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        let event = TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.change_run_state(
            &req.id,
            |agent| async move {
                agent
                    .api()
                    .pause_container(context(AGENT_CALL), &request)
                    .await
            },
            "pausing",
            Status::Paused,
            (TASK_PAUSED_EVENT_TOPIC, Box::new(event)),
        )
        .await
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let request = agent_api::ResumeContainerRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        let event = TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.change_run_state(
            &req.id,
            |agent| async move {
                agent
                    .api()
                    .resume_container(context(AGENT_CALL), &request)
                    .await
            },
            "resuming",
            Status::Running,
            (TASK_RESUMED_EVENT_TOPIC, Box::new(event)),
        )
        .await
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let agent = {
            let state = self.state.lock().await;
            let process = state.container(&req.id)?.process(&req.exec_id)?;
            if process.exit().is_some() && !req.all {
                return Err(status(Code::NOT_FOUND, "process already finished"));
            }
            state.agent()?
        };
        agent
            .api()
            .signal_process(
                context(AGENT_CALL),
                &agent_api::SignalProcessRequest {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    signal: req.signal,
                    all: req.all,
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_error("signalling"))?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        stdio
            .validate()
            .map_err(|e| status(Code::INVALID_ARGUMENT, e.to_string()))?;
        crate::ids::validate("exec id", &req.exec_id).map_err(invalid_id)?;
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "exec has no process spec"))?;
        let mut state = self.state.lock().await;
        let container = state.container_mut(&req.id)?;
        if container.init.status != Status::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", req.id),
            ));
        }
        if container.execs.contains_key(&req.exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {} already exists", req.exec_id),
            ));
        }
        let mut process = Process::new(stdio);
        process.exec_spec = Some(spec);
        container.execs.insert(req.exec_id.clone(), process);
        drop(state);
        self.publish(
            TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let agent = {
            let state = self.state.lock().await;
            state.container(&req.id)?.process(&req.exec_id)?;
            state.agent()?
        };
        agent
            .api()
            .resize_terminal(
                context(AGENT_CALL),
                &agent_api::ResizeTerminalRequest {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    rows: req.height,
                    columns: req.width,
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_error("resizing the terminal"))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let state = self.state.lock().await;
        let process = state.container(&req.id)?.process(&req.exec_id)?;
        if req.stdin {
            if let Some(io) = &process.io {
                io.close_stdin().await;
            }
        }
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let agent = {
            let state = self.state.lock().await;
            state.container(&req.id)?;
            state.agent()?
        };
        let resources = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .unwrap_or_default();
        agent
            .api()
            .update_container(
                context(AGENT_CALL),
                &agent_api::UpdateContainerRequest {
                    container_id: req.id.clone(),
                    resources,
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_error("updating resources"))?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let exit = {
            let state = self.state.lock().await;
            state
                .container(&req.id)?
                .process(&req.exec_id)?
                .exit_watch()
        };
        let exit = wait_exit(exit)
            .await
            .ok_or_else(|| status(Code::NOT_FOUND, "the process went away"))?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        use containerd_shim::protos::cgroups_v2::metrics::{
            CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
        };
        let agent = {
            let state = self.state.lock().await;
            state.container(&req.id)?;
            state.agent()?
        };
        let stats = agent
            .api()
            .stats_container(
                context(AGENT_CALL),
                &agent_api::StatsContainerRequest {
                    container_id: req.id.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(agent_error("reading statistics"))?;
        let metrics = Metrics {
            pids: Some(PidsStat {
                current: stats.pids.current,
                limit: stats.pids.limit,
                ..Default::default()
            })
            .into(),
            cpu: Some(CPUStat {
                usage_usec: stats.cpu.usage_usec,
                user_usec: stats.cpu.user_usec,
                system_usec: stats.cpu.system_usec,
                nr_periods: stats.cpu.nr_periods,
                nr_throttled: stats.cpu.nr_throttled,
                throttled_usec: stats.cpu.throttled_usec,
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStat {
                usage: stats.memory.usage_bytes,
                usage_limit: stats.memory.limit_bytes,
                anon: stats.memory.anon_bytes,
                file: stats.memory.file_bytes,
                inactive_file: stats.memory.inactive_file_bytes,
                ..Default::default()
            })
            .into(),
            memory_events: Some(MemoryEvents {
                oom_kill: stats.memory.oom_kills,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: Some(Any {
                type_url: "io.containerd.cgroups.v2.Metrics".into(),
                value: metrics
                    .write_to_bytes()
                    .map_err(|e| status(Code::INTERNAL, e.to_string()))?,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let state = self.state.lock().await;
        let container = state.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        let exit = process.exit();
        Ok(StateResponse {
            id: if req.exec_id.is_empty() {
                req.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: container.bundle.clone(),
            pid: process.pid,
            status: process.state_status().into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| e.timestamp()).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let state = self.state.lock().await;
        let task_pid = state.container(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TtrpcResult<Empty> {
        let mut state = self.state.lock().await;
        if !state.containers.is_empty() {
            return Ok(Empty::new());
        }
        Self::shutdown_sandbox(&mut state).await;
        self.exit.signal();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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
        assert_eq!(filter.last.len(), 2);
    }
}
