//! `hull pool` run for a test's or a bench's containerd, and watched
//! through its log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{artifacts, Containerd};

/// What the pool logs when a VM is booted ahead and waits.
pub const READY: &str = "a VM is booted ahead";
/// What the pool logs when it hands a VM to a sandbox.
pub const HANDED_OUT: &str = "handing out a VM booted ahead";

/// How long a VM may take to boot ahead under emulation.
const BOOT: Duration = Duration::from_secs(180);

/// `hull pool` for one containerd, logging at info level to a pipe the
/// test reads; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Pool {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Pool {
    pub fn start(c: &Containerd, count: u32) -> Pool {
        Pool::start_with_config(c, count, &c.hull_config())
    }

    /// A pool booting with Hull's configuration at `config` (the test's
    /// containerd hands its shims another).
    pub fn start_with_config(c: &Containerd, count: u32, config: &Path) -> Pool {
        let mut child = Command::new(artifacts::bin_dir().join("hull"))
            .arg("--config")
            .arg(config)
            .args(["pool", "--count", &count.to_string(), "--containerd"])
            .arg(c.socket())
            .env("HULL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting hull pool");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("pool: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Pool {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until the pool has logged `needle` `times` times in all.
    pub fn wait_for(&mut self, needle: &str, times: usize) {
        let deadline = Instant::now() + BOOT;
        while self.seen.iter().filter(|l| l.contains(needle)).count() < times {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "the pool did not log {needle:?} {times} times in {BOOT:?}; it logged:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Stops the pool as systemd would, and returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("waiting for the pool") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the pool did not stop within 60 s of SIGTERM");
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
