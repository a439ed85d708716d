//! Where the agent listens: vsock in the guest, Unix sockets on the host.
//! The ttrpc API and the stdio streams share nothing but the sandbox.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use hull_protocols::stdio::{self, StreamHeader, StreamKind, MAX_HEADER_LEN};
use hull_protocols::{AGENT_API_PORT, AGENT_FORWARD_PORT, AGENT_READY_PORT, AGENT_STDIO_PORT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use ttrpc::r#async::transport::Listener;
use ttrpc::r#async::Server;

use crate::forker::Forker;
use crate::network::GuestNetwork;
use crate::process_io::{pump_input, pump_output};
use crate::reaper::Reaper;
use crate::sandbox::{Paths, Sandbox};
use crate::service::AgentService;

/// Where the agent keeps its state in the guest.
const GUEST_STATE_DIR: &str = "/run/hull-agent";

#[derive(Clone)]
pub enum Mode {
    /// PID 1 of a VM: vsock, and powers off when the sandbox is destroyed.
    Guest,
    /// A process on the host, for tests: `<dir>/agent.sock` (ttrpc),
    /// `<dir>/stdio.sock` (streams) and `<dir>/forward.sock` (port-forward).
    Host { dir: PathBuf },
}

impl Mode {
    pub fn is_guest(&self) -> bool {
        matches!(self, Mode::Guest)
    }
}

pub async fn run(mode: Mode, forker: Forker) -> Result<()> {
    // Before the API is served: containers may use 127.0.0.1 at once. A
    // host-mode agent does it too, for its tests in a new network namespace
    // (elsewhere lo is up already).
    crate::network::loopback_up().context("bringing lo up")?;
    let reaper = Reaper::start().context("watching SIGCHLD")?;
    let state_dir = match &mode {
        Mode::Guest => PathBuf::from(GUEST_STATE_DIR),
        Mode::Host { dir } => dir.join("state"),
    };
    let paths = Paths::under(&state_dir);
    paths
        .create()
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let sandbox = Arc::new(Sandbox::new(paths, reaper, forker));
    let power_off = Arc::new(Notify::new());
    let service = hull_protocols::agent_ttrpc::create_agent(Arc::new(AgentService {
        sandbox: sandbox.clone(),
        mode: mode.clone(),
        power_off: power_off.clone(),
        network: GuestNetwork::default(),
    }));

    let api_listener = match &mode {
        Mode::Guest => Listener::bind(format!("vsock://-1:{AGENT_API_PORT}"))
            .context("listening on vsock for the agent API")?,
        Mode::Host { dir } => {
            let path = dir.join("agent.sock");
            let _ = std::fs::remove_file(&path);
            Listener::from(
                tokio::net::UnixListener::bind(&path)
                    .with_context(|| format!("listening on {}", path.display()))?,
            )
        }
    };
    let mut server = Server::new()
        .add_listener(api_listener)
        .register_service(service);
    server.start().await.context("starting the ttrpc server")?;

    match &mode {
        Mode::Guest => {
            let listener = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                libc::VMADDR_CID_ANY,
                AGENT_STDIO_PORT,
            ))
            .context("listening on vsock for stdio")?;
            accept_stdio(sandbox.clone(), listener);
            let listener = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                libc::VMADDR_CID_ANY,
                AGENT_FORWARD_PORT,
            ))
            .context("listening on vsock for port-forward")?;
            accept_forwards(listener);
        }
        Mode::Host { dir } => {
            let path = dir.join("stdio.sock");
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("listening on {}", path.display()))?;
            accept_stdio(sandbox.clone(), listener);
            let path = dir.join("forward.sock");
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("listening on {}", path.display()))?;
            accept_forwards(listener);
        }
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "hull-agent ready");
    if mode.is_guest() {
        tell_the_host_we_serve().await;
    }

    match &mode {
        Mode::Guest => {
            power_off.notified().await;
            // Let the reply to DestroySandbox leave before the VM goes away.
            // The host may keep connections open (long polls), so the server
            // is not drained: the VM is about to end anyway.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Mode::Host { .. } => {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            sandbox.remove_all().await.ok();
            server.shutdown().await.ok();
        }
    }
    Ok(())
}

/// Connects to the host's ready port and hangs up: the host waits for
/// that instead of retrying connections to the API port.
async fn tell_the_host_we_serve() {
    let host = tokio_vsock::VsockAddr::new(libc::VMADDR_CID_HOST, AGENT_READY_PORT);
    if let Err(err) = tokio_vsock::VsockStream::connect(host).await {
        // The host then gives up at its boot deadline, with an error that
        // names the ready port; this line is in the console log it points to.
        tracing::warn!(%err, "telling the host that the agent serves");
    }
}

/// Where stdio streams come from: vsock in the guest, a Unix socket on the
/// host.
#[async_trait::async_trait]
trait StreamListener: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream>;
}

#[async_trait::async_trait]
impl StreamListener for tokio_vsock::VsockListener {
    type Stream = tokio_vsock::VsockStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

#[async_trait::async_trait]
impl StreamListener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Serves every stdio stream `listener` accepts, each on its own task.
fn accept_stdio(sandbox: Arc<Sandbox>, listener: impl StreamListener) {
    tokio::spawn(async move {
        loop {
            match listener.accept_stream().await {
                Ok(stream) => {
                    tokio::spawn(serve_stream(sandbox.clone(), stream));
                }
                Err(err) => tracing::warn!(%err, "accepting a stdio stream"),
            }
        }
    });
}

/// Serves every forwarded connection `listener` accepts, each on its own
/// task.
fn accept_forwards(listener: impl StreamListener) {
    tokio::spawn(async move {
        loop {
            match listener.accept_stream().await {
                Ok(stream) => {
                    tokio::spawn(crate::forward::serve(stream));
                }
                Err(err) => tracing::warn!(%err, "accepting a port-forward connection"),
            }
        }
    });
}

/// Reads a stream's header, attaches it to its process and copies until the
/// stream ends.
async fn serve_stream<S>(sandbox: Arc<Sandbox>, mut stream: S)
where
    S: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static,
{
    let header = match read_header(&mut stream).await {
        Ok(header) => header,
        Err(reason) => {
            let _ = stream.write_all(stdio::refusal(&reason).as_bytes()).await;
            return;
        }
    };
    let fd = match sandbox.attach(&header) {
        Ok(fd) => fd,
        Err(err) => {
            let _ = stream
                .write_all(stdio::refusal(&err.to_string()).as_bytes())
                .await;
            return;
        }
    };
    if stream.write_all(stdio::ACCEPTED.as_bytes()).await.is_err() {
        return;
    }
    let result = match header.kind {
        StreamKind::Stdin => {
            let (reader, _writer) = tokio::io::split(stream);
            pump_input(reader, fd).await
        }
        StreamKind::Stdout | StreamKind::Stderr => pump_output(fd, stream).await,
    };
    if let Err(err) = result {
        tracing::debug!(
            container = %header.container_id,
            exec = %header.exec_id,
            stream = %header.kind,
            %err,
            "stdio stream ended with an error"
        );
    }
}

/// Reads the header line a byte at a time, so no stream data is consumed.
async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<StreamHeader, String> {
    let line = read_header_line(stream, MAX_HEADER_LEN, "stream header").await?;
    StreamHeader::parse(&line).map_err(|e| e.to_string())
}

/// Reads one header line (newline included, at most `max` bytes) a byte at
/// a time, so that none of the data after it is consumed; `what` names it
/// in errors.
pub async fn read_header_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    what: &str,
) -> Result<String, String> {
    let mut line = Vec::with_capacity(128);
    loop {
        let byte = stream
            .read_u8()
            .await
            .map_err(|e| format!("reading the {what}: {e}"))?;
        line.push(byte);
        if byte == b'\n' {
            break;
        }
        if line.len() >= max {
            return Err(format!("{what} too long"));
        }
    }
    String::from_utf8(line).map_err(|_| format!("{what} is not UTF-8"))
}
