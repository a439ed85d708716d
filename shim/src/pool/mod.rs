//! A pool of sandbox VMs booted ahead of their pods (opt-in: `hull pool`).
//!
//! A VM's processes are its shim's children and die with it, so what the
//! pool keeps are *warm shims* ([`member`]): each boots a VM of the pool's
//! size under a name of its own (`pool-…`) and waits. When containerd runs
//! `containerd-shim-hull-v2 start` for a new sandbox, `start` asks the pool
//! ([`claim`]); the pool hands the request to a warm shim, which binds the
//! shim socket containerd expects and serves the task API, with its VM as
//! the sandbox's. The pool then boots a replacement ([`daemon`]).
//!
//! Everything between `start`, the pool and its shims is one JSON line each
//! way, over Unix sockets only root can reach.

pub mod daemon;
pub mod member;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where pools listen, one socket per containerd they serve.
pub const POOL_DIR: &str = "/run/hull/pools";
/// The longest line either side reads.
const MAX_LINE: usize = 64 << 10;
/// How long `start` waits for the pool's answer before booting as usual.
const CLAIM_DEADLINE: Duration = Duration::from_secs(20);

/// The pool's socket for the containerd at `containerd_address`.
pub fn socket_path(containerd_address: &str) -> PathBuf {
    let address = containerd_address.trim_start_matches("unix://");
    let hash = crate::ids::stable_hash(address.as_bytes());
    Path::new(POOL_DIR).join(format!("{hash:016x}.sock"))
}

/// What `start` asks of the pool: a VM for sandbox `id` (of the size its
/// bundle's spec asks for, which the pool reads), served at `socket` as
/// containerd's shim for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub id: String,
    pub namespace: String,
    /// containerd's gRPC address (`-address`).
    pub containerd_address: String,
    /// containerd's ttrpc address, where events are published.
    pub ttrpc_address: String,
    /// The sandbox container's bundle, the shim's working directory.
    pub bundle: PathBuf,
    /// The shim socket containerd will dial (`unix://…`).
    pub socket: String,
    /// HULL_CONFIG in containerd's environment, which a shim containerd
    /// starts would read.
    pub hull_config: Option<PathBuf>,
}

impl Claim {
    /// Refuses what no containerd would send.
    pub fn check(&self) -> Result<(), String> {
        crate::ids::validate("sandbox id", &self.id).map_err(|e| e.to_string())?;
        crate::ids::validate("namespace", &self.namespace).map_err(|e| e.to_string())?;
        if !self.bundle.is_absolute() {
            return Err(format!("bundle {} is not absolute", self.bundle.display()));
        }
        let socket = self.socket.trim_start_matches("unix://");
        if !Path::new(socket).is_absolute() {
            return Err(format!("shim socket {socket:?} is not an absolute path"));
        }
        Ok(())
    }
}

/// What a client of the pool's socket asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// A warm shim for a new sandbox (`start`).
    Claim(Claim),
    /// How many VMs are booted ahead and waiting, and how many the pool
    /// has handed to sandboxes.
    Status,
}

/// The pool's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// A warm shim serves the sandbox.
    Serving(Served),
    /// The pool has no VM for this claim; `start` boots one as usual.
    Declined(String),
    /// What the pool has: VMs booted ahead and waiting, and sandboxes it
    /// has served since it started.
    Status(PoolStatus),
}

/// Where a claimed shim serves, and its pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub address: String,
    pub pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub waiting: usize,
    pub served: u64,
}

/// What a warm shim tells the pool before any claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberReport {
    /// Booted, named so, of this size: ready for a claim.
    Ready {
        name: String,
        vcpus: u32,
        memory_mib: u32,
    },
    /// The boot failed.
    Failed(String),
}

/// Writes `value` as one JSON line.
pub async fn write_line<T: Serialize>(
    out: &mut (impl AsyncWrite + Unpin),
    value: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await
}

/// Reads one JSON line of at most [`MAX_LINE`] bytes; `None` at the end.
pub async fn read_line<T: for<'de> Deserialize<'de>>(
    input: &mut (impl AsyncBufRead + Unpin),
) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    let read = (&mut *input)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a line without its end, or longer than 64 KiB",
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Asks the pool serving `claim.containerd_address` for a warm shim.
/// `None` when there is no pool, it declines, or it does not answer in
/// time: then `start` launches a shim as usual.
pub async fn claim(claim: &Claim) -> Option<Served> {
    let path = socket_path(&claim.containerd_address);
    let request = Request::Claim(claim.clone());
    let asked = ask(&path, &request);
    match tokio::time::timeout(CLAIM_DEADLINE, asked).await {
        Ok(Ok(Some(Answer::Serving(served)))) => Some(served),
        Ok(Ok(Some(Answer::Declined(why)))) => {
            tracing::info!(sandbox = %claim.id, %why, "the pool has no VM for this sandbox");
            None
        }
        Ok(Ok(answer)) => {
            tracing::warn!(sandbox = %claim.id, ?answer, "the pool's answer is not one to a claim");
            None
        }
        // No pool runs for this containerd: the usual case.
        Ok(Err(err))
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            None
        }
        Ok(Err(err)) => {
            tracing::warn!(sandbox = %claim.id, pool = %path.display(), %err, "asking the pool");
            None
        }
        Err(_) => {
            tracing::warn!(sandbox = %claim.id, "the pool did not answer in time");
            None
        }
    }
}

/// What the pool serving `containerd_address` has.
pub async fn status(containerd_address: &str) -> std::io::Result<PoolStatus> {
    match ask(&socket_path(containerd_address), &Request::Status).await? {
        Some(Answer::Status(status)) => Ok(status),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the pool answered {other:?}"),
        )),
    }
}

/// One request to the pool at `path`, and its answer.
async fn ask(path: &Path, request: &Request) -> std::io::Result<Option<Answer>> {
    let stream = tokio::net::UnixStream::connect(path).await?;
    let (read, mut write) = stream.into_split();
    write_line(&mut write, request).await?;
    read_line::<Answer>(&mut tokio::io::BufReader::new(read)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_claim() -> Claim {
        Claim {
            id: "pod-1".into(),
            namespace: "k8s.io".into(),
            containerd_address: "/run/containerd/containerd.sock".into(),
            ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            bundle: "/run/containerd/io.containerd.runtime.v2.task/k8s.io/pod-1".into(),
            socket: "unix:///run/containerd/s/abc".into(),
            hull_config: None,
        }
    }

    #[test]
    fn each_containerd_has_a_pool_socket_of_its_own() {
        let default = socket_path("/run/containerd/containerd.sock");
        assert_eq!(
            default,
            socket_path("unix:///run/containerd/containerd.sock")
        );
        assert_ne!(default, socket_path("/tmp/test/containerd.sock"));
        assert!(default.starts_with(POOL_DIR));
    }

    #[test]
    fn claims_with_bad_ids_or_relative_paths_are_refused() {
        assert_eq!(a_claim().check(), Ok(()));
        let mut claim = a_claim();
        claim.id = "../pod".into();
        assert!(claim.check().unwrap_err().contains("sandbox id"));
        let mut claim = a_claim();
        claim.bundle = "bundle".into();
        assert!(claim.check().unwrap_err().contains("bundle"));
        let mut claim = a_claim();
        claim.socket = "unix://s/abc".into();
        assert!(claim.check().unwrap_err().contains("shim socket"));
    }

    #[tokio::test]
    async fn lines_round_trip_and_overlong_or_cut_lines_are_refused() {
        let mut buffer = Vec::new();
        write_line(&mut buffer, &Request::Claim(a_claim()))
            .await
            .unwrap();
        write_line(&mut buffer, &Answer::Declined("none ready".into()))
            .await
            .unwrap();
        let mut input = buffer.as_slice();
        assert_eq!(
            read_line::<Request>(&mut input).await.unwrap(),
            Some(Request::Claim(a_claim()))
        );
        assert_eq!(
            read_line::<Answer>(&mut input).await.unwrap(),
            Some(Answer::Declined("none ready".into()))
        );
        assert_eq!(read_line::<Answer>(&mut input).await.unwrap(), None);

        let cut = br#"{"serving":"unix:///x"}"#;
        assert!(read_line::<Answer>(&mut cut.as_slice()).await.is_err());
        let long = vec![b' '; MAX_LINE + 10];
        assert!(read_line::<Answer>(&mut long.as_slice()).await.is_err());
    }

    #[tokio::test]
    async fn without_a_pool_a_claim_is_declined_at_once() {
        let mut claim = a_claim();
        claim.containerd_address = format!("/nonexistent/{}/containerd.sock", std::process::id());
        assert_eq!(super::claim(&claim).await, None);
    }
}
