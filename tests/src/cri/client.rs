//! A blocking client of the CRI v1 RuntimeService on containerd's socket:
//! tonic over the Unix socket, driven by a tokio runtime the client owns, so
//! tests call it like any other function.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::exec_stream::ExecSession;

/// How long one CRI call may take. Generous: a Hull pod boots a VM under
/// software emulation on hosts without KVM.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(180);

/// A failed CRI call: which call, and containerd's answer (or the deadline).
#[derive(Debug)]
pub struct CriError {
    pub rpc: &'static str,
    pub code: tonic::Code,
    pub message: String,
}

impl fmt::Display for CriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CRI {} failed ({:?}): {}",
            self.rpc, self.code, self.message
        )
    }
}

impl std::error::Error for CriError {}

/// Connected to one containerd's CRI plugin.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    service: RuntimeServiceClient<Channel>,
    socket: PathBuf,
}

impl CriClient {
    /// Connects to the gRPC socket of a containerd with the CRI plugin.
    pub fn connect(socket: &Path) -> Self {
        // One worker: tonic's connection task runs there while a test thread
        // waits in block_on.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cri-client")
            .enable_all()
            .build()
            .expect("tokio runtime for the CRI client");
        let path = socket.to_path_buf();
        let channel = runtime
            .block_on(async move {
                // The URI is required but unused: every connection goes to
                // the socket.
                Endpoint::from_static("http://containerd.sock")
                    .connect_timeout(Duration::from_secs(10))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                        }
                    }))
                    .await
            })
            .unwrap_or_else(|e| panic!("cannot connect to CRI at {}: {e}", socket.display()));
        Self {
            runtime,
            service: RuntimeServiceClient::new(channel),
            socket: socket.to_path_buf(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `future` on the client's runtime. Used by [`ExecSession`] too.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Runs one call with the deadline and names it in the error.
    fn call<T, F>(&self, rpc: &'static str, call: F) -> Result<T, CriError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self.block_on(async { tokio::time::timeout(RPC_TIMEOUT, call).await }) {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(CriError {
                rpc,
                code: status.code(),
                message: status.message().to_string(),
            }),
            Err(_) => Err(CriError {
                rpc,
                code: tonic::Code::DeadlineExceeded,
                message: format!("no answer within {RPC_TIMEOUT:?}"),
            }),
        }
    }

    fn service(&self) -> RuntimeServiceClient<Channel> {
        self.service.clone()
    }

    pub fn version(&self) -> Result<api::VersionResponse, CriError> {
        let mut s = self.service();
        self.call("Version", async move {
            s.version(api::VersionRequest::default()).await
        })
    }

    pub fn status(&self) -> Result<api::StatusResponse, CriError> {
        let mut s = self.service();
        self.call("Status", async move {
            s.status(api::StatusRequest { verbose: false }).await
        })
    }

    /// Runs a pod sandbox under the runtime handler; returns its id.
    pub fn run_pod_sandbox(
        &self,
        config: api::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, CriError> {
        let mut s = self.service();
        let request = api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime_handler.to_string(),
        };
        self.call(
            "RunPodSandbox",
            async move { s.run_pod_sandbox(request).await },
        )
        .map(|r| r.pod_sandbox_id)
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut s = self.service();
        let request = api::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call("StopPodSandbox", async move {
            s.stop_pod_sandbox(request).await
        })
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut s = self.service();
        let request = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call("RemovePodSandbox", async move {
            s.remove_pod_sandbox(request).await
        })
        .map(drop)
    }

    /// The sandbox's status; `verbose` adds containerd's `info` (pid,
    /// runtime spec, CNI result) as JSON.
    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<api::PodSandboxStatusResponse, CriError> {
        let mut s = self.service();
        let request = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose,
        };
        self.call("PodSandboxStatus", async move {
            s.pod_sandbox_status(request).await
        })
    }

    pub fn list_pod_sandboxes(&self) -> Result<Vec<api::PodSandbox>, CriError> {
        let mut s = self.service();
        self.call("ListPodSandbox", async move {
            s.list_pod_sandbox(api::ListPodSandboxRequest::default())
                .await
        })
        .map(|r| r.items)
    }

    /// Creates a container in a pod; returns its id.
    pub fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let mut s = self.service();
        let request = api::CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        self.call("CreateContainer", async move {
            s.create_container(request).await
        })
        .map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        let mut s = self.service();
        let request = api::StartContainerRequest {
            container_id: id.to_string(),
        };
        self.call(
            "StartContainer",
            async move { s.start_container(request).await },
        )
        .map(drop)
    }

    /// Stops a container: SIGTERM, then SIGKILL after `timeout_secs`.
    pub fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<(), CriError> {
        let mut s = self.service();
        let request = api::StopContainerRequest {
            container_id: id.to_string(),
            timeout: timeout_secs,
        };
        self.call(
            "StopContainer",
            async move { s.stop_container(request).await },
        )
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let mut s = self.service();
        let request = api::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call("RemoveContainer", async move {
            s.remove_container(request).await
        })
        .map(drop)
    }

    pub fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<api::ContainerStatusResponse, CriError> {
        let mut s = self.service();
        let request = api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose,
        };
        self.call("ContainerStatus", async move {
            s.container_status(request).await
        })
    }

    /// The containers of one pod.
    pub fn list_containers(&self, pod_sandbox_id: &str) -> Result<Vec<api::Container>, CriError> {
        let mut s = self.service();
        let request = api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                pod_sandbox_id: pod_sandbox_id.to_string(),
                ..Default::default()
            }),
        };
        self.call(
            "ListContainers",
            async move { s.list_containers(request).await },
        )
        .map(|r| r.containers)
    }

    /// Runs `cmd` in a container and waits for it (at most `timeout_secs`).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<api::ExecSyncResponse, CriError> {
        let mut s = self.service();
        let request = api::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
            timeout: timeout_secs,
        };
        self.call("ExecSync", async move { s.exec_sync(request).await })
    }

    /// Asks for a streaming exec and connects to the URL containerd
    /// answers with.
    pub fn exec(&self, request: api::ExecRequest) -> Result<ExecSession<'_>, CriError> {
        let mut s = self.service();
        let url = self.call("Exec", async move { s.exec(request).await })?.url;
        ExecSession::connect(self, &url).map_err(|e| CriError {
            rpc: "Exec",
            code: tonic::Code::Unavailable,
            message: format!("streaming server at {url}: {e}"),
        })
    }

    /// PortForward: the streaming server's URL for the request's ports.
    pub fn port_forward(&self, request: api::PortForwardRequest) -> Result<String, CriError> {
        let mut s = self.service();
        self.call("PortForward", async move { s.port_forward(request).await })
            .map(|r| r.url)
    }

    pub fn container_stats(&self, id: &str) -> Result<api::ContainerStats, CriError> {
        let mut s = self.service();
        let request = api::ContainerStatsRequest {
            container_id: id.to_string(),
        };
        self.call(
            "ContainerStats",
            async move { s.container_stats(request).await },
        )
        .and_then(|r| {
            r.stats.ok_or_else(|| CriError {
                rpc: "ContainerStats",
                code: tonic::Code::Internal,
                message: format!("the answer for {id} has no stats"),
            })
        })
    }

    /// Stats of every container of one pod.
    pub fn list_container_stats(
        &self,
        pod_sandbox_id: &str,
    ) -> Result<Vec<api::ContainerStats>, CriError> {
        let mut s = self.service();
        let request = api::ListContainerStatsRequest {
            filter: Some(api::ContainerStatsFilter {
                pod_sandbox_id: pod_sandbox_id.to_string(),
                ..Default::default()
            }),
        };
        self.call("ListContainerStats", async move {
            s.list_container_stats(request).await
        })
        .map(|r| r.stats)
    }

    pub fn update_container_resources(
        &self,
        id: &str,
        linux: api::LinuxContainerResources,
    ) -> Result<(), CriError> {
        let mut s = self.service();
        let request = api::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(linux),
            ..Default::default()
        };
        self.call("UpdateContainerResources", async move {
            s.update_container_resources(request).await
        })
        .map(drop)
    }
}
