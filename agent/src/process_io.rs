//! The stdio of one container process, and the copying between it and the
//! host's stdio streams.
//!
//! Without a terminal each requested stream is a pipe whose far end the
//! process gets; with a terminal the process gets the pty's slave side and
//! the agent keeps the master, which carries stdin and the merged output.
//! Streams are not read until the host attaches them, so output waits in the
//! pipe (and the process blocks) rather than being lost.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{ready, Context, Poll};

use hull_protocols::agent::Stdio;
use hull_protocols::stdio::StreamKind;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The process's side of its stdio, handed to the runtime child as fds 0-2.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0} of this process is not connected (it was not requested)")]
    NotRequested(StreamKind),
    #[error("{0} of this process is already attached")]
    AlreadyAttached(StreamKind),
    #[error("stderr is merged into stdout for a process with a terminal")]
    TerminalHasNoStderr,
    #[error("the terminal of this process is not ready yet")]
    TerminalNotReady,
    #[error("duplicating the terminal: {0}")]
    Dup(#[source] io::Error),
}

/// The agent's side of a process's stdio.
pub struct ProcessIo {
    /// Set for processes with a terminal once the pty master has arrived.
    terminal: OnceLock<OwnedFd>,
    wants_terminal: bool,
    stdin: Mutex<Option<OwnedFd>>,
    stdout: Mutex<Option<OwnedFd>>,
    stderr: Mutex<Option<OwnedFd>>,
    /// Streams already attached (for the terminal, where the master stays).
    attached: Mutex<Vec<StreamKind>>,
}

impl ProcessIo {
    /// Makes the pipes a process without a terminal needs; streams not
    /// requested go to /dev/null. For a terminal, the child gets /dev/null
    /// (libcontainer replaces it with the pty slave) and the master comes
    /// later through [`ProcessIo::set_terminal`].
    pub fn new(request: &Stdio) -> io::Result<(ProcessIo, ChildStdio)> {
        let null = || -> io::Result<OwnedFd> {
            Ok(std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?
                .into())
        };
        let terminal = request.terminal;
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from);
        let (stdin, child_stdin) = if request.stdin && !terminal {
            let (read, write) = pipe()?;
            (Some(write), read)
        } else {
            (None, null()?)
        };
        let (stdout, child_stdout) = if request.stdout && !terminal {
            let (read, write) = pipe()?;
            (Some(read), write)
        } else {
            (None, null()?)
        };
        let (stderr, child_stderr) = if request.stderr && !terminal {
            let (read, write) = pipe()?;
            (Some(read), write)
        } else {
            (None, null()?)
        };
        Ok((
            ProcessIo {
                terminal: OnceLock::new(),
                wants_terminal: terminal,
                stdin: Mutex::new(stdin),
                stdout: Mutex::new(stdout),
                stderr: Mutex::new(stderr),
                attached: Mutex::new(Vec::new()),
            },
            ChildStdio {
                stdin: child_stdin,
                stdout: child_stdout,
                stderr: child_stderr,
            },
        ))
    }

    pub fn set_terminal(&self, master: OwnedFd) {
        let _ = self.terminal.set(master);
    }

    /// Takes the fd that carries `kind` for the host. Each stream can be
    /// attached once.
    pub fn attach(&self, kind: StreamKind) -> Result<FdStream, AttachError> {
        let mut attached = self.attached.lock().expect("io lock");
        if attached.contains(&kind) {
            return Err(AttachError::AlreadyAttached(kind));
        }
        let fd = if self.wants_terminal {
            if kind == StreamKind::Stderr {
                return Err(AttachError::TerminalHasNoStderr);
            }
            let master = self.terminal.get().ok_or(AttachError::TerminalNotReady)?;
            master.try_clone().map_err(AttachError::Dup)?
        } else {
            let slot = match kind {
                StreamKind::Stdin => &self.stdin,
                StreamKind::Stdout => &self.stdout,
                StreamKind::Stderr => &self.stderr,
            };
            slot.lock()
                .expect("io lock")
                .take()
                .ok_or(AttachError::NotRequested(kind))?
        };
        attached.push(kind);
        FdStream::new(fd).map_err(AttachError::Dup)
    }

    pub fn resize(&self, rows: u16, columns: u16) -> io::Result<()> {
        let master = self.terminal.get().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the process has no terminal")
        })?;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid
        // for the duration of the call.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Copies a process's output to the host stream, then half-closes it.
///
/// Output from a pipe is spliced into the socket: the kernel moves it from
/// the pipe into the socket's packets, one copy, as a pipe between two
/// processes in the guest costs, where reading it into the agent and
/// writing it out again cost two (docs/benchmarks.md, the stdout row). A
/// terminal's output, which splice cannot take, goes through a buffer.
pub async fn pump_output<W>(from: FdStream, mut to: W) -> io::Result<u64>
where
    W: AsyncWrite + AsFd + Unpin,
{
    let copied = if from.is_pipe()? {
        let pipe = from.into_fd();
        let socket = to.as_fd().try_clone_to_owned()?;
        tokio::task::spawn_blocking(move || splice_all(&pipe, &socket))
            .await
            .map_err(io::Error::other)??
    } else {
        let mut from = tokio::io::BufReader::with_capacity(OUTPUT_BUFFER, from);
        tokio::io::copy_buf(&mut from, &mut to).await?
    };
    to.shutdown().await?;
    Ok(copied)
}

/// What one read takes from a terminal, or one splice moves: a pipe's
/// default capacity is 64 KiB, so a buffer of that size empties it.
const OUTPUT_BUFFER: usize = 64 << 10;

/// Splices everything `pipe` carries until its writers are gone into
/// `socket`, on a thread of its own: both fds are non-blocking (tokio's
/// socket, and the pipe as `FdStream` left it), so it waits for each in
/// poll(2) rather than spinning on EAGAIN. It ends too when the host hangs
/// up, even while the pipe stays quiet (a daemon the process left behind
/// holding its stdout), so no thread waits on a stream nobody reads.
fn splice_all(pipe: &OwnedFd, socket: &OwnedFd) -> io::Result<u64> {
    use nix::errno::Errno;
    use nix::fcntl::{splice, SpliceFFlags};
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let wait = |fds: &mut [PollFd]| loop {
        match poll(fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            result => return result.map(drop),
        }
    };
    let hung_up = PollFlags::POLLHUP | PollFlags::POLLERR;
    let mut copied = 0u64;
    loop {
        // Until the pipe has data or has no writer left, or the host hung
        // up (reported whatever is asked for); then until the socket has
        // room or has failed: the splice then reports which.
        let mut fds = [
            PollFd::new(pipe.as_fd(), PollFlags::POLLIN),
            PollFd::new(socket.as_fd(), PollFlags::empty()),
        ];
        wait(&mut fds)?;
        if fds[1]
            .revents()
            .is_some_and(|events| events.intersects(hung_up))
        {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the host closed the stream",
            ));
        }
        wait(&mut [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)])?;
        match splice(
            pipe,
            None,
            socket,
            None,
            OUTPUT_BUFFER,
            SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Ok(0) => return Ok(copied),
            Ok(n) => copied += n as u64,
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// Copies the host stream into a process's stdin; the end of the stream
/// closes stdin (a terminal stays open: its end of input is the user's ^D).
pub async fn pump_input<R>(mut from: R, mut to: FdStream) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
{
    let copied = tokio::io::copy(&mut from, &mut to).await?;
    to.flush().await?;
    Ok(copied)
}

/// A non-blocking pipe or pty fd as an async stream.
pub struct FdStream {
    fd: AsyncFd<OwnedFd>,
}

impl FdStream {
    fn is_pipe(&self) -> io::Result<bool> {
        let stat = nix::sys::stat::fstat(self.fd.get_ref().as_raw_fd())?;
        Ok(stat.st_mode & libc::S_IFMT == libc::S_IFIFO)
    }

    /// The fd, no longer registered with tokio (and still non-blocking).
    fn into_fd(self) -> OwnedFd {
        self.fd.into_inner()
    }

    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
        // SAFETY: an OwnedFd stays open, and is the same fd, until the
        // AsyncFd that owns it is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(FdStream { fd })
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result = guard.try_io(|fd| {
                // SAFETY: the buffer is valid for writes of its length.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A pty master reads EIO once the last slave fd is closed:
                // that is the end of the output.
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let result = guard.try_io(|fd| {
                // SAFETY: the buffer is valid for reads of its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn request(terminal: bool) -> Stdio {
        Stdio {
            terminal,
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn pipes_carry_data_and_eof() {
        let (io, child) = ProcessIo::new(&request(false)).unwrap();
        let mut stdin = io.attach(StreamKind::Stdin).unwrap();
        let mut stdout = io.attach(StreamKind::Stdout).unwrap();
        stdin.write_all(b"in").await.unwrap();
        drop(stdin);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(child.stdin), &mut got).unwrap();
        assert_eq!(got, b"in");
        std::io::Write::write_all(&mut std::fs::File::from(child.stdout), b"out").unwrap();
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"out");
    }

    /// Four pipes' worth, written while the host side does not read yet,
    /// so the splice waits for the socket as well as for the pipe.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pumped_output_arrives_whole_then_the_stream_ends() {
        let (io, child) = ProcessIo::new(&request(false)).unwrap();
        let stdout = io.attach(StreamKind::Stdout).unwrap();
        let (agent_end, mut host_end) = tokio::net::UnixStream::pair().unwrap();
        let pump = tokio::spawn(pump_output(stdout, agent_end));
        let data: Vec<u8> = (0..4 * OUTPUT_BUFFER).map(|i| (i % 251) as u8).collect();
        let written = data.clone();
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut std::fs::File::from(child.stdout), &written).unwrap()
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut got = Vec::new();
        host_end.read_to_end(&mut got).await.unwrap();
        writer.join().unwrap();
        assert!(got == data, "{} bytes arrived of {}", got.len(), data.len());
        assert_eq!(pump.await.unwrap().unwrap(), data.len() as u64);
    }

    #[tokio::test]
    async fn pumping_output_ends_when_the_host_hangs_up() {
        let (io, child) = ProcessIo::new(&request(false)).unwrap();
        let stdout = io.attach(StreamKind::Stdout).unwrap();
        let (agent_end, host_end) = tokio::net::UnixStream::pair().unwrap();
        drop(host_end);
        let mut process_stdout = std::fs::File::from(child.stdout);
        std::io::Write::write_all(&mut process_stdout, b"nobody reads this").unwrap();
        let pumped = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            pump_output(stdout, agent_end),
        )
        .await
        .expect("the pump ends while the process still holds its stdout");
        assert!(pumped.is_err(), "{pumped:?}");
    }

    /// The process still holds its stdout and writes nothing.
    #[tokio::test]
    async fn pumping_quiet_output_ends_when_the_host_hangs_up() {
        let (io, child) = ProcessIo::new(&request(false)).unwrap();
        let stdout = io.attach(StreamKind::Stdout).unwrap();
        let (agent_end, host_end) = tokio::net::UnixStream::pair().unwrap();
        let pump = tokio::spawn(pump_output(stdout, agent_end));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(host_end);
        let pumped = tokio::time::timeout(std::time::Duration::from_secs(10), pump)
            .await
            .expect("the pump ends while the process holds its stdout, quiet")
            .unwrap();
        assert_eq!(
            pumped.unwrap_err().kind(),
            std::io::ErrorKind::BrokenPipe,
            "the host's hang-up, not a failed splice"
        );
        drop(child);
    }

    #[tokio::test]
    async fn a_stream_attaches_once() {
        let (io, _child) = ProcessIo::new(&request(false)).unwrap();
        io.attach(StreamKind::Stderr).unwrap();
        assert!(matches!(
            io.attach(StreamKind::Stderr),
            Err(AttachError::AlreadyAttached(StreamKind::Stderr))
        ));
    }

    #[tokio::test]
    async fn unrequested_streams_are_refused() {
        let (io, _child) = ProcessIo::new(&Stdio::default()).unwrap();
        assert!(matches!(
            io.attach(StreamKind::Stdout),
            Err(AttachError::NotRequested(StreamKind::Stdout))
        ));
    }

    #[tokio::test]
    async fn terminal_has_no_stderr_and_waits_for_master() {
        let (io, _child) = ProcessIo::new(&request(true)).unwrap();
        assert!(matches!(
            io.attach(StreamKind::Stdout),
            Err(AttachError::TerminalNotReady)
        ));
        assert!(matches!(
            io.attach(StreamKind::Stderr),
            Err(AttachError::TerminalHasNoStderr)
        ));
    }
}
