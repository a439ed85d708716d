//! An agent whose calls end when the sandbox's VM does: a guest that is
//! gone answers nothing, and a hung vsock backend would otherwise hold a
//! call (and the container's operations behind it) until its deadline.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use hull_protocols::agent as api;
use hull_protocols::stdio::StreamHeader;
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::agent::{Agent, AgentResult, GuestExit};
use crate::agent_client::{self, AgentClientError};
use crate::hypervisor::VmExit;
use crate::watch::wait_set_or_never;

/// What a call cut off by the VM's end fails with.
const VM_STOPPED: &str = "the sandbox VM stopped";

pub struct VmBoundAgent {
    agent: std::sync::Arc<dyn Agent>,
    exit: watch::Receiver<Option<VmExit>>,
}

impl VmBoundAgent {
    pub fn new(agent: std::sync::Arc<dyn Agent>, exit: watch::Receiver<Option<VmExit>>) -> Self {
        VmBoundAgent { agent, exit }
    }

    async fn bound<T>(&self, call: impl Future<Output = AgentResult<T>>) -> AgentResult<T> {
        tokio::select! {
            result = call => result,
            _ = wait_set_or_never(self.exit.clone()) => Err(ttrpc::Error::RpcStatus(
                ttrpc::get_status(ttrpc::Code::UNAVAILABLE, VM_STOPPED),
            )),
        }
    }
}

#[async_trait]
impl Agent for VmBoundAgent {
    async fn create_container(
        &self,
        id: &str,
        oci_spec: Vec<u8>,
        stdio: api::Stdio,
    ) -> AgentResult<u32> {
        self.bound(self.agent.create_container(id, oci_spec, stdio))
            .await
    }

    async fn start_container(&self, id: &str) -> AgentResult<()> {
        self.bound(self.agent.start_container(id)).await
    }

    async fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: api::Stdio,
    ) -> AgentResult<u32> {
        self.bound(self.agent.exec_process(id, exec_id, process, stdio))
            .await
    }

    async fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> AgentResult<()> {
        self.bound(self.agent.signal_process(id, exec_id, signal, all))
            .await
    }

    async fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        deadline: Option<Duration>,
    ) -> AgentResult<GuestExit> {
        self.bound(self.agent.wait_process(id, exec_id, deadline))
            .await
    }

    async fn remove_container(&self, id: &str) -> AgentResult<()> {
        self.bound(self.agent.remove_container(id)).await
    }

    async fn list_processes(&self, id: &str) -> AgentResult<Vec<u32>> {
        self.bound(self.agent.list_processes(id)).await
    }

    async fn pause_container(&self, id: &str) -> AgentResult<()> {
        self.bound(self.agent.pause_container(id)).await
    }

    async fn resume_container(&self, id: &str) -> AgentResult<()> {
        self.bound(self.agent.resume_container(id)).await
    }

    async fn stats_container(&self, id: &str) -> AgentResult<api::StatsContainerResponse> {
        self.bound(self.agent.stats_container(id)).await
    }

    async fn update_container(&self, id: &str, resources: Vec<u8>) -> AgentResult<()> {
        self.bound(self.agent.update_container(id, resources)).await
    }

    async fn resize_terminal(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> AgentResult<()> {
        self.bound(self.agent.resize_terminal(id, exec_id, rows, columns))
            .await
    }

    async fn next_oom(&self) -> AgentResult<String> {
        self.bound(self.agent.next_oom()).await
    }

    async fn open_stream(
        &self,
        header: &StreamHeader,
    ) -> Result<UnixStream, agent_client::AgentClientError> {
        tokio::select! {
            result = self.agent.open_stream(header) => result,
            _ = wait_set_or_never(self.exit.clone()) => Err(AgentClientError::StreamRefused {
                stream: header.kind.to_string(),
                reason: VM_STOPPED.into(),
            }),
        }
    }
}
