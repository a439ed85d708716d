//! Streaming exec: the URL CRI `Exec` answers with points at containerd's
//! streaming server (the kubelet's server, vendored in containerd 1.6), which
//! takes a WebSocket as well as SPDY. This speaks the WebSocket's
//! `v4.channel.k8s.io` protocol: every binary message starts with a channel
//! byte (0 stdin, 1 stdout, 2 stderr, 3 the final status as a JSON
//! `metav1.Status`, 4 terminal resize as JSON `{"Width":..,"Height":..}`);
//! the server closes the socket after the status.

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::client::CriClient;

/// The WebSocket subprotocol: binary frames, JSON status on channel 3.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// How long the WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;

/// What went wrong on the stream.
#[derive(Debug)]
pub enum StreamError {
    /// The WebSocket handshake or a frame failed.
    WebSocket(tungstenite::Error),
    /// The server chose another subprotocol than the one asked for.
    Subprotocol(Option<String>),
    /// The server closed the stream before sending the status.
    ClosedWithoutStatus,
    /// The status message is not a `metav1.Status` this client understands.
    Status(String),
    /// Nothing arrived in time.
    Timeout(Duration),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WebSocket(e) => write!(f, "websocket: {e}"),
            Self::Subprotocol(p) => write!(f, "server chose subprotocol {p:?}, not {PROTOCOL}"),
            Self::ClosedWithoutStatus => write!(f, "stream closed before the exit status"),
            Self::Status(s) => write!(f, "unexpected status message: {s}"),
            Self::Timeout(t) => write!(f, "nothing arrived within {t:?}"),
        }
    }
}

impl std::error::Error for StreamError {}

impl From<tungstenite::Error> for StreamError {
    fn from(e: tungstenite::Error) -> Self {
        Self::WebSocket(e)
    }
}

/// Everything a finished exec sent.
#[derive(Debug, PartialEq, Eq)]
pub struct ExecOutcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// One exec on the streaming server.
pub struct ExecSession<'a> {
    client: &'a CriClient,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit_code: Option<i32>,
    closed: bool,
}

impl<'a> ExecSession<'a> {
    /// Opens the WebSocket to `url` (the `http://` URL from CRI `Exec`).
    pub(crate) fn connect(client: &'a CriClient, url: &str) -> Result<Self, StreamError> {
        let ws_url = match url.strip_prefix("http://") {
            Some(rest) => format!("ws://{rest}"),
            None => url.replacen("https://", "wss://", 1),
        };
        let mut request = ws_url.into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let (socket, response) = client
            .block_on(async {
                tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request))
                    .await
            })
            .map_err(|_| StreamError::Timeout(CONNECT_TIMEOUT))??;
        let chosen = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if chosen.as_deref() != Some(PROTOCOL) {
            return Err(StreamError::Subprotocol(chosen));
        }
        Ok(Self {
            client,
            socket,
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code: None,
            closed: false,
        })
    }

    fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), StreamError> {
        let message = Message::Binary(frame(channel, data).into());
        let socket = &mut self.socket;
        self.client
            .block_on(async { socket.send(message).await })
            .map_err(StreamError::from)
    }

    /// Writes to the process's stdin (its terminal, with a TTY).
    pub fn send_stdin(&mut self, data: &[u8]) -> Result<(), StreamError> {
        self.send(STDIN, data)
    }

    /// Resizes the process's terminal.
    pub fn resize(&mut self, width: u16, height: u16) -> Result<(), StreamError> {
        self.send(RESIZE, &resize_message(width, height))
    }

    /// Stdout so far.
    pub fn stdout(&self) -> &[u8] {
        &self.stdout
    }

    /// Reads one message within `timeout` and files it by channel. False
    /// once the server has closed the stream.
    fn receive(&mut self, timeout: Duration) -> Result<bool, StreamError> {
        if self.closed {
            return Ok(false);
        }
        let socket = &mut self.socket;
        let next = self
            .client
            .block_on(async { tokio::time::timeout(timeout, socket.next()).await })
            .map_err(|_| StreamError::Timeout(timeout))?;
        match next {
            None | Some(Ok(Message::Close(_))) => {
                self.closed = true;
                Ok(false)
            }
            Some(Err(e)) => Err(e.into()),
            Some(Ok(Message::Binary(data))) => {
                match data.split_first() {
                    Some((&STDOUT, rest)) => self.stdout.extend_from_slice(rest),
                    Some((&STDERR, rest)) => self.stderr.extend_from_slice(rest),
                    Some((&STATUS, rest)) => {
                        self.exit_code =
                            Some(exit_code_from_status(rest).map_err(StreamError::Status)?)
                    }
                    // Empty messages and other channels carry nothing for us.
                    _ => {}
                }
                Ok(true)
            }
            Some(Ok(Message::Text(text))) => Err(StreamError::Status(format!(
                "text message {text:?} on a binary protocol"
            ))),
            Some(Ok(_)) => Ok(true),
        }
    }

    /// Reads until stdout contains `needle`; false if the stream ended or
    /// `timeout` passed first.
    pub fn read_stdout_until(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<bool, StreamError> {
        let deadline = Instant::now() + timeout;
        loop {
            if String::from_utf8_lossy(&self.stdout).contains(needle) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match self.receive(left) {
                Ok(true) => {}
                Ok(false) | Err(StreamError::Timeout(_)) => {
                    return Ok(String::from_utf8_lossy(&self.stdout).contains(needle))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads to the end of the stream and returns the output and exit code.
    pub fn wait(mut self, timeout: Duration) -> Result<ExecOutcome, StreamError> {
        let deadline = Instant::now() + timeout;
        while self.receive(deadline.saturating_duration_since(Instant::now()))? {}
        let exit_code = self.exit_code.ok_or(StreamError::ClosedWithoutStatus)?;
        Ok(ExecOutcome {
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
            exit_code,
        })
    }
}

/// One message of the channel protocol.
fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    message
}

/// The resize channel's JSON (Go's `remotecommand.TerminalSize`).
fn resize_message(width: u16, height: u16) -> Vec<u8> {
    serde_json::json!({ "Width": width, "Height": height })
        .to_string()
        .into_bytes()
}

/// The exit code a v4 status message reports: 0 for `Success`, the
/// `ExitCode` cause of a `NonZeroExitCode` failure; any other failure (the
/// exec could not run) is an error carrying the server's message.
pub fn exit_code_from_status(json: &[u8]) -> Result<i32, String> {
    let text = String::from_utf8_lossy(json);
    let status: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("{text}: not JSON: {e}"))?;
    match status["status"].as_str() {
        Some("Success") => Ok(0),
        Some("Failure") if status["reason"] == "NonZeroExitCode" => status["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|cause| cause["reason"] == "ExitCode")
            .and_then(|cause| cause["message"].as_str()?.parse().ok())
            .ok_or_else(|| format!("{text}: no ExitCode cause")),
        _ => Err(text.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_start_with_the_channel() {
        assert_eq!(frame(STDIN, b"ls\n"), b"\0ls\n");
        assert_eq!(frame(RESIZE, b""), [4]);
    }

    #[test]
    fn resize_is_go_terminal_size_json() {
        let json: serde_json::Value = serde_json::from_slice(&resize_message(100, 40)).unwrap();
        assert_eq!(json, serde_json::json!({"Width": 100, "Height": 40}));
    }

    #[test]
    fn status_success_is_zero() {
        assert_eq!(
            exit_code_from_status(br#"{"metadata":{},"status":"Success"}"#),
            Ok(0)
        );
    }

    #[test]
    fn status_non_zero_exit_code_is_the_cause() {
        let status = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 5","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"5"}]}}"#;
        assert_eq!(exit_code_from_status(status), Ok(5));
    }

    #[test]
    fn status_other_failures_are_errors() {
        let status = br#"{"metadata":{},"status":"Failure","message":"exec failed: no such file","reason":"InternalError"}"#;
        let error = exit_code_from_status(status).unwrap_err();
        assert!(error.contains("exec failed: no such file"), "{error}");
        let status = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[]}}"#;
        assert!(exit_code_from_status(status).is_err());
        assert!(exit_code_from_status(b"not json").is_err());
    }
}
