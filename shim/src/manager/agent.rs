//! What the manager asks of a sandbox's agent, as a trait: the ttrpc client
//! ([`AgentClient`]) is one implementation, the lifecycle tests' fake agent
//! the other. Each call has its deadline here, so callers do not pick one.

use std::time::Duration;

use async_trait::async_trait;
use hull_protocols::agent as api;
use hull_protocols::stdio::StreamHeader;
use tokio::net::UnixStream;

use crate::agent_client::{self, context, AgentClient};

/// Deadline of ordinary agent calls.
pub const AGENT_CALL: Duration = Duration::from_secs(60);
/// Deadline of the waits that clean up a container that never started.
const CLEANUP_CALL: Duration = Duration::from_secs(10);

pub type AgentResult<T> = Result<T, ttrpc::Error>;

/// A process's end as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestExit {
    pub status: u32,
    pub exited_at_unix_nanos: i64,
    pub oom_killed: bool,
}

#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Creates a container from its guest OCI spec (JSON); returns its pid.
    async fn create_container(
        &self,
        id: &str,
        oci_spec: Vec<u8>,
        stdio: api::Stdio,
    ) -> AgentResult<u32>;
    async fn start_container(&self, id: &str) -> AgentResult<()>;
    /// Starts an exec process (its OCI process as JSON); returns its pid.
    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: api::Stdio,
    ) -> AgentResult<u32>;
    async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> AgentResult<()>;
    /// Waits for a process to end, with no deadline unless `deadline`.
    async fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        deadline: Option<Duration>,
    ) -> AgentResult<GuestExit>;
    async fn remove_container(&self, id: &str) -> AgentResult<()>;
    async fn list_processes(&self, id: &str) -> AgentResult<Vec<u32>>;
    async fn pause_container(&self, id: &str) -> AgentResult<()>;
    async fn resume_container(&self, id: &str) -> AgentResult<()>;
    async fn stats_container(&self, id: &str) -> AgentResult<api::StatsContainerResponse>;
    /// Applies a containerd resources update (protobuf `LinuxResources`, as JSON).
    async fn update_container(&self, id: &str, resources: Vec<u8>) -> AgentResult<()>;
    async fn resize_terminal(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> AgentResult<()>;
    /// The next container the guest reports out of memory (waits for one).
    async fn next_oom(&self) -> AgentResult<String>;
    /// Opens the stdio stream `header` names.
    async fn open_stream(
        &self,
        header: &StreamHeader,
    ) -> Result<UnixStream, agent_client::AgentClientError>;
}

#[async_trait]
impl Agent for AgentClient {
    async fn create_container(
        &self,
        id: &str,
        oci_spec: Vec<u8>,
        stdio: api::Stdio,
    ) -> AgentResult<u32> {
        let request = api::CreateContainerRequest {
            container_id: id.to_owned(),
            oci_spec,
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        let response = self
            .api()
            .create_container(context(AGENT_CALL), &request)
            .await?;
        Ok(response.pid)
    }

    async fn start_container(&self, id: &str) -> AgentResult<()> {
        let request = api::StartContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.api()
            .start_container(context(AGENT_CALL), &request)
            .await?;
        Ok(())
    }

    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: api::Stdio,
    ) -> AgentResult<u32> {
        let request = api::ExecProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            process,
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        let response = self
            .api()
            .exec_process(context(AGENT_CALL), &request)
            .await?;
        Ok(response.pid)
    }

    async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> AgentResult<()> {
        let request = api::SignalProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            signal,
            all,
            ..Default::default()
        };
        self.api()
            .signal_process(context(AGENT_CALL), &request)
            .await?;
        Ok(())
    }

    async fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        deadline: Option<Duration>,
    ) -> AgentResult<GuestExit> {
        let request = api::WaitProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let response = self
            .api()
            .wait_process(context(deadline.unwrap_or(Duration::ZERO)), &request)
            .await?;
        Ok(GuestExit {
            status: response.status as u32,
            exited_at_unix_nanos: response.exited_at_unix_nanos,
            oom_killed: response.oom_killed,
        })
    }

    async fn remove_container(&self, id: &str) -> AgentResult<()> {
        let request = api::RemoveContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.api()
            .remove_container(context(AGENT_CALL), &request)
            .await?;
        Ok(())
    }

    async fn list_processes(&self, id: &str) -> AgentResult<Vec<u32>> {
        let request = api::ListProcessesRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        Ok(self
            .api()
            .list_processes(context(AGENT_CALL), &request)
            .await?
            .pids)
    }

    async fn pause_container(&self, id: &str) -> AgentResult<()> {
        let request = api::PauseContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.api()
            .pause_container(context(AGENT_CALL), &request)
            .await?;
        Ok(())
    }

    async fn resume_container(&self, id: &str) -> AgentResult<()> {
        let request = api::ResumeContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.api()
            .resume_container(context(AGENT_CALL), &request)
            .await?;
        Ok(())
    }

    async fn stats_container(&self, id: &str) -> AgentResult<api::StatsContainerResponse> {
        let request = api::StatsContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.api()
            .stats_container(context(AGENT_CALL), &request)
            .await
    }

    async fn update_container(&self, id: &str, resources: Vec<u8>) -> AgentResult<()> {
        let request = api::UpdateContainerRequest {
            container_id: id.to_owned(),
            resources,
            ..Default::default()
        };
        self.api()
            .update_container(context(AGENT_CALL), &request)
            .await?;
        Ok(())
    }

    async fn resize_terminal(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> AgentResult<()> {
        let request = api::ResizeTerminalRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            rows,
            columns,
            ..Default::default()
        };
        self.api()
            .resize_terminal(context(AGENT_CALL), &request)
            .await?;
        Ok(())
    }

    async fn next_oom(&self) -> AgentResult<String> {
        let request = api::GetOOMEventRequest::default();
        let event = self
            .api()
            .get_oom_event(context(Duration::ZERO), &request)
            .await?;
        Ok(event.container_id)
    }

    async fn open_stream(
        &self,
        header: &StreamHeader,
    ) -> Result<UnixStream, agent_client::AgentClientError> {
        AgentClient::open_stream(self, header, AGENT_CALL).await
    }
}

/// Waits for a never-started container's init after killing it, bounded.
pub fn cleanup_deadline() -> Option<Duration> {
    Some(CLEANUP_CALL)
}
