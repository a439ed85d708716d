//! `hull-agent runtime` calls without an exec each: a single-threaded
//! process, forked from the agent before its async runtime starts, forks a
//! child for each call, which runs [`crate::runtime::main`] as an exec'd
//! `hull-agent runtime` does. Should it die, `hull-agent runtime-forker`
//! is exec'd in its place.
//!
//! Under emulation an exec of the agent was a quarter of a container's
//! creation: forking the agent's address space, exec'ing its 8 MB and
//! starting it again took 80 ms of the 308 the guest spent creating a
//! container (timed with markers in the guest's kernel log, stop 23). A
//! fork of this small process that has already started costs a few.
//!
//! The agent sends each call as one message on a SEQPACKET socket (the
//! forker's stdin): the arguments, NUL-separated, and four descriptors, the
//! process's stdin, stdout and stderr and the sending end of a socket for
//! the answer. The child answers with one frame, `[0]` for success or `[1]`
//! and the error, length-prefixed: the container's processes, which the
//! child forks, hold that socket until they exec, so its end of file
//! cannot mark the answer's end.

use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::AsyncReadExt;

use crate::reaper::Reaper;
use crate::runtime::STDIO_FDS;

/// The subcommand the forker runs as.
pub const SUBCOMMAND: &str = "runtime-forker";
/// The longest call the forker takes (its arguments are ids and paths).
const MAX_CALL: usize = 64 * 1024;
/// Descriptors per call: stdin, stdout, stderr and the answer's socket.
const CALL_FDS: usize = 4;

/// The agent's end: the forker forked at the agent's start, or one exec'd
/// again if that one has died.
pub struct Forker {
    /// The socket the forker takes calls on.
    control: tokio::sync::Mutex<Option<OwnedFd>>,
}

impl Forker {
    /// Forks the forker from this process, which must have one thread
    /// still (the async runtime not yet started): it is ready at once, with
    /// no exec.
    pub fn fork_now() -> std::io::Result<Self> {
        let (control, forker_end) = control_pair()?;
        // SAFETY: the caller has one thread, so the child may do anything.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                drop(control);
                let code = match serve_on(forker_end.as_raw_fd()) {
                    Ok(()) => 0,
                    Err(err) => {
                        eprintln!("hull-agent runtime-forker: {err:#}");
                        1
                    }
                };
                // SAFETY: ends the forked forker without running the
                // agent's destructors in it.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { .. } => Ok(Forker {
                control: tokio::sync::Mutex::new(Some(control)),
            }),
        }
    }

    /// Runs `hull-agent runtime <args>` in a child of the forker with
    /// `stdio` as its fds 3, 4 and 5; the error is what the call failed
    /// with.
    pub async fn run(
        &self,
        reaper: &Reaper,
        args: &[String],
        stdio: [&OwnedFd; 3],
    ) -> std::io::Result<Result<(), String>> {
        let (answer, child_end) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let call = args.join("\0");
        if call.len() > MAX_CALL {
            return Err(std::io::Error::other("runtime call too long"));
        }
        let fds = [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
            child_end.as_raw_fd(),
        ];
        {
            let mut control = self.control.lock().await;
            let sent = match control.as_ref() {
                Some(fd) => send_call(fd.as_raw_fd(), call.as_bytes(), &fds),
                None => Err(std::io::ErrorKind::NotConnected.into()),
            };
            if let Err(err) = sent {
                // A forker that died (its socket refuses the call) is
                // replaced, and the call sent again once.
                tracing::warn!(%err, "the runtime forker is gone; starting another");
                *control = None;
                let fd = start(reaper)?;
                send_call(fd.as_raw_fd(), call.as_bytes(), &fds)?;
                *control = Some(fd);
            }
        }
        drop(child_end);
        let answer = UnixStream::from(answer);
        answer.set_nonblocking(true)?;
        let mut answer = tokio::net::UnixStream::from_std(answer)?;
        let mut head = [0u8; 5];
        answer.read_exact(&mut head).await.map_err(|e| {
            std::io::Error::new(e.kind(), "hull-agent runtime ended without an answer")
        })?;
        let len = u32::from_le_bytes(head[1..5].try_into().expect("four bytes")) as usize;
        let mut message = vec![0u8; len.min(MAX_CALL)];
        answer.read_exact(&mut message).await?;
        Ok(match head[0] {
            0 => Ok(()),
            _ => Err(String::from_utf8_lossy(&message).into_owned()),
        })
    }
}

/// Execs a new forker (`hull-agent runtime-forker`, its socket as stdin).
fn start(reaper: &Reaper) -> std::io::Result<OwnedFd> {
    let (control, forker_end) = control_pair()?;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg(SUBCOMMAND)
        .stdin(Stdio::from(forker_end))
        .stdout(Stdio::null());
    // Its exit is the reaper's to collect; nothing waits for it.
    reaper.spawn(|| command.spawn(), |child| child.id())?;
    Ok(control)
}

/// The socket the agent sends calls on, and the forker's end of it: one
/// call per message.
fn control_pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

fn send_call(control: RawFd, call: &[u8], fds: &[RawFd; CALL_FDS]) -> std::io::Result<()> {
    let iov = [IoSlice::new(call)];
    let rights = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(control, &iov, &rights, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// `hull-agent runtime-forker`: serves calls on stdin until the agent
/// closes it.
pub fn serve() -> anyhow::Result<()> {
    serve_on(libc::STDIN_FILENO)
}

/// The forker's side: serves calls on `control` until the agent closes it.
fn serve_on(control: RawFd) -> anyhow::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // The children are never waited for: the kernel reaps them.
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigIgn) }?;
    let mut data = vec![0u8; MAX_CALL];
    loop {
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut data)];
            let mut space = nix::cmsg_space!([RawFd; CALL_FDS]);
            let msg = recvmsg::<()>(
                control,
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: SCM_RIGHTS made these fds for us alone.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            (msg.bytes, fds)
        };
        if len == 0 && fds.is_empty() {
            // The agent is gone.
            return Ok(());
        }
        let Ok(fds) = <[OwnedFd; CALL_FDS]>::try_from(fds) else {
            // Not a call the agent makes; nobody to answer.
            continue;
        };
        let args: Vec<String> = String::from_utf8_lossy(&data[..len])
            .split('\0')
            .map(str::to_owned)
            .collect();
        // SAFETY: this process has one thread, so the child may do anything.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                if control > libc::STDERR_FILENO {
                    // The call's child and what it forks have no use for it.
                    // SAFETY: closes our own copy of the forker's socket.
                    unsafe { libc::close(control) };
                }
                call(args, fds)
            }
            nix::unistd::ForkResult::Parent { .. } => drop(fds),
        }
    }
}

/// A forked child: sets its descriptors up as the agent's exec of
/// `hull-agent runtime` had them, runs the call and answers.
fn call(args: Vec<String>, fds: [OwnedFd; CALL_FDS]) -> ! {
    let outcome = prepare(fds).map(|answer| (answer, run_call(&args)));
    let code = match outcome {
        Ok((mut answer, result)) => {
            let (status, message) = match &result {
                Ok(()) => (0u8, String::new()),
                Err(err) => (1u8, format!("{err:#}")),
            };
            let mut frame = vec![status];
            frame.extend_from_slice(&(message.len() as u32).to_le_bytes());
            frame.extend_from_slice(message.as_bytes());
            let _ = answer.write_all(&frame);
            i32::from(status)
        }
        Err(err) => {
            eprintln!("hull-agent runtime-forker: {err}");
            1
        }
    };
    // SAFETY: ends this forked child without running the forker's
    // destructors a second time.
    unsafe { libc::_exit(code) }
}

fn run_call(args: &[String]) -> anyhow::Result<()> {
    use clap::Parser;
    #[derive(Parser)]
    struct Call {
        #[command(flatten)]
        runtime: crate::runtime::RuntimeArgs,
    }
    let call =
        Call::try_parse_from(std::iter::once("runtime".to_owned()).chain(args.iter().cloned()))?;
    crate::runtime::main(call.runtime)
}

/// Puts the call's stdio at fds 3, 4 and 5 and /dev/null at 0 and 1 (0 is
/// the exec'd forker's socket), and returns the answer's socket.
fn prepare(fds: [OwnedFd; CALL_FDS]) -> std::io::Result<std::fs::File> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // libcontainer waits for the processes it forks.
    // SAFETY: restoring a signal's default disposition has no preconditions.
    unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) }?;
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        nix::unistd::dup2(null.as_raw_fd(), target)?;
    }
    drop(null);
    // Each fd moves above the targets first, so that no dup2 below
    // overwrites one that is still to be moved.
    let mut high = Vec::with_capacity(CALL_FDS);
    for fd in fds {
        // SAFETY: fcntl on an fd we own; F_DUPFD_CLOEXEC makes a new one.
        let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        if moved < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fcntl just made `moved`, which nothing else owns.
        high.push(unsafe { OwnedFd::from_raw_fd(moved) });
        drop(fd);
    }
    let answer = high.pop().expect("four fds");
    for (target, fd) in STDIO_FDS.iter().zip(high) {
        // Not close-on-exec: libcontainer takes 3, 4 and 5 as the stdio.
        nix::unistd::dup2(fd.as_raw_fd(), *target)?;
    }
    Ok(std::fs::File::from(answer))
}
