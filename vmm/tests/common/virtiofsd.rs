//! virtiofsd as a test's child: the device tests in src/ and the tests that
//! boot a guest with hull-vmm both use this file.

#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Installed by scripts/install-deps.sh.
pub const VIRTIOFSD: &str = "/usr/local/bin/virtiofsd";
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// virtiofsd serving a temporary directory, as this test's child. Killed and reaped on drop,
/// also when the test fails; the directory (socket included) goes with it.
pub struct VirtiofsdProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl VirtiofsdProcess {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let log = std::fs::File::create(dir.path().join("virtiofsd.log")).unwrap();
        let child = Command::new(VIRTIOFSD)
            .arg(format!(
                "--socket-path={}",
                dir.path().join("fs.sock").display()
            ))
            .arg(format!("--shared-dir={}", share.display()))
            .args(["--sandbox=none", "--cache=never"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {VIRTIOFSD} (scripts/install-deps.sh): {e}"));
        let mut virtiofsd = VirtiofsdProcess {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !virtiofsd.socket().exists() {
            if let Some(status) = virtiofsd.child().try_wait().unwrap() {
                panic!("virtiofsd exited with {status}: {}", virtiofsd.log());
            }
            assert!(Instant::now() < deadline, "no socket: {}", virtiofsd.log());
            std::thread::sleep(Duration::from_millis(5));
        }
        virtiofsd
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("virtiofsd was reaped")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("fs.sock")
    }

    pub fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    pub fn log(&self) -> String {
        let mut log = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("virtiofsd.log")) {
            let _ = file.read_to_string(&mut log);
        }
        log
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for virtiofsd to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "virtiofsd did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for VirtiofsdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
