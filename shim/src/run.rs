//! `hull run`: one container in its own VM, without containerd, like
//! `runsc do`. Boots the sandbox, runs the command on a host directory as
//! its rootfs, streams stdio, exits with the container's status, and tears
//! everything down.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use hull_protocols::agent::{
    CreateContainerRequest, ResizeTerminalRequest, SignalProcessRequest, StartContainerRequest,
    Stdio, WaitProcessRequest,
};
use hull_protocols::stdio::{StreamHeader, StreamKind};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::agent_client::{context, rpc_code, rpc_message, AgentClient};
use crate::config::Config;
use crate::sandbox::{Milestone, Progress, SandboxVm};
use crate::spec::{container_spec, ProcessOptions};

/// The container's id inside the sandbox.
const CONTAINER_ID: &str = "run";

/// Exit status for a failure of Hull itself (as `docker run` uses 125).
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
}

pub async fn run(config: &Config, options: RunOptions) -> Result<i32, RunError> {
    let progress = Progress::new(options.verbose);
    run_with(config, options, &progress).await
}

/// `run`, reporting its steps to `progress` (which `hull bench` reads).
pub async fn run_with(
    config: &Config,
    options: RunOptions,
    progress: &Progress,
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
    let options_for_boot = crate::sandbox::SandboxOptions::from_config(config);
    let mut vm = SandboxVm::start_unless(config, &id, &options_for_boot, progress, async {
        format!("interrupted by {}", signal_name(signals.next().await))
    })
    .await
    .map_err(|err| match err {
        crate::sandbox::Error::Cancelled(why) => RunError {
            status: 128 + signals.last,
            message: why,
        },
        err => RunError::hull(err),
    })?;
    let result = run_in(&mut vm, &rootfs, &options, &mut signals, progress).await;
    if let Err(err) = &result {
        if err.status == EXIT_HULL_ERROR {
            eprintln!(
                "hull: the guest console log is kept at {}",
                vm.paths.console_log.display()
            );
            // Keep the log for a failure of Hull itself; everything else goes.
            let log = vm.paths.console_log.clone();
            let saved = std::fs::read(&log).ok();
            vm.shutdown().await;
            if let Some(saved) = saved {
                let _ = std::fs::create_dir_all(log.parent().expect("log has a parent"));
                let _ = std::fs::write(&log, saved);
            }
            progress.milestone(Milestone::SandboxRemoved, "sandbox removed");
            return result;
        }
    }
    vm.shutdown().await;
    progress.milestone(Milestone::SandboxRemoved, "sandbox removed");
    result
}

async fn run_in(
    vm: &mut SandboxVm,
    rootfs: &std::path::Path,
    options: &RunOptions,
    signals: &mut Interrupts,
    progress: &Progress,
) -> Result<i32, RunError> {
    let created = tokio::select! {
        created = create_and_attach(vm, rootfs, options, progress) => created?,
        signal = signals.next() => return Err(RunError {
            status: 128 + signal,
            message: format!("interrupted by {} before the container started", signal_name(signal)),
        }),
    };
    let Attached {
        stdout,
        stderr,
        stdin,
    } = created;
    let agent = vm.agent();
    let terminal = options.process.terminal;
    let _raw = if terminal && std::io::stdin().is_terminal() {
        Some(RawTerminal::enter().map_err(RunError::hull)?)
    } else {
        None
    };
    if terminal {
        resize(agent).await;
    }

    let stdout_pump = tokio::spawn(copy_out(stdout, tokio::io::stdout()));
    let stderr_pump = stderr.map(|s| tokio::spawn(copy_out(s, tokio::io::stderr())));
    // Stdin is read by a blocking thread that may never return; it is not
    // awaited, and the process exits without waiting for it.
    tokio::spawn(copy_in(tokio::io::stdin(), stdin));

    agent
        .api()
        .start_container(
            context(Duration::from_secs(60)),
            &StartContainerRequest {
                container_id: CONTAINER_ID.into(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| RunError::hull(format!("starting the container: {}", rpc_message(&e))))?;
    progress.milestone(Milestone::ContainerStarted, "container started");

    let wait_request = WaitProcessRequest {
        container_id: CONTAINER_ID.into(),
        ..Default::default()
    };
    let wait = agent
        .api()
        .wait_process(context(Duration::ZERO), &wait_request);
    let status = forward_signals_until(agent, terminal, signals, wait)
        .await
        .map_err(|e| RunError::hull(format!("waiting for the container: {}", rpc_message(&e))))?
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
    Ok(status)
}

/// The created container's stdio streams.
struct Attached {
    stdout: tokio::net::UnixStream,
    stderr: Option<tokio::net::UnixStream>,
    stdin: tokio::net::UnixStream,
}

/// Shares the rootfs, creates the container and attaches its streams.
async fn create_and_attach(
    vm: &mut SandboxVm,
    rootfs: &std::path::Path,
    options: &RunOptions,
    progress: &Progress,
) -> Result<Attached, RunError> {
    let guest_rootfs = vm
        .share_rootfs(CONTAINER_ID, rootfs)
        .map_err(RunError::hull)?;
    let terminal = options.process.terminal;
    let spec = container_spec(&guest_rootfs, &options.process);
    let agent = vm.agent();
    let create = CreateContainerRequest {
        container_id: CONTAINER_ID.into(),
        oci_spec: serde_json::to_vec(&spec).expect("spec serializes"),
        stdio: Some(Stdio {
            terminal,
            stdin: true,
            stdout: true,
            stderr: !terminal,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    if let Err(err) = agent
        .api()
        .create_container(context(Duration::from_secs(60)), &create)
        .await
    {
        // A missing or non-executable command is the user's, with a shell's
        // status; anything else is Hull's.
        let status = match rpc_code(&err) {
            Some(ttrpc::Code::NOT_FOUND) => 127,
            Some(ttrpc::Code::PERMISSION_DENIED) => 126,
            _ => EXIT_HULL_ERROR,
        };
        return Err(RunError {
            status,
            message: rpc_message(&err),
        });
    }
    progress.step("container created");

    let stream = |kind| StreamHeader {
        kind,
        container_id: CONTAINER_ID.into(),
        exec_id: String::new(),
    };
    let stdout = agent
        .open_stream(&stream(StreamKind::Stdout))
        .await
        .map_err(RunError::hull)?;
    let stderr = if terminal {
        None
    } else {
        Some(
            agent
                .open_stream(&stream(StreamKind::Stderr))
                .await
                .map_err(RunError::hull)?,
        )
    };
    let stdin = agent
        .open_stream(&stream(StreamKind::Stdin))
        .await
        .map_err(RunError::hull)?;
    Ok(Attached {
        stdout,
        stderr,
        stdin,
    })
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
    agent: &AgentClient,
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
                resize(agent).await;
                continue;
            }
        };
        let request = SignalProcessRequest {
            container_id: CONTAINER_ID.into(),
            signal: forwarded as u32,
            ..Default::default()
        };
        let _ = agent
            .api()
            .signal_process(context(Duration::from_secs(10)), &request)
            .await;
    }
}

async fn resize(agent: &AgentClient) {
    let Some((rows, columns)) = terminal_size() else {
        return;
    };
    let request = ResizeTerminalRequest {
        container_id: CONTAINER_ID.into(),
        rows: rows.into(),
        columns: columns.into(),
        ..Default::default()
    };
    let _ = agent
        .api()
        .resize_terminal(context(Duration::from_secs(10)), &request)
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
