//! `hull pool`: keeps a number of warm shims ([`super::member`]) booted,
//! hands each claim `start` sends to one that is ready, and boots a
//! replacement for every one claimed or lost. Stopped (SIGTERM, SIGINT),
//! it stops every unclaimed member, whose VMs are torn down; claimed ones
//! serve on as their sandboxes' shims.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::{read_line, write_line, Answer, Claim, MemberReport, PoolStatus, Request};
use crate::config::Config;
use crate::pod::VmSize;

/// How long a member may take from its start to its report (a boot under
/// emulation beside others is slow, but bounded by the agent's deadline).
const BOOT_DEADLINE: Duration = Duration::from_secs(600);
/// How long a claimed member may take to serve.
const SERVE_DEADLINE: Duration = Duration::from_secs(15);
/// How long a claim may take to arrive once `start` connects.
const CLAIM_READ_DEADLINE: Duration = Duration::from_secs(5);
/// How long an unclaimed member has to stop its VM when the pool stops.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// The wait before booting again after a member failed to boot.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// VMs lost in a row (failed to boot, or ended while they waited) before
/// the pool gives up: a failed boot keeps its guest console log, and a
/// pool that cannot keep a VM serves nobody.
const MAX_FAILED_BOOTS: u32 = 3;

pub struct PoolOptions {
    /// How many VMs to keep booted ahead.
    pub count: usize,
    pub size: VmSize,
    /// Hull's configuration: sandboxes' sizes are computed with it.
    pub config: Config,
    /// The containerd whose `start` calls this pool serves.
    pub containerd_address: String,
    /// Hull's configuration file, for the members (`--config`).
    pub config_path: Option<PathBuf>,
    /// Members log their progress too (`--verbose`).
    pub verbose: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("listening on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another pool already serves {address} at {path}")]
    Taken { address: String, path: PathBuf },
    #[error("{MAX_FAILED_BOOTS} VMs booted ahead were lost in a row; the last: {0}")]
    Boots(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A claim on its way to a member, with where its answer goes.
type Handoff = (Claim, oneshot::Sender<Answer>);

/// What members tell the pool's loop.
enum Event {
    Ready {
        member: u64,
        name: String,
        size: VmSize,
    },
    /// Handed to a sandbox (served or not): no longer the pool's.
    Claimed,
    /// Failed to boot, or ended before a claim.
    Lost { member: u64, why: String },
}

struct ReadyMember {
    id: u64,
    name: String,
    size: VmSize,
    claims: mpsc::Sender<Handoff>,
}

/// Serves the pool until SIGTERM or SIGINT.
pub async fn serve(options: PoolOptions) -> Result<(), PoolError> {
    let path = super::socket_path(&options.containerd_address);
    let listener = listen(&path, &options.containerd_address).await?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);
    let mut members = JoinSet::new();
    let mut booting: Vec<(u64, mpsc::Sender<Handoff>)> = Vec::new();
    let mut ready: VecDeque<ReadyMember> = VecDeque::new();
    let mut next_id = 0_u64;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut failed_boots = 0;
    let mut served = 0_u64;
    let mut result = Ok(());
    tracing::info!(
        socket = %path.display(),
        count = options.count,
        vcpus = options.size.vcpus,
        memory_mib = options.size.memory_mib,
        "pool serving"
    );
    loop {
        let may_boot = retry_at.is_none_or(|at| tokio::time::Instant::now() >= at);
        while may_boot && ready.len() + booting.len() < options.count {
            next_id += 1;
            let (claims_tx, claims_rx) = mpsc::channel(1);
            match spawn_member(&options) {
                Ok((child, control)) => {
                    booting.push((next_id, claims_tx));
                    members.spawn(member(
                        next_id,
                        child,
                        control,
                        claims_rx,
                        events_tx.clone(),
                        stop.clone(),
                    ));
                }
                Err(err) => {
                    tracing::error!(%err, "starting a pool member");
                    retry_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
                    break;
                }
            }
        }
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.recv() => match event.expect("the loop holds a sender") {
                Event::Ready { member, name, size } => {
                    if let Some(at) = booting.iter().position(|(id, _)| *id == member) {
                        let (id, claims) = booting.remove(at);
                        tracing::info!(vm = %name, "a VM is booted ahead");
                        ready.push_back(ReadyMember { id, name, size, claims });
                    }
                }
                Event::Claimed => failed_boots = 0,
                Event::Lost { member, why } => {
                    tracing::warn!(member, %why, "a VM booted ahead is lost");
                    booting.retain(|(id, _)| *id != member);
                    ready.retain(|m| m.id != member);
                    failed_boots += 1;
                    if failed_boots >= MAX_FAILED_BOOTS {
                        result = Err(PoolError::Boots(why));
                        break;
                    }
                    retry_at = Some(tokio::time::Instant::now() + RETRY_AFTER);
                }
            },
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    hand_out(stream, &mut ready, &mut served, &options.config).await
                }
                Err(err) => tracing::warn!(%err, "accepting a claim"),
            },
            () = retry => retry_at = None,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("pool stopping: stopping the VMs booted ahead");
    drop(listener);
    let _ = std::fs::remove_file(&path);
    let _ = stop_tx.send(true);
    drop(ready);
    drop(booting);
    while members.join_next().await.is_some() {}
    result
}

/// Binds the pool's socket, only root's; a stale one (no pool answers)
/// is replaced, a live one is another pool's.
async fn listen(path: &Path, address: &str) -> Result<UnixListener, PoolError> {
    let failed = |source| PoolError::Listen {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().expect("the pool socket is in POOL_DIR");
    std::fs::create_dir_all(dir).map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    if UnixStream::connect(path).await.is_ok() {
        return Err(PoolError::Taken {
            address: address.to_owned(),
            path: path.to_owned(),
        });
    }
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(failed(err)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    Ok(listener)
}

/// Reads one request and answers it: a claim from `start` is served by
/// the first ready member of the size it asks for, or declined; a status
/// request gets the pool's counts.
async fn hand_out(
    stream: UnixStream,
    ready: &mut VecDeque<ReadyMember>,
    served: &mut u64,
    config: &Config,
) {
    let (read, mut write) = stream.into_split();
    let request = tokio::time::timeout(
        CLAIM_READ_DEADLINE,
        read_line::<Request>(&mut BufReader::new(read)),
    )
    .await;
    let claim = match request {
        Ok(Ok(Some(Request::Claim(claim)))) => claim,
        Ok(Ok(Some(Request::Status))) => {
            let status = PoolStatus {
                waiting: ready.len(),
                served: *served,
            };
            let _ = write_line(&mut write, &Answer::Status(status)).await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(err)) => {
            tracing::warn!(%err, "an unreadable request");
            let _ = write_line(
                &mut write,
                &Answer::Declined(format!("unreadable request: {err}")),
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let size = claim
        .check()
        .and_then(|()| sandbox_size(&claim.bundle, config));
    let answer = match size {
        Err(why) => Answer::Declined(why),
        Ok(size) => match ready.iter().position(|m| m.size == size) {
            None if ready.is_empty() => Answer::Declined("no VM is booted ahead yet".into()),
            None => Answer::Declined(format!(
                "the pool's VMs have {} vCPUs and {} MiB, the sandbox asks for {} and {}",
                ready[0].size.vcpus, ready[0].size.memory_mib, size.vcpus, size.memory_mib
            )),
            Some(at) => {
                let member = ready.remove(at).expect("found above");
                tracing::info!(vm = %member.name, sandbox = %claim.id, "handing out a VM booted ahead");
                let (answer_tx, answer_rx) = oneshot::channel();
                match member.claims.send((claim, answer_tx)).await {
                    Ok(()) => answer_rx
                        .await
                        .unwrap_or_else(|_| Answer::Declined("the member ended".into())),
                    Err(_) => Answer::Declined("the member ended".into()),
                }
            }
        },
    };
    match &answer {
        Answer::Declined(why) => tracing::info!(%why, "a claim declined"),
        Answer::Serving(_) => *served += 1,
        Answer::Status(_) => {}
    }
    if let Err(err) = write_line(&mut write, &answer).await {
        tracing::warn!(%err, "answering a claim");
    }
}

/// The VM size the sandbox's spec asks for, as its shim will compute it.
fn sandbox_size(bundle: &Path, config: &Config) -> Result<VmSize, String> {
    let spec = crate::spec::read_bundle_spec(&bundle.join("config.json"))?;
    crate::pod::vm_size(&spec, config).map_err(|e| e.to_string())
}

/// Starts `hull pool-member`, its control socket as standard input, in a
/// session of its own, told SIGTERM if the pool dies.
fn spawn_member(options: &PoolOptions) -> std::io::Result<(Child, UnixStream)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let mut command = Command::new(std::env::current_exe()?);
    if let Some(config) = &options.config_path {
        command.arg("--config").arg(config);
    }
    if options.verbose {
        command.arg("--verbose");
    }
    command
        .arg("pool-member")
        .arg("--vcpus")
        .arg(options.size.vcpus.to_string())
        .arg("--memory-mib")
        .arg(options.size.memory_mib.to_string())
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: setsid and prctl are async-signal-safe and touch only the child.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    Ok((child, UnixStream::from_std(ours)?))
}

/// Follows one member from its start to its end: relays its report, hands
/// it at most one claim, and reaps it.
async fn member(
    id: u64,
    mut child: Child,
    control: UnixStream,
    mut claims: mpsc::Receiver<Handoff>,
    events: mpsc::UnboundedSender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let (read, mut write) = control.into_split();
    let mut read = BufReader::new(read);
    let lost = |why: String| Event::Lost { member: id, why };
    let report = tokio::select! {
        report = tokio::time::timeout(BOOT_DEADLINE, read_line::<MemberReport>(&mut read)) => report,
        () = stopped(&mut stop) => {
            stop_member(&mut child, None).await;
            return;
        }
    };
    match report {
        Ok(Ok(Some(MemberReport::Ready {
            name,
            vcpus,
            memory_mib,
        }))) => {
            let size = VmSize { vcpus, memory_mib };
            let _ = events.send(Event::Ready {
                member: id,
                name,
                size,
            });
        }
        other => {
            let why = match other {
                Ok(Ok(Some(MemberReport::Failed(why)))) => format!("its boot failed: {why}"),
                Ok(Ok(None)) => "it ended before it booted".into(),
                Ok(Err(err)) => format!("its report: {err}"),
                Err(_) => format!("no boot in {BOOT_DEADLINE:?}"),
                Ok(Ok(Some(MemberReport::Ready { .. }))) => unreachable!("matched above"),
            };
            let _ = events.send(lost(why));
            stop_member(&mut child, Some(write)).await;
            return;
        }
    }
    let mut gone = [0u8; 1];
    tokio::select! {
        handoff = claims.recv() => {
            let Some((claim, answer_tx)) = handoff else {
                stop_member(&mut child, Some(write)).await;
                return;
            };
            let answered = tokio::time::timeout(SERVE_DEADLINE, async {
                write_line(&mut write, &claim).await?;
                read_line::<Answer>(&mut read).await
            })
            .await;
            let answer = match answered {
                Ok(Ok(Some(answer))) => answer,
                Ok(Ok(None)) => Answer::Declined("the member ended without an answer".into()),
                Ok(Err(err)) => Answer::Declined(format!("the member's answer: {err}")),
                Err(_) => Answer::Declined(format!("the member did not serve in {SERVE_DEADLINE:?}")),
            };
            let serving = matches!(answer, Answer::Serving(_));
            let _ = answer_tx.send(answer);
            let _ = events.send(Event::Claimed);
            if serving {
                // The sandbox's shim now, which the pool's end must not
                // wait for: reaped whenever it ends while the pool runs,
                // by init after.
                drop((read, write));
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            } else {
                stop_member(&mut child, Some(write)).await;
            }
        }
        // The member writes nothing more before a claim: readable means
        // it ended.
        _ = tokio::io::AsyncReadExt::read(&mut read, &mut gone) => {
            let status = child.wait().await;
            let _ = events.send(lost(format!("it ended before a claim ({status:?})")));
        }
        () = stopped(&mut stop) => stop_member(&mut child, Some(write)).await,
    }
}

/// Ends when the pool stops.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Stops an unclaimed member: hanging up tells it to stop its VM (SIGTERM
/// while it boots), and after [`STOP_DEADLINE`] it is killed.
async fn stop_member(child: &mut Child, control: Option<tokio::net::unix::OwnedWriteHalf>) {
    match control {
        Some(control) => drop(control),
        None => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
    if tokio::time::timeout(STOP_DEADLINE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(pid = ?child.id(), "a pool member did not stop its VM in time; killing it");
        let _ = child.kill().await;
    }
}
