//! One container in the sandbox: its bundle, cgroup and processes, and the
//! calls to `hull-agent runtime` that create them.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};

use crate::forker::Forker;
use crate::process_io::{ChildStdio, ProcessIo};
use crate::reaper::{Exit, Reaper};

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
    forker: &Forker,
    reaper: &Reaper,
    mut args: Vec<String>,
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

    if let Some(path) = console_socket {
        args.push("--console-socket".into());
        args.push(path.to_string_lossy().into_owned());
    }
    let outcome = forker
        .run(reaper, &args, [&stdio.stdin, &stdio.stdout, &stdio.stderr])
        .await;
    drop(stdio);
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(message)) => Some(RuntimeError::Failed(failure_message(&message))),
        Err(err) => Some(RuntimeError::Spawn(err)),
    };
    if let Some(failure) = failure {
        if let Some(task) = console {
            task.abort();
        }
        return Err(failure);
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

/// The error of a failed `hull-agent runtime` call, as the agent reports it.
fn failure_message(error: &str) -> String {
    // libcontainer 0.7 pads the error of a failed exec with NULs.
    let error = error.replace('\0', "");
    let message = error.trim();
    if message.is_empty() {
        "hull-agent runtime failed without saying why".to_owned()
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
            failure_message("starting a process: failed to unix syscall\0\0\n"),
            "starting a process: failed to unix syscall"
        );
        assert_eq!(
            failure_message("\n"),
            "hull-agent runtime failed without saying why"
        );
    }
}
