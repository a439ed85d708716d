//! Forwarded TCP connections (`kubectl port-forward`): each arrives on its
//! own connection with a [`ForwardHeader`], and the agent connects it to
//! that port on the guest's loopback address, where the pod's network is.

use std::time::Duration;

use hull_protocols::forward::{ForwardHeader, MAX_HEADER_LEN};
use hull_protocols::stdio;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::read_header_line;

/// How long the header and the connection to the pod's port may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects one forwarded connection and copies both ways until either
/// side ends.
pub async fn serve<S>(mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let setup = async {
        let header = read_header(&mut stream).await?;
        let target = header.target();
        TcpStream::connect(target)
            .await
            .map_err(|e| format!("connecting to {target}: {e}"))
    };
    let result = tokio::time::timeout(SETUP_TIMEOUT, setup)
        .await
        .unwrap_or_else(|_| Err(format!("no connection within {SETUP_TIMEOUT:?}")));
    let mut pod = match result {
        Ok(pod) => pod,
        Err(reason) => {
            tracing::debug!(%reason, "port-forward refused");
            let _ = stream.write_all(stdio::refusal(&reason).as_bytes()).await;
            return;
        }
    };
    if stream.write_all(stdio::ACCEPTED.as_bytes()).await.is_err() {
        return;
    }
    if let Err(err) = tokio::io::copy_bidirectional(&mut stream, &mut pod).await {
        tracing::debug!(%err, "port-forward ended with an error");
    }
}

async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ForwardHeader, String> {
    let line = read_header_line(stream, MAX_HEADER_LEN, "port-forward header").await?;
    ForwardHeader::parse(&line).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt};
    use tokio::net::TcpListener;

    async fn answer(stream: &mut tokio::io::DuplexStream) -> String {
        let mut line = Vec::new();
        loop {
            let byte = stream.read_u8().await.unwrap();
            line.push(byte);
            if byte == b'\n' {
                return String::from_utf8(line).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_connection_reaches_the_port_and_carries_bytes_both_ways() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let echo = tokio::spawn(async move {
            let (mut conn, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let (mut host, guest) = duplex(1024);
        let served = tokio::spawn(serve(guest));
        host.write_all(format!("HULL-FORWARD/1 tcp4 {port}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(answer(&mut host).await, "OK\n");
        host.write_all(b"hello").await.unwrap();
        let mut back = Vec::new();
        host.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"HELLO");
        echo.await.unwrap();
        drop(host);
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_or_a_bad_header_is_refused_with_the_reason() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (mut host, guest) = duplex(1024);
        tokio::spawn(serve(guest));
        host.write_all(format!("HULL-FORWARD/1 tcp4 {closed}\n").as_bytes())
            .await
            .unwrap();
        let refused = answer(&mut host).await;
        assert!(
            refused.starts_with("ERR connecting to 127.0.0.1:"),
            "{refused}"
        );
        assert!(refused.contains("refused"), "{refused}");

        let (mut host, guest) = duplex(1024);
        tokio::spawn(serve(guest));
        host.write_all(b"HULL-FORWARD/1 udp 53\n").await.unwrap();
        assert!(answer(&mut host)
            .await
            .starts_with("ERR invalid port-forward header"));
    }
}
