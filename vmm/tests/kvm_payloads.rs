//! hull-vmm under /dev/kvm with small test guests built here from
//! tests/payload/: one entered through the 64-bit Linux boot protocol with
//! two vCPUs (it checks boot_params, E820, command line, initrd and the MP
//! table, then drives the virtio-mmio vsock device and answers a host
//! connection made through the hybrid-vsock socket), one that drives a
//! virtio-fs device served by a real virtiofsd (FUSE_INIT and FUSE_LOOKUP),
//! one through PVH. hull-vmm runs with its seccomp filters, as it does by
//! default. On these hosts KVM is PVM, which emulates every guest kernel
//! instruction, so the guests are tiny and say they are PVM-capable.
//!
//! Needs root (for /dev/kvm) and gcc.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_vmm::host::Virtualization;

mod common;

use common::virtiofsd::VirtiofsdProcess;
use common::{build, connect_retrying, require_kvm, vsock_ping_pong, VMM};

struct Vmm {
    child: Child,
}

impl Vmm {
    fn spawn(args: &[&str]) -> Vmm {
        let child = Command::new(VMM)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running hull-vmm");
        Vmm { child }
    }

    /// Waits for the exit, with a deadline; returns status and stderr.
    fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                return (status.code(), stderr);
            }
            assert!(
                Instant::now() < deadline,
                "hull-vmm did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn linux64_guest_sees_its_boot_data_and_talks_vsock() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("payload64.c", dir.path());
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, b"HULLINITRD-test-data").unwrap();
    let serial = dir.path().join("serial.log");
    let uds = dir.path().join("v.sock");
    let vmm = Vmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 hull-test=1",
        "--memory-mib",
        "64",
        "--vcpus",
        "2",
        "--serial-log",
        serial.to_str().unwrap(),
        "--vsock-cid",
        "3",
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--pvm-capable",
    ]);

    vsock_ping_pong(&uds);

    let (status, stderr) = vmm.wait(Duration::from_secs(30));
    assert_eq!(status, Some(0), "{stderr}");
    let log = std::fs::read_to_string(&serial).unwrap();
    for expected in [
        "hull-payload: 64-bit entry",
        // Below the EBDA, the EBDA itself reserved, the rest of the 64 MiB.
        "e820 entries=3 ",
        "cmdline=console=ttyS0 hull-test=1 virtio_mmio.device=4K@0xd0000000:5",
        "initrd size=20 starts=HULLINIT",
        // The MP table lists both vCPUs, the first as the BSP, and the 24
        // IOAPIC pins; the BSP's LINT0 is ExtINT, LINT1 NMI (still masked).
        "mptable cpus=2 bsp=1 irqs=24 lint0=0x700 lint1=0x10400",
        "hull-payload: vsock ready",
        "hull-payload: connected",
        "hull-payload: answered",
        // Nothing listens on <uds>_5200: the guest's own connection is reset.
        "hull-payload: host port 5200 refused",
        "hull-payload: done",
    ] {
        assert!(log.contains(expected), "{expected:?} not in:\n{log}");
    }
}

#[test]
fn linux64_guest_speaks_fuse_to_virtiofsd_through_virtio_fs() {
    require_kvm();
    let mut virtiofsd = VirtiofsdProcess::start();
    std::fs::write(virtiofsd.share().join("hello.txt"), vec![b'x'; 4321]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("fs.c", dir.path());
    let serial = dir.path().join("serial.log");
    let fs = format!("{},tag=hullfs,queue_size=256", virtiofsd.socket().display());
    let vmm = Vmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "32",
        "--serial-log",
        serial.to_str().unwrap(),
        "--fs",
        &fs,
        "--pvm-capable",
    ]);
    let (status, stderr) = vmm.wait(Duration::from_secs(30));
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(status, Some(0), "{stderr}\n{log}\n{}", virtiofsd.log());
    for expected in [
        "fs tag=hullfs request queues=1",
        "hull-payload: virtio-fs ready",
        "fuse init error=0 major=7",
        "lookup hello.txt error=0 size=4321",
        "hull-payload: done",
    ] {
        assert!(log.contains(expected), "{expected:?} not in:\n{log}");
    }
    // The VMM's end closed the session; virtiofsd leaves with it.
    let status = virtiofsd.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", virtiofsd.log());
}

#[test]
fn pvh_guest_gets_its_start_info() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("pvh.S", dir.path());
    let serial = dir.path().join("serial.log");
    let vmm = Vmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 pvh-test",
        "--memory-mib",
        "32",
        "--serial-log",
        serial.to_str().unwrap(),
        "--pvm-capable",
    ]);
    let (status, stderr) = vmm.wait(Duration::from_secs(30));
    assert_eq!(status, Some(0), "{stderr}");
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(
        log.contains("hull-payload: pvh entry, cmdline=console=ttyS0 pvh-test"),
        "{log}"
    );
}

#[test]
fn pvm_hosts_refuse_a_guest_not_declared_pvm_capable() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("pvh.S", dir.path());
    let vmm = Vmm::spawn(&["--kernel", kernel.to_str().unwrap(), "--memory-mib", "32"]);
    let (status, stderr) = vmm.wait(Duration::from_secs(30));
    match Virtualization::detect() {
        Virtualization::Pvm => {
            assert_eq!(status, Some(2), "{stderr}");
            assert!(
                stderr.contains("PVM") && stderr.contains("qemu"),
                "{stderr}"
            );
        }
        // With VT-x/AMD-V the same guest simply runs.
        Virtualization::Hardware => assert_eq!(status, Some(0), "{stderr}"),
        Virtualization::None => panic!("/dev/kvm exists but is not usable"),
    }
}

#[test]
fn api_socket_reports_status_and_stops_the_vm() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    // This guest waits for a vsock connection that never comes.
    let kernel = build("payload64.c", dir.path());
    let uds = dir.path().join("v.sock");
    let api = dir.path().join("api.sock");
    let vmm = Vmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "32",
        "--vsock-cid",
        "3",
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--api-sock",
        api.to_str().unwrap(),
        "--pvm-capable",
    ]);
    let mut stream = connect_retrying(&api);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    stream.write_all(b"status\n").unwrap();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "running\n");
    line.clear();
    stream.write_all(b"bogus\n").unwrap();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("error:"), "{line}");
    line.clear();
    stream.write_all(b"stop\n").unwrap();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "stopping\n");
    let (status, stderr) = vmm.wait(Duration::from_secs(30));
    assert_eq!(status, Some(3), "{stderr}");
    assert!(!api.exists(), "the API socket is removed");
}

#[test]
fn bad_input_is_named() {
    let (status, stderr) = Vmm::spawn(&["--kernel", "/nonexistent/vmlinux", "--pvm-capable"])
        .wait(Duration::from_secs(10));
    assert_eq!(status, Some(2));
    assert!(stderr.contains("/nonexistent/vmlinux"), "{stderr}");
    let (status, stderr) =
        Vmm::spawn(&["--kernel", "/k", "--vcpus", "0"]).wait(Duration::from_secs(10));
    assert_eq!(status, Some(2));
    assert!(stderr.contains("vcpus"), "{stderr}");
    // virtio-fs connects at start: no virtiofsd, no VM.
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("pvh.S", dir.path());
    let socket = dir.path().join("virtiofsd.sock");
    let fs = format!("{},tag=hullfs", socket.display());
    let (status, stderr) = Vmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--fs",
        &fs,
        "--pvm-capable",
    ])
    .wait(Duration::from_secs(10));
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains(&socket.display().to_string()) && stderr.contains("virtiofsd"),
        "{stderr}"
    );
    let (status, stderr) =
        Vmm::spawn(&["--kernel", "/k", "--fs", "/v.sock,tag="]).wait(Duration::from_secs(10));
    assert_eq!(status, Some(2));
    assert!(stderr.contains("tag \"\""), "{stderr}");
}
