//! A warm shim: `hull pool-member`, started by the pool with its control
//! socket as standard input. It boots a VM ahead, says so, and waits for
//! one claim. Claimed, it becomes the sandbox's shim for containerd: it
//! binds the shim socket, serves the task API with its VM as the
//! sandbox's, and no longer dies with the pool. Unclaimed, it stops its VM
//! when the pool hangs up, when the pool dies (SIGTERM), or when the VM
//! ends on its own.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::shim_async::{create_task, Task};
use containerd_shim::protos::ttrpc::r#async::transport::Listener;
use containerd_shim::protos::ttrpc::r#async::Server;
use tokio::io::BufReader;
use tokio::net::unix::OwnedWriteHalf;
use tokio::signal::unix::{signal, SignalKind};

use super::{read_line, write_line, Answer, Claim, MemberReport, Served};
use crate::config::Config;
use crate::manager::AheadLauncher;
use crate::pod::VmSize;
use crate::sandbox::{Progress, SandboxVm};
use crate::task::TaskService;

/// How long a claimed shim may take to stop serving after Shutdown (as
/// the usual shim's).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("the control socket on standard input: {0}")]
    Control(#[source] std::io::Error),
    #[error("{0}")]
    Boot(#[from] crate::sandbox::SandboxError),
    #[error("serving the claim for {id}: {message}")]
    Serve { id: String, message: String },
}

/// Runs a warm shim to its end.
pub async fn run(config: Config, size: VmSize) -> Result<(), MemberError> {
    let control = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(MemberError::Control)?;
    let control = std::os::unix::net::UnixStream::from(control);
    control
        .set_nonblocking(true)
        .map_err(MemberError::Control)?;
    let control = tokio::net::UnixStream::from_std(control).map_err(MemberError::Control)?;
    let (read, mut write) = control.into_split();
    let mut read = BufReader::new(read);

    let mut terminate = signal(SignalKind::terminate()).map_err(MemberError::Control)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(MemberError::Control)?;
    let name = member_name();
    let progress = Progress::new(false);
    let stopped = async {
        tokio::select! {
            _ = terminate.recv() => "the pool stopped (SIGTERM)".to_owned(),
            _ = interrupt.recv() => "interrupted (SIGINT)".to_owned(),
        }
    };
    let vm = match SandboxVm::start_ahead(&config, &name, size, &progress, stopped).await {
        Ok(vm) => vm,
        Err(err) => {
            let report = MemberReport::Failed(err.to_string());
            let _ = write_line(&mut write, &report).await;
            return Err(err.into());
        }
    };
    let ready = MemberReport::Ready {
        name: name.clone(),
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
    };
    if let Err(err) = write_line(&mut write, &ready).await {
        vm.shutdown().await;
        return Err(MemberError::Control(err));
    }
    tracing::info!(vm = %name, "booted ahead; waiting for a claim");

    let mut vm_exit = vm.exit_watch();
    let claim = tokio::select! {
        line = read_line::<Claim>(&mut read) => match line {
            Ok(Some(claim)) => Some(claim),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(vm = %name, %err, "reading a claim");
                None
            }
        },
        _ = terminate.recv() => None,
        _ = interrupt.recv() => None,
        _ = vm_exit.wait_for(Option::is_some) => {
            tracing::warn!(vm = %name, "the VM booted ahead ended while it waited");
            None
        }
    };
    let Some(claim) = claim else {
        vm.shutdown().await;
        return Ok(());
    };
    if let Err(why) = claim.check() {
        let _ = write_line(&mut write, &Answer::Declined(why)).await;
        vm.shutdown().await;
        return Ok(());
    }
    serve(config, vm, claim, write).await
}

/// Becomes the shim of `claim`'s sandbox, and serves it to the end.
async fn serve(
    config: Config,
    vm: SandboxVm,
    claim: Claim,
    mut answer: OwnedWriteHalf,
) -> Result<(), MemberError> {
    let failed = |message: String| MemberError::Serve {
        id: claim.id.clone(),
        message,
    };
    let exit = Arc::new(ExitSignal::default());
    let launcher = Arc::new(AheadLauncher::new(config, vm));
    // Whether the socket is ours to remove if serving fails: a bind that
    // failed may have found another shim's.
    let bound = std::cell::Cell::new(false);
    let started = async {
        let listener = bind(&claim)?;
        bound.set(true);
        let listener =
            Listener::try_from(listener).map_err(|e| format!("serving on the shim socket: {e}"))?;
        let publisher = RemotePublisher::new(&claim.ttrpc_address)
            .await
            .map_err(|e| {
                format!(
                    "connecting to containerd's events at {}: {e}",
                    claim.ttrpc_address
                )
            })?;
        let service = TaskService::with_launcher(
            claim.namespace.clone(),
            publisher,
            exit.clone(),
            launcher.clone(),
            claim.hull_config.clone(),
        );
        let task: Arc<dyn Task + Send + Sync> = Arc::new(service);
        let mut server = Server::new()
            .add_listener(listener)
            .register_service(create_task(task));
        server
            .start()
            .await
            .map_err(|e| format!("starting the task server: {e}"))?;
        Ok::<_, String>(server)
    };
    let mut server = match started.await {
        Ok(server) => server,
        Err(why) => {
            if bound.get() {
                let _ = std::fs::remove_file(socket_path(&claim));
            }
            let _ = write_line(&mut answer, &Answer::Declined(why.clone())).await;
            launcher.stop_unused().await;
            return Err(failed(why));
        }
    };
    // From here on the shim is the sandbox's, not the pool's.
    if let Err(err) = nix::sys::prctl::set_pdeathsig(None) {
        tracing::warn!(%err, "clearing PDEATHSIG");
    }
    // A pool that does not hear this declines, and `start` spawns a shim,
    // which finds this one serving the socket and hands containerd its
    // address: serving on is right either way.
    let served = Served {
        address: claim.socket.clone(),
        pid: std::process::id(),
    };
    if let Err(err) = write_line(&mut answer, &Answer::Serving(served)).await {
        tracing::warn!(%err, "answering the pool");
    }
    drop(answer);
    tracing::info!(sandbox = %claim.id, socket = %claim.socket, "claimed: serving the sandbox");

    exit.wait().await;
    let socket = socket_path(&claim).to_owned();
    // As the usual shim: a ttrpc server that does not drain in time does
    // not keep containerd waiting.
    std::thread::spawn(move || {
        std::thread::sleep(SHUTDOWN_GRACE);
        tracing::warn!("ttrpc server did not shut down in time; exiting");
        let _ = std::fs::remove_file(&socket);
        std::process::exit(0);
    });
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(socket_path(&claim));
    Ok(())
}

fn socket_path(claim: &Claim) -> &Path {
    Path::new(claim.socket.trim_start_matches("unix://"))
}

/// Binds the shim socket in the bundle's stead, as `start` would have
/// had its new shim do, and writes the bundle's `address` file.
fn bind(claim: &Claim) -> Result<std::os::unix::net::UnixListener, String> {
    std::env::set_current_dir(&claim.bundle)
        .map_err(|e| format!("entering the bundle {}: {e}", claim.bundle.display()))?;
    let path = socket_path(claim);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("binding the shim socket {}: {e}", path.display()))?;
    if let Err(e) = std::fs::write("address", &claim.socket) {
        let _ = std::fs::remove_file(path);
        return Err(format!("writing the bundle's address file: {e}"));
    }
    Ok(listener)
}

/// A name for the VM's host parts no other sandbox or member has: the
/// pid is unique among the living, the clock tells apart a reused one.
fn member_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("pool-{}-{nanos:08x}", std::process::id())
}
