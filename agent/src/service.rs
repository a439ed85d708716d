//! The ttrpc face of the agent: decodes requests, calls the sandbox, and
//! turns its errors into status codes.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use hull_protocols::agent::*;
use hull_protocols::agent_ttrpc::Agent;
use hull_protocols::API_VERSION;
use tokio::sync::Notify;
use ttrpc::r#async::TtrpcContext;
use ttrpc::{Code, Result};

use crate::network::{GuestNetwork, NetworkError};
use crate::sandbox::{AgentError, Sandbox};
use crate::server::Mode;

pub struct AgentService {
    pub sandbox: Arc<Sandbox>,
    pub mode: Mode,
    /// Notified when the sandbox is destroyed with power_off in the guest.
    pub power_off: Arc<Notify>,
    pub network: GuestNetwork,
}

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

impl From<AgentError> for ttrpc::Error {
    fn from(err: AgentError) -> Self {
        use crate::executable::ExecutableError;
        let code = match &err {
            AgentError::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
            AgentError::ContainerNotFound(_) | AgentError::ProcessNotFound { .. } => {
                Code::NOT_FOUND
            }
            AgentError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            AgentError::FailedPrecondition(_) | AgentError::Attach(_) => Code::FAILED_PRECONDITION,
            AgentError::Executable(ExecutableError::NotExecutable(_)) => Code::PERMISSION_DENIED,
            AgentError::Executable(_) => Code::NOT_FOUND,
            AgentError::Runtime(_) | AgentError::Io { .. } | AgentError::Container { .. } => {
                Code::INTERNAL
            }
        };
        status(code, err.to_string())
    }
}

impl From<NetworkError> for ttrpc::Error {
    fn from(err: NetworkError) -> Self {
        let code = match &err {
            NetworkError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            NetworkError::NoLinkWithMac { .. } | NetworkError::NoSuchDevice { .. } => {
                Code::NOT_FOUND
            }
            NetworkError::AmbiguousMac { .. } => Code::FAILED_PRECONDITION,
            // The kernel refuses what the guest's state does not allow: a
            // gateway it cannot reach, an MTU the NIC cannot take.
            _ if err.is_refusal() => Code::FAILED_PRECONDITION,
            NetworkError::Netlink { .. } | NetworkError::Socket(_) => Code::INTERNAL,
        };
        status(code, err.to_string())
    }
}

/// How long a probed filesystem has to answer a statfs.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks that the filesystem at `path` answers. statfs always reaches a
/// FUSE server (nothing caches it). A thread that hangs in it stays hung:
/// the host then stops the VM anyway.
async fn probe_filesystem(path: &str) -> Result<()> {
    let owned = path.to_owned();
    let probe = tokio::task::spawn_blocking(move || nix::sys::statfs::statfs(owned.as_str()));
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err(err))) => Err(status(
            Code::UNAVAILABLE,
            format!("the filesystem at {path} fails: {err}"),
        )),
        Ok(Err(err)) => Err(status(Code::INTERNAL, format!("probing {path}: {err}"))),
        Err(_) => Err(status(
            Code::UNAVAILABLE,
            format!("the filesystem at {path} did not answer within {PROBE_TIMEOUT:?}"),
        )),
    }
}

fn nanos(time: std::time::SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn stdio(request: &protobuf::MessageField<Stdio>) -> Stdio {
    request.as_ref().cloned().unwrap_or_default()
}

#[async_trait]
impl Agent for AgentService {
    async fn check(&self, _: &TtrpcContext, req: CheckRequest) -> Result<CheckResponse> {
        let asked = req.api_version.enum_value_or_default();
        if asked != API_VERSION {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "client asked for agent API {asked:?}; this agent speaks hull.agent.v1 ({API_VERSION:?}) only"
                ),
            ));
        }
        if !req.probe_path.is_empty() {
            probe_filesystem(&req.probe_path).await?;
        }
        let kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(CheckResponse {
            api_version: API_VERSION.into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release,
            ..Default::default()
        })
    }

    async fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> Result<Empty> {
        if self.mode.is_guest() {
            crate::init::configure_sandbox(&req).map_err(|err| {
                status(Code::INTERNAL, format!("setting up the sandbox: {err:#}"))
            })?;
        }
        tracing::info!(sandbox = %req.sandbox_id, "sandbox created");
        Ok(Empty::new())
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, req: DestroySandboxRequest) -> Result<Empty> {
        self.sandbox.remove_all().await?;
        if req.power_off && self.mode.is_guest() {
            self.power_off.notify_one();
        }
        Ok(Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse> {
        let pid = self
            .sandbox
            .create_container(&req.container_id, &req.oci_spec, &stdio(&req.stdio))
            .await?;
        Ok(CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_container(&self, _: &TtrpcContext, req: StartContainerRequest) -> Result<Empty> {
        self.sandbox.start_container(&req.container_id).await?;
        Ok(Empty::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> Result<Empty> {
        self.sandbox
            .remove_container(&req.container_id, false)
            .await?;
        Ok(Empty::new())
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> Result<ExecProcessResponse> {
        let pid = self
            .sandbox
            .exec_process(
                &req.container_id,
                &req.exec_id,
                &req.process,
                &stdio(&req.stdio),
            )
            .await?;
        Ok(ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    async fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> Result<Empty> {
        self.sandbox
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)?;
        Ok(Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> Result<WaitProcessResponse> {
        let exit = self.sandbox.wait(&req.container_id, &req.exec_id).await?;
        let oom_killed = req.exec_id.is_empty()
            && self
                .sandbox
                .container(&req.container_id)
                .is_ok_and(|c| crate::cgroup::oom_kills(&c.cgroup) > 0);
        Ok(WaitProcessResponse {
            status: exit.status,
            exited_at_unix_nanos: nanos(exit.at),
            oom_killed,
            ..Default::default()
        })
    }

    async fn resize_terminal(&self, _: &TtrpcContext, req: ResizeTerminalRequest) -> Result<Empty> {
        self.sandbox
            .resize(&req.container_id, &req.exec_id, req.rows, req.columns)?;
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> Result<StatsContainerResponse> {
        Ok(self.sandbox.stats(&req.container_id)?)
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> Result<Empty> {
        self.sandbox
            .update(&req.container_id, &req.resources)
            .await?;
        Ok(Empty::new())
    }

    async fn pause_container(&self, _: &TtrpcContext, req: PauseContainerRequest) -> Result<Empty> {
        self.sandbox.pause(&req.container_id).await?;
        Ok(Empty::new())
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> Result<Empty> {
        self.sandbox.resume(&req.container_id).await?;
        Ok(Empty::new())
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> Result<ListProcessesResponse> {
        Ok(ListProcessesResponse {
            pids: self.sandbox.list_processes(&req.container_id)?,
            ..Default::default()
        })
    }

    async fn get_oom_event(&self, _: &TtrpcContext, _: GetOOMEventRequest) -> Result<OOMEvent> {
        match self.sandbox.next_oom().await {
            Some(container_id) => Ok(OOMEvent {
                container_id,
                ..Default::default()
            }),
            None => Err(status(Code::UNAVAILABLE, "the agent is shutting down")),
        }
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> Result<Empty> {
        self.network.update_interface(&req).await?;
        Ok(Empty::new())
    }

    async fn update_routes(&self, _: &TtrpcContext, req: UpdateRoutesRequest) -> Result<Empty> {
        self.network.update_routes(&req).await?;
        Ok(Empty::new())
    }
}
