//! One container in the sandbox: its bundle, cgroup and processes, and the
//! calls to `hull-agent runtime` that create them.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};

use crate::process_io::{ChildStdio, ProcessIo};
use crate::reaper::{Exit, Reaper};
use crate::runtime::STDIO_FDS;

/// A process of a container: its init or an exec.
pub struct Process {
    pub pid: i32,
    pub io: ProcessIo,
    exit: watch::Receiver<Option<Exit>>,
}

impl Process {
    pub fn new(pid: i32, io: ProcessIo, exited: oneshot::Receiver<Exit>) -> Arc<Self> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            if let Ok(exit) = exited.await {
                let _ = tx.send(Some(exit));
            }
        });
        Arc::new(Process { pid, io, exit: rx })
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> Option<Exit> {
        let mut exit = self.exit.clone();
        let result = exit.wait_for(Option::is_some).await.ok().and_then(|e| *e);
        result
    }
}

pub struct Container {
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The container's cgroup directory.
    pub cgroup: PathBuf,
    /// The spec's `linux.cgroupsPath`.
    pub cgroups_path: PathBuf,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    pub oom_watch: tokio::task::AbortHandle,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        if exec_id.is_empty() {
            Some(self.init.clone())
        } else {
            self.execs.lock().expect("execs lock").get(exec_id).cloned()
        }
    }
}

/// Why `hull-agent runtime` failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("running hull-agent runtime: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("{0}")]
    Failed(String),
    #[error("receiving the terminal from the container: {0}")]
    Console(#[source] std::io::Error),
    #[error("reading the new process's pid: {0}")]
    PidFile(#[source] std::io::Error),
}

/// A created process: its pid and its exit, to be awaited.
pub struct Spawned {
    pub pid: i32,
    pub exited: oneshot::Receiver<Exit>,
    pub terminal: Option<OwnedFd>,
}

/// Runs `hull-agent runtime <args>` for a process whose stdio is `stdio`
/// (pipes) or a terminal (`console_socket`), and returns the new process.
pub async fn run_runtime(
    reaper: &Reaper,
    args: Vec<String>,
    pid_file: &Path,
    stdio: ChildStdio,
    console_socket: Option<&Path>,
) -> Result<Spawned, RuntimeError> {
    let console = match console_socket {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).map_err(RuntimeError::Console)?;
            Some(tokio::spawn(receive_terminal(listener)))
        }
        None => None,
    };

    let mut command = std::process::Command::new("/proc/self/exe");
    command
        .arg("runtime")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(path) = console_socket {
        command.arg("--console-socket").arg(path);
    }
    let fds = [
        stdio.stdin.as_raw_fd(),
        stdio.stdout.as_raw_fd(),
        stdio.stderr.as_raw_fd(),
    ];
    // SAFETY: the closure only calls fcntl and dup2, which are
    // async-signal-safe, on fds that stay open until the child has exec'd.
    unsafe {
        command.pre_exec(move || {
            // Move the fds out of 3..=5 first so no dup2 overwrites a source.
            let mut high = [0; 3];
            for (slot, fd) in high.iter_mut().zip(fds) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, fd) in STDIO_FDS.iter().zip(high) {
                if libc::dup2(fd, *target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (mut child, exited) = reaper
        .spawn(|| command.spawn(), |child| child.id())
        .map_err(RuntimeError::Spawn)?;
    drop(stdio);

    let stderr = child.stderr.take().expect("stderr is piped");
    let errors = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let status = exited.await.map(|exit| exit.status).unwrap_or(-1);
    let errors = errors.await.unwrap_or_default();
    if status != 0 {
        if let Some(task) = console {
            task.abort();
        }
        return Err(RuntimeError::Failed(failure_message(&errors, status)));
    }

    let terminal = match console {
        Some(task) => Some(
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .map_err(|_| {
                    RuntimeError::Console(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no terminal arrived",
                    ))
                })?
                .map_err(|e| RuntimeError::Console(std::io::Error::other(e)))?
                .map_err(RuntimeError::Console)?,
        ),
        None => None,
    };
    if let Some(path) = console_socket {
        let _ = std::fs::remove_file(path);
    }

    let pid = std::fs::read_to_string(pid_file)
        .map_err(RuntimeError::PidFile)?
        .trim()
        .parse::<i32>()
        .map_err(|e| RuntimeError::PidFile(std::io::Error::other(e)))?;
    let _ = std::fs::remove_file(pid_file);
    Ok(Spawned {
        pid,
        exited: reaper.watch(pid),
        terminal,
    })
}

/// What `hull-agent runtime` that exited with `status` printed, as the
/// agent reports it.
fn failure_message(stderr: &str, status: i32) -> String {
    // libcontainer 0.7 pads the error of a failed exec with NULs.
    let stderr = stderr.replace('\0', "");
    let message = stderr.trim();
    let message = message.strip_prefix("hull-agent: ").unwrap_or(message);
    if message.is_empty() {
        format!("hull-agent runtime exited with status {status}")
    } else {
        message.to_owned()
    }
}

/// Accepts libcontainer's connection on the console socket and receives the
/// pty master it sends with SCM_RIGHTS.
async fn receive_terminal(listener: UnixListener) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let (stream, _) = listener.accept().await?;
    loop {
        let received = stream
            .async_io(Interest::READABLE, || {
                let mut data = [0u8; 4096];
                let mut iov = [std::io::IoSliceMut::new(&mut data)];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let msg = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        fds.extend(received);
                    }
                }
                Ok((msg.bytes, fds))
            })
            .await?;
        match received {
            (_, fds) if !fds.is_empty() => {
                // SAFETY: SCM_RIGHTS gave us new fds that nothing else owns.
                let mut owned: Vec<OwnedFd> = fds
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                    .collect();
                return Ok(owned.swap_remove(0));
            }
            (0, _) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "console socket closed without a terminal",
                ))
            }
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::failure_message;

    #[test]
    fn failure_messages_are_plain_text() {
        assert_eq!(
            failure_message(
                "hull-agent: starting a process: failed to unix syscall\0\0\n",
                1
            ),
            "starting a process: failed to unix syscall"
        );
        assert_eq!(
            failure_message("\n", 101),
            "hull-agent runtime exited with status 101"
        );
    }
}
