//! Port-forward as `kubectl port-forward` drives it: CRI `PortForward`
//! answers with a URL on containerd's streaming server, which takes a
//! WebSocket (`v4.channel.k8s.io`) as well as SPDY. Each forwarded port has
//! two channels, data and error; every binary message starts with its
//! channel byte, and the server first sends the port (two bytes,
//! little-endian) on both. containerd dials `localhost:PORT` in the pod's
//! network namespace and copies until either side ends, then closes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use k8s_cri::v1 as api;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::client::CriClient;
use super::exec_stream::PROTOCOL;

const DATA: u8 = 0;
const ERROR: u8 = 1;

/// What came back through one forwarded connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// The bytes on the data channel, the port's prefix taken off.
    pub data: Vec<u8>,
    /// The error channel's text, the port's prefix taken off.
    pub error: String,
}

/// Forwards `port` of pod `pod_id`, sends `request` and reads until the
/// server closes the stream (`timeout` for all of it).
pub fn exchange(
    client: &CriClient,
    pod_id: &str,
    port: u16,
    request: &[u8],
    timeout: Duration,
) -> Result<Forwarded, String> {
    let url = client
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: pod_id.to_string(),
            port: vec![i32::from(port)],
        })
        .map_err(|e| e.to_string())?;
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut ws_request = ws_url.into_client_request().map_err(|e| e.to_string())?;
    ws_request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    client.block_on(async {
        tokio::time::timeout(timeout, async {
            let (mut socket, _) = tokio_tungstenite::connect_async(ws_request)
                .await
                .map_err(|e| format!("websocket to {url}: {e}"))?;
            let mut frame = vec![DATA];
            frame.extend_from_slice(request);
            socket
                .send(Message::Binary(frame.into()))
                .await
                .map_err(|e| format!("sending: {e}"))?;
            let mut data = Vec::new();
            let mut error = Vec::new();
            while let Some(message) = socket.next().await {
                match message {
                    Ok(Message::Binary(bytes)) => match bytes.split_first() {
                        Some((&DATA, rest)) => data.extend_from_slice(rest),
                        Some((&ERROR, rest)) => error.extend_from_slice(rest),
                        _ => {}
                    },
                    Ok(Message::Close(_)) => break,
                    Ok(_) => {}
                    // The server may drop the socket without a close frame.
                    Err(_) => break,
                }
            }
            let port_prefix = port.to_le_bytes();
            let strip = |mut bytes: Vec<u8>, what: &str| -> Result<Vec<u8>, String> {
                if !bytes.starts_with(&port_prefix) {
                    return Err(format!(
                        "the {what} channel did not start with the port: {bytes:?}"
                    ));
                }
                bytes.drain(..2);
                Ok(bytes)
            };
            Ok(Forwarded {
                data: strip(data, "data")?,
                error: String::from_utf8_lossy(&strip(error, "error")?).into_owned(),
            })
        })
        .await
        .map_err(|_| format!("port-forward of {port} did not end within {timeout:?}"))?
    })
}
