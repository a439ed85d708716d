//! `hull run`: one container in its own VM, without containerd, like
//! `runsc do`. Boots the sandbox, runs the command on a host directory as
//! its rootfs, streams stdio, exits with the container's status, and tears
//! everything down.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::agent_client::{rpc_code, rpc_message};
use crate::config::Config;
use crate::manager::{ContainerRequest, LifecycleError, Manager, StdioWiring, VmLauncher};
use crate::rootfs::RootfsMountSpec;
use crate::sandbox::{Milestone, Progress, SandboxPaths};
use crate::spec::{container_spec, ProcessOptions};

/// ProcessExit status for a failure of Hull itself (as `docker run` uses 125).
pub const EXIT_HULL_ERROR: i32 = 125;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub rootfs: PathBuf,
    pub process: ProcessOptions,
    pub verbose: bool,
}

/// A failure with the exit status `hull run` reports for it.
#[derive(Debug)]
pub struct RunError {
    pub status: i32,
    pub message: String,
}

impl RunError {
    fn hull(err: impl std::fmt::Display) -> Self {
        RunError {
            status: EXIT_HULL_ERROR,
            message: err.to_string(),
        }
    }

    /// A lifecycle error: a missing or non-executable command is the
    /// user's, with a shell's status; anything else is Hull's.
    fn lifecycle(err: LifecycleError) -> Self {
        let cause = match &err {
            LifecycleError::Creation(inner) => inner.as_ref(),
            other => other,
        };
        match cause {
            LifecycleError::Agent { source, .. } => RunError {
                status: match rpc_code(source) {
                    Some(ttrpc::Code::NOT_FOUND) => 127,
                    Some(ttrpc::Code::PERMISSION_DENIED) => 126,
                    _ => EXIT_HULL_ERROR,
                },
                message: rpc_message(source),
            },
            LifecycleError::Sandbox(err) => RunError::hull(err),
            other => RunError::hull(other),
        }
    }
}

pub async fn run(config: &Config, options: RunOptions) -> Result<i32, RunError> {
    let progress = Arc::new(Progress::new(options.verbose));
    run_with(config, options, &progress).await
}

/// `run`, reporting its steps to `progress` (which `hull bench` reads).
/// The container goes through the same lifecycle manager as containerd's.
pub async fn run_with(
    config: &Config,
    options: RunOptions,
    progress: &Arc<Progress>,
) -> Result<i32, RunError> {
    let rootfs = std::fs::canonicalize(&options.rootfs).map_err(|_| {
        RunError::hull(format!(
            "rootfs {} does not exist",
            options.rootfs.display()
        ))
    })?;
    if !rootfs.is_dir() {
        return Err(RunError::hull(format!(
            "rootfs {} is not a directory",
            rootfs.display()
        )));
    }
    let id = sandbox_id();
    // From here on SIGINT, SIGTERM and SIGHUP no longer kill `hull run`:
    // before the container starts they stop the boot and remove the
    // sandbox; after, they go to the container.
    let mut signals = Interrupts::catch();
    let (manager, _events) = Manager::new(Arc::new(VmLauncher), progress.clone());
    let request = ContainerRequest {
        id: id.clone(),
        bundle: String::new(),
        spec: container_spec(Path::new("rootfs"), &options.process),
        rootfs: vec![RootfsMountSpec::bind(&rootfs)],
        stdio: StdioWiring::Caller {
            terminal: options.process.terminal,
        },
        config: config.clone(),
    };
    // What can be refused without a VM is refused here.
    manager.create(request).await.map_err(RunError::lifecycle)?;
    let result = run_in(&manager, &id, &options, &mut signals, progress).await;
    let console_log = SandboxPaths::new(&config.state_dir, &id).console_log;
    // Keep the log for a failure of Hull itself; everything else goes.
    let saved = match &result {
        Err(err) if err.status == EXIT_HULL_ERROR => std::fs::read(&console_log).ok(),
        _ => None,
    };
    manager.destroy().await;
    if let Some(saved) = saved {
        let _ = std::fs::create_dir_all(console_log.parent().expect("log has a parent"));
        let _ = std::fs::write(&console_log, saved);
        eprintln!(
            "hull: the guest console log is kept at {}",
            console_log.display()
        );
    }
    progress.milestone(Milestone::SandboxRemoved, "sandbox removed");
    result
}

async fn run_in(
    manager: &Manager,
    id: &str,
    options: &RunOptions,
    signals: &mut Interrupts,
    progress: &Progress,
) -> Result<i32, RunError> {
    // Start waits for the VM and the container's creation in it.
    let started = tokio::select! {
        started = manager.start(id, "") => started,
        signal = signals.next() => return Err(RunError {
            status: 128 + signal,
            message: format!("interrupted by {} before the container started", signal_name(signal)),
        }),
    };
    started.map_err(RunError::lifecycle)?;
    progress.milestone(Milestone::ContainerStarted, "container started");
    let streams = manager
        .take_streams(id)
        .map_err(RunError::lifecycle)?
        .ok_or_else(|| RunError::hull("the container's streams were not kept"))?;
    let terminal = options.process.terminal;
    let _raw = if terminal && std::io::stdin().is_terminal() {
        Some(RawTerminal::enter().map_err(RunError::hull)?)
    } else {
        None
    };
    if terminal {
        resize(manager, id).await;
    }

    let stdout_pump = tokio::spawn(copy_out(streams.stdout, tokio::io::stdout()));
    let stderr_pump = streams
        .stderr
        .map(|s| tokio::spawn(copy_out(s, tokio::io::stderr())));
    // Stdin is read by a blocking thread that may never return; it is not
    // awaited, and the process exits without waiting for it.
    tokio::spawn(copy_in(tokio::io::stdin(), streams.stdin));

    let wait = manager.wait(id, "");
    let status = forward_signals_until(manager, id, terminal, signals, wait)
        .await
        .map_err(RunError::lifecycle)?
        .status;
    progress.milestone(
        Milestone::ContainerExited,
        &format!("container exited with status {status}"),
    );

    // The output of a finished container is complete once its streams end.
    let drain = Duration::from_secs(10);
    let _ = tokio::time::timeout(drain, stdout_pump).await;
    if let Some(pump) = stderr_pump {
        let _ = tokio::time::timeout(drain, pump).await;
    }
    Ok(status as i32)
}

/// SIGINT, SIGTERM and SIGHUP, caught from `catch` on.
struct Interrupts {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    /// The last one received.
    last: i32,
}

impl Interrupts {
    fn catch() -> Interrupts {
        Interrupts {
            interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            terminate: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            hangup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
            last: 0,
        }
    }

    /// The next of them to arrive.
    async fn next(&mut self) -> i32 {
        self.last = tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
        };
        self.last
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Awaits `wait` while passing SIGINT, SIGTERM and SIGHUP on to the
/// container (and, with a terminal, window size changes).
async fn forward_signals_until<F, T>(
    manager: &Manager,
    id: &str,
    terminal: bool,
    signals: &mut Interrupts,
    wait: F,
) -> T
where
    F: std::future::Future<Output = T>,
{
    let mut winch = signal(SignalKind::window_change()).expect("SIGWINCH handler");
    tokio::pin!(wait);
    loop {
        let forwarded = tokio::select! {
            result = &mut wait => return result,
            signal = signals.next() => signal,
            _ = winch.recv(), if terminal => {
                resize(manager, id).await;
                continue;
            }
        };
        let _ = manager.kill(id, "", forwarded as u32, false).await;
    }
}

async fn resize(manager: &Manager, id: &str) {
    let Some((rows, columns)) = terminal_size() else {
        return;
    };
    let _ = manager
        .resize_terminal(id, "", rows.into(), columns.into())
        .await;
}

fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
            if libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_row > 0 {
                return Some((size.ws_row, size.ws_col));
            }
        }
    }
    None
}

async fn copy_out<R, W>(mut from: R, mut to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.flush().await;
}

async fn copy_in<R, W>(mut from: R, mut to: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

/// Puts the host terminal in raw mode until dropped.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> nix::Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// `run-` and 12 random hex digits.
fn sandbox_id() -> String {
    let mut bytes = [0u8; 6];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut urandom, &mut bytes);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("run-{hex}")
}
