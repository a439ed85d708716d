//! What the tests that run hull-vmm under /dev/kvm share: building the test
//! guests in tests/payload/ with gcc, and waiting for sockets to appear.

#![allow(dead_code)]

pub mod virtiofsd;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const VMM: &str = env!("CARGO_BIN_EXE_hull-vmm");

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
    use std::io::{BufRead, BufReader, Read, Write};
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
    use std::io::{Read, Write};
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
