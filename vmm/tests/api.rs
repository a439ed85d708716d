//! `--wait-for-start`: hull-vmm builds the VM, then waits on its API socket;
//! the guest runs only after `start`, and `stop` before it ends the VMM
//! without the guest ever running.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{build, connect_retrying, require_kvm, VMM};

/// The PVH test guest, built, waiting for `start`.
struct Waiting {
    child: Child,
    serial: std::path::PathBuf,
    api: UnixStream,
    replies: BufReader<UnixStream>,
    _dir: tempfile::TempDir,
}

impl Waiting {
    fn spawn() -> Self {
        require_kvm();
        let dir = tempfile::tempdir().unwrap();
        let kernel = build("pvh.S", dir.path());
        let serial = dir.path().join("serial.log");
        let api_path = dir.path().join("api.sock");
        let child = Command::new(VMM)
            .args(["--kernel", kernel.to_str().unwrap()])
            .args(["--cmdline", "console=ttyS0 pvh-test", "--memory-mib", "32"])
            .args(["--serial-log", serial.to_str().unwrap()])
            .args(["--api-sock", api_path.to_str().unwrap()])
            .args(["--wait-for-start", "--pvm-capable"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting hull-vmm");
        let api = connect_retrying(&api_path);
        let replies = BufReader::new(api.try_clone().unwrap());
        Waiting {
            child,
            serial,
            api,
            replies,
            _dir: dir,
        }
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.api, "{command}").unwrap();
        let mut line = String::new();
        self.replies.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    fn serial_output(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// The exit status, within `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("hull-vmm did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_guest_runs_only_after_start() {
    let mut vmm = Waiting::spawn();
    assert_eq!(vmm.ask("status"), "created");
    assert!(vmm.ask("bogus").starts_with("error:"));
    // Built, but no vCPU has run: the guest has written nothing.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vmm.serial_output(), "");
    assert_eq!(vmm.ask("start"), "starting");
    assert_eq!(vmm.wait(Duration::from_secs(30)), Some(0));
    let log = vmm.serial_output();
    assert!(
        log.contains("hull-payload: pvh entry, cmdline=console=ttyS0 pvh-test"),
        "{log}"
    );
}

#[test]
fn stop_before_start_ends_the_vmm_before_the_guest_runs() {
    let mut vmm = Waiting::spawn();
    assert_eq!(vmm.ask("stop"), "stopping");
    assert_eq!(vmm.wait(Duration::from_secs(30)), Some(3));
    assert_eq!(vmm.serial_output(), "");
    let api = vmm.serial.with_file_name("api.sock");
    assert!(!Path::new(&api).exists(), "the API socket is removed");
}

#[test]
fn waiting_for_start_needs_an_api_socket() {
    let output = Command::new(VMM)
        .args(["--kernel", "/k", "--wait-for-start"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--api-sock"));
}
