//! What the tests that run hull-vmm under /dev/kvm share: building the test
//! guests in tests/payload/ with gcc, running hull-vmm and waiting for it,
//! checking its serial log, and waiting for sockets to appear.

#![allow(dead_code)]

pub mod cgroup;
pub mod virtiofsd;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const VMM: &str = env!("CARGO_BIN_EXE_hull-vmm");

/// hull-vmm with `args`: stdout discarded, stderr kept for [`Vmm::wait`].
pub fn vmm_command<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut command = Command::new(VMM);
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A running hull-vmm (or a wrapper that execs it), killed and reaped on
/// drop, also when the test fails.
pub struct Vmm {
    pub child: Child,
}

impl Vmm {
    pub fn spawn<S: AsRef<OsStr>>(args: &[S]) -> Vmm {
        Vmm::start(&mut vmm_command(args))
    }

    /// Starts `command`, made by [`vmm_command`] and set up further by the
    /// caller (environment, working directory, descriptors).
    pub fn start(command: &mut Command) -> Vmm {
        Vmm {
            child: command.spawn().expect("running hull-vmm"),
        }
    }

    /// Waits up to `limit` for the exit; `None` if hull-vmm still runs.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything hull-vmm wrote to stderr; call once it exited.
    pub fn stderr(&mut self) -> String {
        let mut stderr = String::new();
        let mut pipe = self.child.stderr.take().unwrap();
        pipe.read_to_string(&mut stderr).unwrap();
        stderr
    }

    /// Waits for the exit, with a deadline; returns the status and stderr.
    pub fn wait(mut self, limit: Duration) -> (ExitStatus, String) {
        let status = self
            .wait_for(limit)
            .unwrap_or_else(|| panic!("hull-vmm did not exit in {limit:?}"));
        (status, self.stderr())
    }

    /// Waits for a run that must end with status 0 and returns the serial
    /// log at `serial`. A failure shows the status, stderr, the log and
    /// `context` (say, the log of a helper process).
    pub fn wait_success(self, limit: Duration, serial: &Path, context: &str) -> String {
        let (status, stderr) = self.wait(limit);
        let log = std::fs::read_to_string(serial).unwrap_or_default();
        assert_eq!(
            status.code(),
            Some(0),
            "{status:?}: {stderr}\n{log}\n{context}"
        );
        log
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts the serial log `log` holds every line of `expected`.
pub fn assert_log_contains(log: &str, expected: &[&str]) {
    for expected in expected {
        assert!(log.contains(expected), "{expected:?} not in:\n{log}");
    }
}

/// Runs hull-vmm with `args`, which it must refuse before building anything:
/// exit status 2 and an error naming each of `named`.
pub fn assert_refused_naming(args: &[&str], named: &[&str]) {
    let (status, stderr) = Vmm::spawn(args).wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
    for name in named {
        assert!(stderr.contains(name), "{args:?}: {name:?} not in {stderr}");
    }
}

/// hull-vmm's API socket: one request line, one answer line.
pub struct ApiClient {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ApiClient {
    /// Connects once hull-vmm created the socket at `path`.
    pub fn connect(path: &Path) -> ApiClient {
        let stream = connect_retrying(path);
        let reader = BufReader::new(stream.try_clone().unwrap());
        ApiClient { stream, reader }
    }

    /// Sends `request` and returns the answer, newline included.
    pub fn request(&mut self, request: &str) -> String {
        self.stream
            .write_all(format!("{request}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }
}

/// Builds a payload from tests/payload/ into `dir`.
pub fn build(source: &str, dir: &Path) -> PathBuf {
    let payload = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/payload");
    let out = dir.join(source.split('.').next().unwrap());
    let status = Command::new("gcc")
        .args([
            "-O1",
            "-ffreestanding",
            "-fno-pic",
            "-fno-pie",
            "-no-pie",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-fno-stack-protector",
            "-nostdlib",
            "-static",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg(format!("-Wl,-T,{}", payload.join("payload.ld").display()))
        .arg("-o")
        .arg(&out)
        .arg(payload.join(source))
        .status()
        .expect("gcc is installed");
    assert!(status.success(), "building {source}");
    out
}

pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm (run as root on a host with KVM)"
    );
}

pub fn connect_retrying(path: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(stream) = UnixStream::connect(path) {
            return stream;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Talks to the 64-bit test guest through the hybrid-vsock socket `uds`:
/// `CONNECT 1234`, then `ping`, which it answers with `pong:ping` and a
/// shutdown.
pub fn vsock_ping_pong(uds: &Path) {
    let mut stream = connect_retrying(uds);
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    stream.write_all(b"CONNECT 1234\n").unwrap();
    let mut line = String::new();
    BufReader::new(&mut stream).read_line(&mut line).unwrap();
    assert!(line.starts_with("OK "), "handshake answer {line:?}");
    stream.write_all(b"ping").unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"pong:ping");
}

/// The host service the 64-bit test guest connects to after the ping/pong:
/// hybrid vsock takes a guest connection to host port 5200 to `<uds>_5200`.
/// It reads the guest's `hello` and answers `hi from the host`.
pub struct HostService {
    pub path: PathBuf,
    thread: std::thread::JoinHandle<Result<Vec<u8>, String>>,
}

/// Listens on `<uds>_5200` for one connection from the guest.
pub fn serve_port_5200(uds: &Path) -> HostService {
    let mut path = uds.as_os_str().to_owned();
    path.push("_5200");
    let path = PathBuf::from(path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("the guest did not connect in 30 s".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        let io = |e: std::io::Error| e.to_string();
        stream.set_nonblocking(false).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        let mut hello = [0; 5];
        stream.read_exact(&mut hello).map_err(io)?;
        stream.write_all(b"hi from the host").map_err(io)?;
        // Until the guest shuts the connection down.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).map_err(io)?;
        Ok(hello.to_vec())
    });
    HostService { path, thread }
}

impl HostService {
    /// What the guest sent, once it closed the connection.
    pub fn received(self) -> Vec<u8> {
        match self.thread.join().expect("host service thread") {
            Ok(bytes) => bytes,
            Err(e) => panic!("host service on {}: {e}", self.path.display()),
        }
    }
}

/// Makes each `(fd, number)`'s `fd` the child's descriptor `number`, open across exec.
/// Every `fd` is first copied above the numbers asked for, so that one placed at its
/// number cannot overwrite another still to be placed.
pub fn pass_fds(command: &mut Command, fds: &[(i32, i32)]) {
    use std::os::unix::process::CommandExt;
    let fds = fds.to_vec();
    let above = fds.iter().map(|&(_, number)| number).max().unwrap_or(0) + 1;
    // SAFETY: fcntl and dup2 are async-signal-safe and touch only the child; dup2 leaves the
    // copy without close-on-exec.
    unsafe {
        command.pre_exec(move || {
            let mut copies = Vec::with_capacity(fds.len());
            for &(fd, number) in &fds {
                let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                copies.push((copy, number));
            }
            for (copy, number) in copies {
                if libc::dup2(copy, number) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A field of /proc/<pid>/status.
pub fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}
