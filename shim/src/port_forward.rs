//! `kubectl port-forward` into a Hull pod. containerd serves it by dialing
//! `localhost:PORT` inside the pod's network namespace on the host, where
//! nothing of the pod listens: its processes are in the VM. The shim keeps
//! one listener per loopback address in that namespace and steers every
//! loopback port to it ([`crate::sys::sk_lookup`]); each connection is
//! carried to the agent's forward port on a vsock connection of its own,
//! and the agent connects it to the same port on the guest's loopback.
//!
//! Nothing runs while nobody forwards: two idle sockets, and a program the
//! kernel runs only when something in the namespace connects to loopback.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_protocols::forward::{Family, ForwardHeader};
use hull_protocols::stdio::parse_answer;
use hull_protocols::AGENT_FORWARD_PORT;
use nix::sched::{setns, CloneFlags};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::agent_client::{read_line, HybridVsock};
use crate::sys::sk_lookup::{steer_loopback, LoopbackSteering};

/// How long the agent may take to connect a forwarded connection.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("port-forward in {netns}: {what}: {source}")]
pub struct PortForwardError {
    netns: PathBuf,
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// The listeners of one pod; dropping it stops them and detaches the
/// steering program.
pub struct PortForwarder {
    accepting: Vec<JoinHandle<()>>,
    _steering: LoopbackSteering,
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        for task in &self.accepting {
            task.abort();
        }
    }
}

impl PortForwarder {
    /// Starts forwarding the loopback ports of `netns` to the guest behind
    /// `vsock`. Must be called inside a tokio runtime.
    pub fn start(netns: &Path, vsock: HybridVsock) -> Result<Self, PortForwardError> {
        let failed = |what| {
            let netns = netns.to_owned();
            move |source| PortForwardError {
                netns,
                what,
                source,
            }
        };
        let namespace = std::fs::File::open(netns).map_err(failed("opening"))?;
        // The listeners are made in the namespace, on a thread of their own
        // (setns moves only the calling thread).
        let (ipv4, ipv6) = std::thread::scope(|scope| {
            scope
                .spawn(|| -> std::io::Result<_> {
                    setns(&namespace, CloneFlags::CLONE_NEWNET)?;
                    let ipv4 = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                    // A namespace without IPv6 has no ::1; containerd 1.6
                    // dials IPv4 only.
                    let ipv6 = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).ok();
                    Ok((ipv4, ipv6))
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
        })
        .map_err(failed("listening on loopback"))?;
        let steering = steer_loopback(
            namespace.as_fd(),
            ipv4.as_fd(),
            ipv6.as_ref().map(|l| l.as_fd()),
        )
        .map_err(failed("steering loopback connections"))?;

        let mut accepting = Vec::new();
        for (listener, family) in [(Some(ipv4), Family::Tcp4), (ipv6, Family::Tcp6)] {
            let Some(listener) = listener else { continue };
            listener
                .set_nonblocking(true)
                .map_err(failed("listening on loopback"))?;
            let listener =
                TcpListener::from_std(listener).map_err(failed("listening on loopback"))?;
            accepting.push(tokio::spawn(accept(listener, family, vsock.clone())));
        }
        Ok(PortForwarder {
            accepting,
            _steering: steering,
        })
    }
}

async fn accept(listener: TcpListener, family: Family, vsock: HybridVsock) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(err) => {
                tracing::warn!(%err, "accepting a port-forward connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The port the client dialed; only loopback is steered here.
        match client.local_addr() {
            Ok(local) if local.ip().is_loopback() => {
                tokio::spawn(relay(client, local, family, vsock.clone()));
            }
            Ok(local) => tracing::warn!(%local, "port-forward: a connection not to loopback"),
            Err(err) => tracing::debug!(%err, "port-forward: a connection gone at once"),
        }
    }
}

/// Carries one connection to the guest, or resets it when the guest has
/// nothing on that port.
async fn relay(mut client: TcpStream, local: SocketAddr, family: Family, vsock: HybridVsock) {
    let header = ForwardHeader {
        family,
        port: local.port(),
    };
    let connected = async {
        let mut guest = vsock
            .connect(AGENT_FORWARD_PORT)
            .await
            .map_err(|e| e.to_string())?;
        guest
            .write_all(header.to_string().as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // The guest's answer: one bounded line, OK or ERR <reason>.
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, read_line(&mut guest))
            .await
            .map_err(|_| "the guest did not answer".to_string())?
            .map_err(|e| e.to_string())?;
        parse_answer(&answer)?;
        Ok::<_, String>(guest)
    };
    match connected.await {
        Ok(mut guest) => {
            if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut guest).await {
                tracing::debug!(port = header.port, %err, "port-forward ended with an error");
            }
        }
        Err(reason) => {
            tracing::debug!(port = header.port, %reason, "port-forward refused");
            // As close to "connection refused" as an accepted connection
            // gets: closed with a reset (a zero linger time never blocks).
            let reset = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ =
                nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &reset);
        }
    }
}
