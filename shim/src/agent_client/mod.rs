//! Reaching the guest agent: hybrid vsock (Firecracker's protocol over one
//! Unix socket per VM), the ttrpc API on port 1024 and stdio streams on 1025;
//! the agent's own call to host port 1027 says that it serves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_protocols::agent::{CheckRequest, CheckResponse};
use hull_protocols::agent_ttrpc;
use hull_protocols::stdio::{parse_answer, StreamHeader};
use hull_protocols::{AGENT_API_PORT, AGENT_READY_PORT, AGENT_STDIO_PORT, API_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error("Connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock port {port}: {reason}")]
    Handshake { port: u32, reason: String },
    #[error("the guest agent did not say that it serves within {waited:.1?} (it calls host vsock port {AGENT_READY_PORT} when it does)")]
    NotReady { waited: Duration },
    #[error("the guest agent did not accept a connection within {waited:.1?} ({attempts} attempts; last: {last})")]
    NotListening {
        waited: Duration,
        attempts: u32,
        last: String,
    },
    #[error("the guest agent accepted a connection after {connected_after:.1?} but did not answer its version check in the {waited:.1?} left of the boot deadline ({deadline:?})")]
    CheckTimeout {
        connected_after: Duration,
        waited: Duration,
        deadline: Duration,
    },
    #[error("Agent version check: {0}")]
    Version(String),
    #[error("The agent refused the {stream} stream: {reason}")]
    StreamRefused { stream: String, reason: String },
}

/// The host end of a VM's hybrid vsock device.
#[derive(Debug, Clone)]
pub struct HybridVsock {
    uds: PathBuf,
}

/// How long one CONNECT may wait for the guest's answer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

impl HybridVsock {
    pub fn new(uds: impl Into<PathBuf>) -> Self {
        HybridVsock { uds: uds.into() }
    }

    /// Opens a stream to guest `port`: `CONNECT <port>\n`, then `OK <n>\n`.
    pub async fn connect(&self, port: u32) -> Result<UnixStream, AgentClientError> {
        let mut stream =
            UnixStream::connect(&self.uds)
                .await
                .map_err(|source| AgentClientError::Connect {
                    path: self.uds.clone(),
                    source,
                })?;
        let handshake = async {
            stream
                .write_all(format!("CONNECT {port}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            read_line(&mut stream).await.map_err(|e| e.to_string())
        };
        let line = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| AgentClientError::Handshake {
                port,
                reason: "no answer from the guest".into(),
            })?
            .map_err(|reason| AgentClientError::Handshake { port, reason })?;
        match line.strip_prefix("OK ") {
            Some(n) if n.trim().parse::<u32>().is_ok() => Ok(stream),
            _ if line.is_empty() => Err(AgentClientError::Handshake {
                port,
                reason: "the guest refused the connection (nobody listening yet)".into(),
            }),
            _ => Err(AgentClientError::Handshake {
                port,
                reason: format!("unexpected answer {line:?}"),
            }),
        }
    }
}

/// Reads one `\n`-terminated line a byte at a time, so nothing after it is
/// consumed. An EOF before any byte is an empty line.
pub async fn read_line<R: AsyncRead + Unpin>(stream: &mut R) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            break;
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > 512 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "line too long",
            ));
        }
    }
    String::from_utf8(line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The host end of the agent's ready call: once the agent serves, it
/// connects to host port [`AGENT_READY_PORT`], which the VM's vsock device
/// turns into a connection to `<uds>_<port>`. Waiting for it replaces
/// knocking on the agent's port through the boot. Nothing is read from the
/// connection: that it came is the message.
pub struct ReadySignal {
    listener: UnixListener,
    path: PathBuf,
}

impl ReadySignal {
    /// Listens beside the VM's hybrid vsock socket `uds`, the socket owned
    /// by `owner` (the VMM's uid and gid: the VMM connects from its jail).
    pub fn listen(uds: &Path, owner: (u32, u32)) -> std::io::Result<Self> {
        let mut path = uds.as_os_str().to_owned();
        path.push(format!("_{AGENT_READY_PORT}"));
        let path = PathBuf::from(path);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let signal = ReadySignal { listener, path };
        std::os::unix::fs::chown(&signal.path, Some(owner.0), Some(owner.1))?;
        Ok(signal)
    }

    /// Waits for the agent's call.
    async fn wait(&self) -> std::io::Result<()> {
        self.listener.accept().await.map(drop)
    }
}

impl Drop for ReadySignal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A connected, version-checked guest agent.
#[derive(Clone)]
pub struct AgentClient {
    api: agent_ttrpc::AgentClient,
    vsock: HybridVsock,
    pub info: CheckResponse,
}

impl AgentClient {
    /// Connects to the agent and checks its version, all within `timeout`
    /// (one deadline for the whole boot, not one per step): waits for the
    /// agent's ready call when there is a `ready` listener, then connects
    /// (retrying until the agent listens, which without a ready call is
    /// how the boot is waited for) and gives the version check what is left.
    pub async fn connect(
        vsock: HybridVsock,
        ready: Option<&ReadySignal>,
        timeout: Duration,
    ) -> Result<Self, AgentClientError> {
        let started = Instant::now();
        let deadline = started + timeout;
        if let Some(ready) = ready {
            match tokio::time::timeout_at(deadline.into(), ready.wait()).await {
                Ok(Ok(())) => {}
                // Knocking, as without a ready call, still works.
                Ok(Err(err)) => tracing::warn!(%err, "waiting for the agent's ready call"),
                Err(_) => {
                    return Err(AgentClientError::NotReady {
                        waited: started.elapsed(),
                    })
                }
            }
        }
        let mut attempts = 0;
        let mut last = String::new();
        let stream = loop {
            attempts += 1;
            let attempt =
                tokio::time::timeout_at(deadline.into(), vsock.connect(AGENT_API_PORT)).await;
            match attempt {
                Ok(Ok(stream)) => break stream,
                Ok(Err(err)) => {
                    tracing::trace!(%err, "agent not ready");
                    last = err.to_string();
                }
                Err(_) if last.is_empty() => last = "still waiting for the guest's answer".into(),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(AgentClientError::NotListening {
                    waited: started.elapsed(),
                    attempts,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let connected_after = started.elapsed();
        let left = deadline.saturating_duration_since(Instant::now());
        let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::new(stream));
        let api = agent_ttrpc::AgentClient::new(client);
        let request = CheckRequest {
            api_version: API_VERSION.into(),
            ..Default::default()
        };
        let info = match api.check(context(left), &request).await {
            Ok(info) => info,
            Err(err) if is_deadline(&err) || Instant::now() >= deadline => {
                return Err(AgentClientError::CheckTimeout {
                    connected_after,
                    waited: left,
                    deadline: timeout,
                })
            }
            Err(err) => return Err(AgentClientError::Version(rpc_message(&err))),
        };
        Ok(AgentClient { api, vsock, info })
    }

    /// Asks the agent whether it is alive, and whether the filesystem at
    /// `probe` (in the guest) answers, within `deadline`.
    pub async fn health_check(
        &self,
        probe: &str,
        deadline: Duration,
    ) -> Result<(), HealthCheckError> {
        let request = CheckRequest {
            api_version: API_VERSION.into(),
            probe_path: probe.to_owned(),
            ..Default::default()
        };
        match tokio::time::timeout(deadline, self.api.check(context(deadline), &request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) if is_deadline(&err) => Err(HealthCheckError::Silent),
            Ok(Err(err)) if rpc_code(&err) == Some(ttrpc::Code::UNAVAILABLE) => {
                Err(HealthCheckError::ShareSilent)
            }
            Ok(Err(ttrpc::Error::RpcStatus(_))) => Err(HealthCheckError::Refused),
            Ok(Err(_)) => Err(HealthCheckError::Disconnected),
            Err(_) => Err(HealthCheckError::Silent),
        }
    }

    pub fn api(&self) -> &agent_ttrpc::AgentClient {
        &self.api
    }

    /// Opens the stdio stream that `header` names, within `deadline`.
    pub async fn open_stream(
        &self,
        header: &StreamHeader,
        deadline: Duration,
    ) -> Result<UnixStream, AgentClientError> {
        let refused = |reason: String| AgentClientError::StreamRefused {
            stream: header.kind.to_string(),
            reason,
        };
        tokio::time::timeout(deadline, self.open_stream_now(header))
            .await
            .map_err(|_| refused(format!("no answer within {deadline:?}")))?
    }

    async fn open_stream_now(&self, header: &StreamHeader) -> Result<UnixStream, AgentClientError> {
        let mut stream = self.vsock.connect(AGENT_STDIO_PORT).await?;
        let refused = |reason: String| AgentClientError::StreamRefused {
            stream: header.kind.to_string(),
            reason,
        };
        stream
            .write_all(header.encode().as_bytes())
            .await
            .map_err(|e| refused(e.to_string()))?;
        let answer = read_line(&mut stream)
            .await
            .map_err(|e| refused(e.to_string()))?;
        parse_answer(&answer).map_err(refused)?;
        Ok(stream)
    }
}

/// How a health check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckError {
    /// No answer within the deadline.
    Silent,
    /// The connection is gone.
    Disconnected,
    /// The agent answered, but the probed filesystem did not.
    ShareSilent,
    /// The agent answered with an error.
    Refused,
}

/// A ttrpc context with a deadline (`Duration::ZERO`: none).
pub fn context(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos() as i64)
}

/// The message of a ttrpc error, without the transport's decoration. The
/// agent wrote it, so it is sanitized for errors and logs.
pub fn rpc_message(err: &ttrpc::Error) -> String {
    match err {
        ttrpc::Error::RpcStatus(status) => crate::guest_text::guest(status.message()),
        other => crate::guest_text::guest(&other.to_string()),
    }
}

/// Whether a ttrpc call failed because its deadline passed.
fn is_deadline(err: &ttrpc::Error) -> bool {
    match err {
        ttrpc::Error::RpcStatus(status) => status.code() == ttrpc::Code::DEADLINE_EXCEEDED,
        other => other.to_string().contains("timeout"),
    }
}

/// The status code of a ttrpc error, if the agent sent one.
pub fn rpc_code(err: &ttrpc::Error) -> Option<ttrpc::Code> {
    match err {
        ttrpc::Error::RpcStatus(status) => Some(status.code()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake hybrid-vsock endpoint that answers each CONNECT with `answer`.
    async fn endpoint(answer: &'static str) -> (tempfile::TempDir, HybridVsock) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let line = read_line(&mut stream).await.unwrap();
                assert!(line.starts_with("CONNECT "));
                stream.write_all(answer.as_bytes()).await.unwrap();
                if !answer.is_empty() {
                    stream.write_all(b"payload").await.unwrap();
                }
            }
        });
        (dir, HybridVsock::new(path))
    }

    #[tokio::test]
    async fn handshake_leaves_the_payload_unread() {
        let (_dir, vsock) = endpoint("OK 1073741824\n").await;
        let mut stream = vsock.connect(1024).await.unwrap();
        let mut payload = [0u8; 7];
        stream.read_exact(&mut payload).await.unwrap();
        assert_eq!(&payload, b"payload");
    }

    #[tokio::test]
    async fn refusals_and_garbage_are_errors() {
        let (_dir, vsock) = endpoint("").await;
        let err = vsock.connect(1024).await.unwrap_err().to_string();
        assert!(err.contains("refused"), "{err}");
        let (_dir, vsock) = endpoint("NOPE\n").await;
        let err = vsock.connect(1024).await.unwrap_err().to_string();
        assert!(err.contains("unexpected answer"), "{err}");
    }

    #[tokio::test]
    async fn connect_times_out_when_nobody_answers() {
        let (_dir, vsock) = endpoint("").await;
        let err = AgentClient::connect(vsock, None, Duration::from_millis(300))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, AgentClientError::NotListening { .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains("attempts") && message.contains("refused"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_version_check_that_never_answers_uses_up_only_the_boot_deadline() {
        // An agent that accepts the connection, then never answers a call.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_line(&mut stream).await.unwrap();
            stream.write_all(b"OK 1024\n").await.unwrap();
            std::future::pending::<()>().await;
            drop(stream);
        });
        let vsock = HybridVsock::new(path);
        let started = Instant::now();
        let err = AgentClient::connect(vsock, None, Duration::from_millis(700))
            .await
            .err()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(err, AgentClientError::CheckTimeout { .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains("version check") && message.contains("700ms"),
            "{message}"
        );
    }
}
