//! `hull-vmm vsock`: the virtio-vsock device served to QEMU over vhost-user, in a process of
//! its own, confined like hull-vmm (docs/vmm.md, "hull-vmm vsock").
//!
//! In order: the two listening sockets are taken (checked, close-on-exec, the vhost-user
//! one blocking), every other inherited descriptor is closed, open files are bounded and core
//! dumps turned off, the jail is entered if asked for (the same [`Jail`] as hull-vmm's:
//! mount namespace and pivot into DIR, own network namespace, non-root uid and gid with the
//! parent-death signal kept), SIGTERM and SIGINT are blocked and taken through a signalfd,
//! the capabilities left are dropped and the vsock backend's seccomp filter installed; only
//! then does the backend start its threads, which inherit the filter. It serves one
//! frontend connection and exits 0 when QEMU disconnects or on SIGTERM/SIGINT, 1 when
//! serving fails, 2 for bad arguments or a jail it cannot enter.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use hull_vmm::config::JailConfig;
use hull_vmm::devices::virtio::vsock::{check_guest_cid, serve_vhost_user_on, VsockConfig};
use hull_vmm::jail::{process, Jail};
use hull_vmm::seccomp::{self, ThreadKind};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::exit;

/// Serve virtio-vsock to QEMU as a vhost-user backend, confined (docs/vmm.md, "hull-vmm vsock").
#[derive(clap::Args, Debug)]
pub struct VsockArgs {
    /// A Unix stream socket, bound and listening, on which QEMU (the vhost-user frontend)
    /// connects.
    #[arg(long, value_name = "N")]
    pub vhost_user_fd: RawFd,
    /// A Unix stream socket, bound and listening, for the host's hybrid vsock clients
    /// (`CONNECT <port>`).
    #[arg(long, value_name = "M")]
    pub hybrid_fd: RawFd,
    /// The hybrid socket's path relative to the jail directory (to the working directory
    /// without --jail): guest connections to host port P go to <NAME>_P.
    #[arg(long, value_name = "NAME")]
    pub uds: PathBuf,
    /// The guest's context id (3 or higher).
    #[arg(long, value_name = "CID")]
    pub guest_cid: u64,
    /// Pivot into DIR and run as --uid/--gid, in network namespace of its own.
    #[arg(long, value_name = "DIR", requires_all = ["uid", "gid"])]
    pub jail: Option<PathBuf>,
    /// The non-root user the jailed backend runs as.
    #[arg(long, value_name = "U", requires = "jail")]
    pub uid: Option<u32>,
    /// The non-root group the jailed backend runs as.
    #[arg(long, value_name = "G", requires = "jail")]
    pub gid: Option<u32>,
    /// Run without the seccomp filter (for debugging; capabilities are still dropped).
    #[arg(long)]
    pub no_seccomp: bool,
}

pub fn run(args: VsockArgs) -> ! {
    if let Err(err) = check_guest_cid(args.guest_cid) {
        exit(2, format!("--guest-cid {}: {err}", args.guest_cid));
    }
    if args.vhost_user_fd == args.hybrid_fd {
        exit(
            2,
            format!(
                "--vhost-user-fd and --hybrid-fd are both {}: pass two sockets",
                args.vhost_user_fd
            ),
        );
    }
    let jail = args.jail.as_ref().map(|root| {
        let config = JailConfig {
            root: root.clone(),
            uid: args.uid.expect("clap requires --uid with --jail"),
            gid: args.gid.expect("clap requires --gid with --jail"),
            cgroup: None,
        };
        if let Err(err) = config.validate() {
            exit(2, err);
        }
        if args.uds.is_absolute() {
            exit(
                2,
                format!(
                    "--uds {}: name the hybrid socket relative to the jail directory {}",
                    args.uds.display(),
                    root.display()
                ),
            );
        }
        Jail::new(&config).unwrap_or_else(|err| exit(2, err))
    });
    let vhost_user = take_listener("--vhost-user-fd", args.vhost_user_fd, true)
        .unwrap_or_else(|err| exit(2, err));
    let hybrid =
        take_listener("--hybrid-fd", args.hybrid_fd, false).unwrap_or_else(|err| exit(2, err));
    let kept = [vhost_user.as_raw_fd(), hybrid.as_raw_fd()];
    if let Err(err) = process::close_inherited_fds(&kept) {
        exit(2, err);
    }
    if let Err(err) = process::apply_confined_limits() {
        exit(2, err);
    }
    if let Some(jail) = &jail {
        if let Err(err) = jail.enter() {
            exit(2, err);
        }
    }
    let signals = termination_signals().unwrap_or_else(|err| exit(1, err));
    let filter = match args.no_seccomp {
        true => None,
        false => Some(seccomp::compile(ThreadKind::VsockBackend).unwrap_or_else(|e| exit(1, e))),
    };
    // Every thread the backend starts from here on inherits the filter.
    if let Err(err) = seccomp::try_confine_current_thread(ThreadKind::VsockBackend, filter.as_ref())
    {
        exit(1, err);
    }
    let config = VsockConfig {
        guest_cid: args.guest_cid,
        uds_path: args.uds,
    };
    let backend = serve_vhost_user_on(vhost_user, hybrid, config).unwrap_or_else(|e| exit(1, e));
    // SAFETY: the backend's end eventfd lives as long as `backend`, which outlives the poll.
    let finished = unsafe { BorrowedFd::borrow_raw(backend.finished_fd()) };
    let signal = loop {
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(finished, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => exit(1, format!("waiting for QEMU or a signal: {err}")),
        }
        if fds[1].any() == Some(true) {
            break None;
        }
        if fds[0].any() == Some(true) {
            break signals
                .read_signal()
                .ok()
                .flatten()
                .map(|info| info.ssi_signo);
        }
    };
    if let Some(signo) = signal {
        tracing::info!(signal = signo, "stopping the vsock backend");
    }
    match backend.stop() {
        Ok(()) => std::process::exit(0),
        Err(err) => exit(1, err),
    }
}

/// Blocks SIGTERM and SIGINT on the only thread (so every thread started later has them
/// blocked too) and returns a signalfd that reports them.
fn termination_signals() -> Result<SignalFd, String> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| format!("blocking SIGTERM and SIGINT: {e}"))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd for SIGTERM and SIGINT: {e}"))
}

/// Takes the inherited descriptor `fd`, which must be a listening Unix stream socket; it
/// gets close-on-exec, and with `blocking` loses O_NONBLOCK (the vhost-user daemon waits
/// for QEMU in a blocking accept).
fn take_listener(flag: &str, fd: RawFd, blocking: bool) -> Result<UnixListener, String> {
    if fd < 3 {
        return Err(format!(
            "{flag} {fd}: descriptors 0, 1 and 2 are standard input, output and error; pass the socket as 3 or above"
        ));
    }
    process::check_open(fd).map_err(|e| format!("{flag} {fd}: {e}"))?;
    let option = |name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes one int into `value`, whose size `len` gives; both
        // outlive the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                &mut value as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    let listening_unix_stream = option(libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        && option(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && option(libc::SO_ACCEPTCONN) == Some(1);
    if !listening_unix_stream {
        return Err(format!(
            "{flag} {fd}: not a listening Unix stream socket (bind and listen before passing it)"
        ));
    }
    // SAFETY: the descriptor is open, a listening socket, and handed over by the caller.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    // SAFETY: F_SETFD on a descriptor this function now owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if blocking {
        listener
            .set_nonblocking(false)
            .map_err(|e| format!("{flag} {fd}: {e}"))?;
    }
    Ok(listener)
}
