//! Why a lifecycle call failed. The containerd adapter maps each to a ttrpc
//! code; `hull run` prints them.

use std::sync::Arc;

use super::stdio::IoError;
use super::vm::ContainerShareError;
use crate::agent_client::rpc_message;
use crate::ids::InvalidId;
use crate::pod::PodError;
use crate::sandbox;
use crate::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("exec {0} not found")]
    ExecNotFound(String),
    #[error("process already finished")]
    Finished,
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("exec {0} already exists")]
    ExecExists(String),
    /// The call does not fit the process's state (already started, still
    /// running, not running, already finished).
    #[error("{0}")]
    WrongState(String),
    #[error("Hull: {0}")]
    InvalidId(#[from] InvalidId),
    #[error("Hull: {0}")]
    Spec(#[from] SpecError),
    #[error("Hull: {0}")]
    Pod(#[from] PodError),
    #[error(transparent)]
    Stdio(#[from] IoError),
    /// The sandbox's VM could not be started; every container waiting for
    /// it gets the same error.
    #[error("Hull: {0}")]
    Sandbox(Arc<sandbox::SandboxError>),
    #[error("container {container} belongs to sandbox {wanted}, not to this shim's {ours}")]
    OtherSandbox {
        container: String,
        wanted: String,
        ours: String,
    },
    #[error("the sandbox VM is not running")]
    VmNotRunning,
    #[error("Hull: {0}")]
    Mount(#[from] ContainerShareError),
    #[error("{doing}: {}", rpc_message(source))]
    Agent {
        doing: &'static str,
        #[source]
        source: ttrpc::Error,
    },
    /// A container's creation, which had waited for the VM, failed; the
    /// error is shared by every call that waited for it.
    #[error("{0}")]
    Creation(Arc<LifecycleError>),
}

impl From<sandbox::SandboxError> for LifecycleError {
    fn from(err: sandbox::SandboxError) -> Self {
        LifecycleError::Sandbox(Arc::new(err))
    }
}

/// `map_err` for an agent call: what it was doing.
pub fn agent_failed(doing: &'static str) -> impl FnOnce(ttrpc::Error) -> LifecycleError {
    move |source| LifecycleError::Agent { doing, source }
}
