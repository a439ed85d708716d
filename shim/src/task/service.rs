//! The task service: containerd's Task API v2, translated. Each request
//! becomes a call on the sandbox's [`Manager`]; each [`LifecycleError`] a
//! ttrpc status; each manager [`Event`] a task event. Nothing here keeps
//! state of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::*;
use containerd_shim::protos::events::task::*;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics::*;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageDyn};
use tokio::sync::mpsc;
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use crate::config::Config;
use crate::manager::{
    ContainerRequest, ContainerShareError, Event, Launcher, LifecycleError, Manager, ProcessExit,
    ProcessStatus, StdioPaths, StdioWiring, VmLauncher,
};
use crate::rootfs::RootfsMountSpec;
use crate::sandbox::Progress;

type TtrpcResult<T> = ttrpc::Result<T>;

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

/// The ttrpc code for a lifecycle error.
fn code_of(err: &LifecycleError) -> Code {
    use LifecycleError as E;
    match err {
        E::ContainerNotFound(_) | E::ExecNotFound(_) | E::Finished => Code::NOT_FOUND,
        E::ContainerExists(_) | E::ExecExists(_) => Code::ALREADY_EXISTS,
        E::InvalidId(_) | E::Spec(_) | E::Pod(_) | E::Stdio(_) => Code::INVALID_ARGUMENT,
        E::Mount(ContainerShareError::Volume(_)) => Code::INVALID_ARGUMENT,
        E::Mount(ContainerShareError::Rootfs(_)) => Code::INTERNAL,
        E::Agent { source, .. } => match source {
            ttrpc::Error::RpcStatus(s) => s.code(),
            _ => Code::UNAVAILABLE,
        },
        E::Creation(inner) => code_of(inner),
        E::WrongState(_) | E::Sandbox(_) | E::OtherSandbox { .. } | E::VmNotRunning => {
            Code::FAILED_PRECONDITION
        }
    }
}

fn to_status(err: LifecycleError) -> ttrpc::Error {
    status(code_of(&err), err.to_string())
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    }
}

fn exit_timestamp(exit: ProcessExit) -> protobuf::MessageField<Timestamp> {
    Some(timestamp(exit.at)).into()
}

fn stdio_paths(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths {
        stdin: stdin.to_owned(),
        stdout: stdout.to_owned(),
        stderr: stderr.to_owned(),
        terminal,
    }
}

#[derive(Clone)]
pub struct TaskService {
    manager: Manager,
    exit: Arc<ExitSignal>,
    /// The configuration file a task without a `ConfigPath` option gets,
    /// in place of HULL_CONFIG: the one containerd's environment named,
    /// for a warm shim the pool started in another environment.
    config_from_env: Option<PathBuf>,
}

impl TaskService {
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        let config_from_env = std::env::var_os("HULL_CONFIG").map(PathBuf::from);
        TaskService::with_launcher(
            namespace,
            publisher,
            exit,
            Arc::new(VmLauncher),
            config_from_env,
        )
    }

    /// A task service whose sandbox VM comes from `launcher` (a pool's
    /// VM booted ahead).
    pub fn with_launcher(
        namespace: String,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        launcher: Arc<dyn Launcher>,
        config_from_env: Option<PathBuf>,
    ) -> Self {
        let (manager, events) = Manager::new(launcher, Arc::new(Progress::new(false)));
        tokio::spawn(publish_events(namespace, publisher, events));
        TaskService {
            manager,
            exit,
            config_from_env,
        }
    }
}

/// Publishes the manager's events, in order, as containerd's task events.
async fn publish_events(
    namespace: String,
    publisher: RemotePublisher,
    mut events: mpsc::UnboundedReceiver<Event>,
) {
    while let Some(event) = events.recv().await {
        let (topic, message) = task_event(event);
        let ctx = ttrpc::context::with_timeout(0);
        if let Err(err) = publisher.publish(ctx, topic, &namespace, message).await {
            tracing::warn!(topic, %err, "publishing an event");
        }
    }
}

fn task_event(event: Event) -> (&'static str, Box<dyn MessageDyn>) {
    match event {
        Event::Created {
            id,
            bundle,
            rootfs,
            stdio,
            pid,
        } => (
            TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id,
                bundle,
                rootfs: rootfs
                    .into_iter()
                    .map(|m| containerd_shim::protos::types::mount::Mount {
                        type_: m.kind,
                        source: m.source.to_string_lossy().into_owned(),
                        options: m.options,
                        ..Default::default()
                    })
                    .collect(),
                io: Some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        ),
        Event::Started { id, pid } => (
            TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: id,
                pid,
                ..Default::default()
            }),
        ),
        Event::ExecAdded { id, exec_id } => (
            TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: id,
                exec_id,
                ..Default::default()
            }),
        ),
        Event::ExecStarted { id, exec_id, pid } => (
            TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id,
                exec_id,
                pid,
                ..Default::default()
            }),
        ),
        Event::Exited {
            id,
            exec_id,
            pid,
            exit,
        } => (
            TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                id: if exec_id.is_empty() {
                    id.clone()
                } else {
                    exec_id
                },
                container_id: id,
                pid,
                exit_status: exit.status,
                exited_at: exit_timestamp(exit),
                ..Default::default()
            }),
        ),
        Event::OutOfMemory { id } => (
            TASK_OOM_EVENT_TOPIC,
            Box::new(TaskOOM {
                container_id: id,
                ..Default::default()
            }),
        ),
        Event::Paused { id } => (
            TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: id,
                ..Default::default()
            }),
        ),
        Event::Resumed { id } => (
            TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: id,
                ..Default::default()
            }),
        ),
        Event::Deleted { id, pid, exit } => (
            TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.clone(),
                id,
                pid,
                exit_status: exit.status,
                exited_at: exit_timestamp(exit),
                ..Default::default()
            }),
        ),
    }
}

/// Loads Hull's configuration: the task's `ConfigPath` option, else
/// `from_env` (HULL_CONFIG in containerd's environment), else
/// /etc/hull/config.toml.
/// The path from the options is also kept in the bundle, for `shim delete`,
/// which containerd runs without the options.
fn load_config(
    options: &protobuf::MessageField<Any>,
    bundle: &Path,
    from_env: Option<&Path>,
) -> TtrpcResult<Config> {
    let from_options = match options.as_ref() {
        Some(any) => super::options::config_path(&any.type_url, &any.value)
            .map_err(|err| status(Code::INVALID_ARGUMENT, format!("Hull: {err}")))?,
        None => None,
    };
    let config = Config::load(from_options.as_deref().map(Path::new).or(from_env))
        .map_err(|err| status(Code::INVALID_ARGUMENT, format!("Hull: {err}")))?;
    if let Some(path) = from_options {
        let kept = bundle.join(super::CONFIG_PATH_FILE);
        std::fs::write(&kept, path).map_err(|err| {
            status(
                Code::INTERNAL,
                format!("Hull: writing {}: {err}", kept.display()),
            )
        })?;
    }
    Ok(config)
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

fn containerd_status(status: ProcessStatus) -> Status {
    match status {
        ProcessStatus::Created => Status::CREATED,
        ProcessStatus::Running => Status::RUNNING,
        ProcessStatus::Paused => Status::PAUSED,
        ProcessStatus::Stopped => Status::STOPPED,
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let spec_path = Path::new(&req.bundle).join("config.json");
        let spec = crate::spec::read_bundle_spec(&spec_path)
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let config = load_config(
            &req.options,
            Path::new(&req.bundle),
            self.config_from_env.as_deref(),
        )?;
        let spec_root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        let request = ContainerRequest {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: rootfs_mounts(&req, &spec_root),
            spec,
            stdio: StdioWiring::Fifos(stdio_paths(
                &req.stdin,
                &req.stdout,
                &req.stderr,
                req.terminal,
            )),
            config,
        };
        let pid = self.manager.create(request).await.map_err(to_status)?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = self
            .manager
            .start(&req.id, &req.exec_id)
            .await
            .map_err(to_status)?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let (pid, exit) = self
            .manager
            .delete(&req.id, &req.exec_id)
            .await
            .map_err(to_status)?;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: exit_timestamp(exit),
            ..Default::default()
        })
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let pids = self.manager.pids(&req.id).await.map_err(to_status)?;
        Ok(PidsResponse {
            processes: pids
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
        self.manager.pause(&req.id).await.map_err(to_status)?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.manager.resume(&req.id).await.map_err(to_status)?;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            "Hull does not checkpoint containers: a container's state lives in its pod's VM",
        ))
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.manager
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(to_status)?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let process = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "exec has no process spec"))?;
        let stdio = stdio_paths(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        self.manager
            .add_exec(&req.id, &req.exec_id, process, stdio)
            .map_err(to_status)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.manager
            .resize_terminal(&req.id, &req.exec_id, req.height, req.width)
            .await
            .map_err(to_status)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            self.manager
                .close_stdin(&req.id, &req.exec_id)
                .await
                .map_err(to_status)?;
        }
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .unwrap_or_default();
        self.manager
            .update(&req.id, resources)
            .await
            .map_err(to_status)?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let exit = self
            .manager
            .wait(&req.id, &req.exec_id)
            .await
            .map_err(to_status)?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: exit_timestamp(exit),
            ..Default::default()
        })
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        use containerd_shim::protos::cgroups_v2::metrics::{
            CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
        };
        let stats = self.manager.stats(&req.id).await.map_err(to_status)?;
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
        let state = self
            .manager
            .state(&req.id, &req.exec_id)
            .map_err(to_status)?;
        Ok(StateResponse {
            id: if req.exec_id.is_empty() {
                req.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: state.bundle,
            pid: state.pid,
            status: containerd_status(state.status).into(),
            stdin: state.stdio.stdin,
            stdout: state.stdio.stdout,
            stderr: state.stdio.stderr,
            terminal: state.stdio.terminal,
            exit_status: state.exit.map(|e| e.status).unwrap_or(0),
            exited_at: state.exit.map(|e| timestamp(e.at)).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.manager.init_pid(&req.id).unwrap_or(0),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.manager.shutdown().await {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
