//! A process's stdio and the agent's vsock streams. For containerd, between
//! its FIFOs and the streams: stdout and stderr are copied to their FIFOs
//! until the guest ends the stream; stdin is copied from its FIFO until
//! containerd closes it (or CloseIO), then half-closed towards the guest.
//! For a caller in this process (`hull run`), the streams themselves.

use std::path::{Path, PathBuf};

use hull_protocols::stdio::{StreamHeader, StreamKind};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::agent::Agent;
use crate::agent_client;

/// The stdio paths containerd gave for one process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("Stdio {0:?} is not a FIFO path; only FIFOs (what ctr and CRI use) are supported")]
    UnsupportedUri(String),
    #[error("Opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Agent(#[from] agent_client::AgentClientError),
}

impl StdioPaths {
    /// What to ask the agent for.
    pub fn request(&self) -> hull_protocols::agent::Stdio {
        hull_protocols::agent::Stdio {
            terminal: self.terminal,
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty() && !self.terminal,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), IoError> {
        for path in [&self.stdin, &self.stdout, &self.stderr] {
            if !path.is_empty() && (path.contains("://") || !Path::new(path).is_absolute()) {
                return Err(IoError::UnsupportedUri(path.clone()));
            }
        }
        Ok(())
    }
}

/// Where a process's stdio goes.
#[derive(Debug, Clone)]
pub enum StdioWiring {
    /// containerd's FIFOs, which the manager copies to and from.
    Fifos(StdioPaths),
    /// The agent's streams, handed to the caller: stdin, stdout and (without
    /// a terminal) stderr.
    Caller { terminal: bool },
}

impl StdioWiring {
    /// The paths State reports (none for a caller's streams).
    pub fn paths(&self) -> StdioPaths {
        match self {
            StdioWiring::Fifos(paths) => paths.clone(),
            StdioWiring::Caller { terminal } => StdioPaths {
                terminal: *terminal,
                ..Default::default()
            },
        }
    }

    /// What to ask the agent for.
    pub fn request(&self) -> hull_protocols::agent::Stdio {
        match self {
            StdioWiring::Fifos(paths) => paths.request(),
            StdioWiring::Caller { terminal } => hull_protocols::agent::Stdio {
                terminal: *terminal,
                stdin: true,
                stdout: true,
                stderr: !terminal,
                ..Default::default()
            },
        }
    }

    pub fn validate(&self) -> Result<(), IoError> {
        match self {
            StdioWiring::Fifos(paths) => paths.validate(),
            StdioWiring::Caller { .. } => Ok(()),
        }
    }
}

/// A process's streams, for a caller that copies them itself.
pub struct CallerStreams {
    pub stdout: UnixStream,
    pub stderr: Option<UnixStream>,
    pub stdin: UnixStream,
}

/// The running copies of one process's stdio.
pub struct ProcessIo {
    /// Streams not yet taken by the caller ([`StdioWiring::Caller`]).
    caller: Option<CallerStreams>,
    outputs: Vec<JoinHandle<()>>,
    stdin: std::sync::Arc<Mutex<Option<WriteHalf<UnixStream>>>>,
    stdin_copy: Option<JoinHandle<()>>,
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        // A stdin nobody ever wrote to would otherwise wait forever.
        if let Some(copy) = self.stdin_copy.take() {
            copy.abort();
        }
        for output in &self.outputs {
            output.abort();
        }
    }
}

impl ProcessIo {
    /// Opens the process's streams at the agent and starts copying (or
    /// keeps them for the caller).
    pub async fn attach(
        agent: &dyn Agent,
        container_id: &str,
        exec_id: &str,
        wiring: &StdioWiring,
    ) -> Result<Self, IoError> {
        let header = |kind| StreamHeader {
            kind,
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        };
        let paths = match wiring {
            StdioWiring::Fifos(paths) => paths,
            StdioWiring::Caller { terminal } => {
                let stdout = agent.open_stream(&header(StreamKind::Stdout)).await?;
                let stderr = match terminal {
                    true => None,
                    false => Some(agent.open_stream(&header(StreamKind::Stderr)).await?),
                };
                let stdin = agent.open_stream(&header(StreamKind::Stdin)).await?;
                return Ok(ProcessIo {
                    caller: Some(CallerStreams {
                        stdout,
                        stderr,
                        stdin,
                    }),
                    outputs: Vec::new(),
                    stdin: Default::default(),
                    stdin_copy: None,
                });
            }
        };
        // Built first, so that a stream that fails to open drops it and
        // its Drop stops the copies already started, closing their FIFOs
        // (a detached copy held containerd's reader, and `ctr task exec`,
        // forever).
        let mut io = ProcessIo {
            caller: None,
            outputs: Vec::new(),
            stdin: std::sync::Arc::new(Mutex::new(None)),
            stdin_copy: None,
        };
        let output_paths = [
            (StreamKind::Stdout, &paths.stdout),
            (StreamKind::Stderr, &paths.stderr),
        ];
        for (kind, path) in output_paths {
            if path.is_empty() || (kind == StreamKind::Stderr && paths.terminal) {
                continue;
            }
            let fifo = open_fifo_for_writing(Path::new(path))?;
            let mut stream = agent.open_stream(&header(kind)).await?;
            io.outputs.push(tokio::spawn(async move {
                let mut fifo = fifo;
                let _ = tokio::io::copy(&mut stream, &mut fifo).await;
            }));
        }
        if !paths.stdin.is_empty() {
            // Non-blocking open: no writer is needed yet, and reads wait
            // for one; the copy ends when the writer closes the FIFO.
            let fifo = tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(&paths.stdin)
                .map_err(|source| IoError::Open {
                    path: PathBuf::from(&paths.stdin),
                    source,
                })?;
            let stream = agent.open_stream(&header(StreamKind::Stdin)).await?;
            let (_, writer) = tokio::io::split(stream);
            *io.stdin.lock().await = Some(writer);
            let slot = io.stdin.clone();
            io.stdin_copy = Some(tokio::spawn(async move {
                let mut fifo = fifo;
                let mut buffer = vec![0u8; 32 * 1024];
                loop {
                    let n = match tokio::io::AsyncReadExt::read(&mut fifo, &mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut guard = slot.lock().await;
                    let Some(writer) = guard.as_mut() else { return };
                    if writer.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
                close_stdin(&slot).await;
            }));
        }
        Ok(io)
    }

    /// The streams kept for the caller, once.
    pub fn take_caller_streams(&mut self) -> Option<CallerStreams> {
        self.caller.take()
    }

    /// What ends the process's stdin (containerd's CloseIO).
    pub fn stdin(&self) -> StdinHandle {
        StdinHandle(self.stdin.clone())
    }

    /// Waits until the guest has ended every output stream, i.e. all the
    /// process's output is in the FIFOs.
    /// Waits up to `within` for the output copies to finish, and stops the
    /// ones that did not: their FIFOs then close, so containerd (and a
    /// `ctr task exec` waiting on them) sees the end even when the guest's
    /// side of a stream hangs.
    pub async fn drain(&mut self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        for output in self.outputs.drain(..) {
            let abort = output.abort_handle();
            if tokio::time::timeout_at(deadline, output).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// A process's stdin towards the guest, to be closed.
#[derive(Clone)]
pub struct StdinHandle(std::sync::Arc<Mutex<Option<WriteHalf<UnixStream>>>>);

impl StdinHandle {
    pub async fn close(&self) {
        close_stdin(&self.0).await;
    }
}

async fn close_stdin(slot: &Mutex<Option<WriteHalf<UnixStream>>>) {
    if let Some(mut writer) = slot.lock().await.take() {
        let _ = writer.shutdown().await;
    }
}

/// Opens a FIFO for writing without waiting for a reader (containerd has
/// opened it already; O_RDWR keeps the open from failing if it has not).
fn open_fifo_for_writing(path: &Path) -> Result<tokio::net::unix::pipe::Sender, IoError> {
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|source| IoError::Open {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_processes_ask_for_no_stderr() {
        let paths = StdioPaths {
            stdin: "/run/i".into(),
            stdout: "/run/o".into(),
            stderr: "/run/e".into(),
            terminal: true,
        };
        let request = paths.request();
        assert!(request.terminal && request.stdin && request.stdout && !request.stderr);
        let request = StdioPaths::default().request();
        assert!(!request.stdin && !request.stdout && !request.stderr);
    }

    #[test]
    fn only_fifo_paths_are_accepted() {
        let ok = StdioPaths {
            stdout: "/run/containerd/fifo/1/c-stdout".into(),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for uri in ["binary:///bin/logger", "file:///var/log/c", "relative"] {
            let bad = StdioPaths {
                stdout: uri.into(),
                ..Default::default()
            };
            assert!(bad.validate().is_err(), "{uri}");
        }
    }
}
