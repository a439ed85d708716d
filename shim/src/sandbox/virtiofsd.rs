//! virtiofsd (the Rust daemon) serving a sandbox's shared directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::Error;

pub struct Virtiofsd {
    child: Child,
}

impl Virtiofsd {
    /// Starts virtiofsd on `shared` and waits until its socket exists.
    pub async fn start(
        binary: &Path,
        socket: &Path,
        shared: &Path,
        log: &Path,
    ) -> Result<Self, Error> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| Error::Io {
                what: format!("opening {}", log.display()),
                source,
            })?;
        let mut command = Command::new(binary);
        command
            .arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(shared)
            // The shim is the jail for now: virtiofsd's own sandbox needs
            // namespaces that the shim sets up itself later.
            .args([
                "--sandbox",
                "none",
                "--cache",
                "auto",
                "--announce-submounts",
            ])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        super::die_with_parent(&mut command);
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            program: binary.display().to_string(),
            hint: "install it with `make deps` (cargo install virtiofsd)",
            source,
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Exited {
                    program: "virtiofsd".into(),
                    status: status.to_string(),
                    log: log.to_owned(),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    program: "virtiofsd".into(),
                    log: log.to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Virtiofsd { child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for virtiofsd to exit (it does when the VMM disconnects), and
    /// kills it after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// Finds `name` as given, else on PATH, else in cargo's bin directory (where
/// `cargo install` puts virtiofsd).
pub fn find_program(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.exists().then(|| name.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin"));
    std::env::split_paths(&path)
        .chain(["/usr/local/bin".into()])
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
