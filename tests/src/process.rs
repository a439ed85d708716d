//! Running host commands (mostly `ctr`) with a deadline, in the background
//! with streamed output, or under a pseudo-terminal.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The exit code of a finished command, or a panic that shows its output
/// when it was killed (a deadline that ran out).
pub fn exit_code(output: &Output) -> i32 {
    output
        .status
        .code()
        .unwrap_or_else(|| panic!("command was killed (deadline?)\n{}", describe(output)))
}

/// Status, stdout and stderr of a command, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Output as text with the terminal's `\r` removed.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

type Buffer = Arc<Mutex<Vec<u8>>>;

fn collect(mut from: impl Read + Send + 'static, into: Buffer) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match from.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// Waits for `child` until `deadline`; kills it (SIGKILL: `ctr run` forwards
/// SIGTERM to the container instead of exiting) when the deadline passes.
fn wait_until(child: &mut Child, deadline: Instant) -> ExitStatus {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                return child.wait().unwrap_or(ExitStatus::from_raw(libc::SIGKILL));
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
    }
}

/// Runs `cmd` to completion, feeding it `stdin` (or /dev/null) and killing it
/// after `timeout`.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let writer = child.stdin.take().map(|mut pipe| {
        let input = stdin.unwrap_or_default().to_vec();
        // The pipe closes when the thread ends, which is the end of input.
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let stdout = Buffer::default();
    let stderr = Buffer::default();
    let readers = [
        collect(child.stdout.take().unwrap(), stdout.clone()),
        collect(child.stderr.take().unwrap(), stderr.clone()),
    ];
    let status = wait_until(&mut child, Instant::now() + timeout);
    for reader in readers {
        let _ = reader.join();
    }
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = std::mem::take(&mut *stdout.lock().unwrap());
    let stderr = std::mem::take(&mut *stderr.lock().unwrap());
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A command running in the background whose output can be watched while
/// it runs: a foreground `ctr run` that a test signals or whose VM it kills.
pub struct Background {
    child: Child,
    stdout: Buffer,
    stderr: Buffer,
    readers: Vec<JoinHandle<()>>,
}

impl Background {
    /// Starts `cmd` with stdin at /dev/null.
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = Buffer::default();
        let stderr = Buffer::default();
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Stdout so far.
    pub fn stdout(&self) -> String {
        text(&self.stdout.lock().unwrap())
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        text(&self.stderr.lock().unwrap())
    }

    /// Waits until stdout contains `needle`; false if the deadline passed or
    /// the command exited first.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) {
                return true;
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                // Output may have arrived just before the exit.
                thread::sleep(Duration::from_millis(50));
                return self.stdout().contains(needle);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the command is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the command to exit (killing it after `timeout`).
    pub fn wait(mut self, timeout: Duration) -> Output {
        let status = wait_until(&mut self.child, Instant::now() + timeout);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Output {
            status,
            stdout: std::mem::take(&mut *self.stdout.lock().unwrap()),
            stderr: std::mem::take(&mut *self.stderr.lock().unwrap()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` with a new pseudo-terminal as its controlling terminal and its
/// stdin, stdout and stderr (what `ctr -t` needs; CI has no terminal),
/// writes `input` to the terminal and returns everything the command printed
/// as stdout (stderr is part of the same terminal and stays empty).
pub fn run_in_pty(mut cmd: Command, input: &[u8], timeout: Duration) -> Output {
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty"));
    cmd.stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Only the child may hold the slave: the master reads EIO once it exits.
    drop(pty.slave);
    let output = Buffer::default();
    let mut master = File::from(pty.master);
    let reader = collect(master.try_clone().expect("dup pty master"), output.clone());
    master.write_all(input).expect("write to pty");
    let status = wait_until(&mut child, Instant::now() + timeout);
    // Give the reader a moment to drain; it ends on EIO after the exit.
    let drained = Instant::now() + Duration::from_secs(2);
    while !reader.is_finished() && Instant::now() < drained {
        thread::sleep(Duration::from_millis(20));
    }
    let stdout = std::mem::take(&mut *output.lock().unwrap());
    Output {
        status,
        stdout,
        stderr: Vec::new(),
    }
}
