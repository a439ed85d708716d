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

use std::time::Duration;

use hull_vmm::host::Virtualization;

mod common;

use common::virtiofsd::VirtiofsdProcess;
use common::{
    assert_log_contains, assert_refused_naming, build, require_kvm, vsock_ping_pong, ApiClient, Vmm,
};

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

    let log = vmm.wait_success(Duration::from_secs(30), &serial, "");
    assert_log_contains(
        &log,
        &[
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
        ],
    );
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
    let log = vmm.wait_success(Duration::from_secs(30), &serial, &virtiofsd.log());
    assert_log_contains(
        &log,
        &[
            "fs tag=hullfs request queues=1",
            "hull-payload: virtio-fs ready",
            "fuse init error=0 major=7",
            "lookup hello.txt error=0 size=4321",
            "hull-payload: done",
        ],
    );
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
    let log = vmm.wait_success(Duration::from_secs(30), &serial, "");
    assert_log_contains(
        &log,
        &["hull-payload: pvh entry, cmdline=console=ttyS0 pvh-test"],
    );
}

#[test]
fn pvm_hosts_refuse_a_guest_not_declared_pvm_capable() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("pvh.S", dir.path());
    let vmm = Vmm::spawn(&["--kernel", kernel.to_str().unwrap(), "--memory-mib", "32"]);
    let (status, stderr) = vmm.wait(Duration::from_secs(30));
    let status = status.code();
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
    let mut client = ApiClient::connect(&api);
    assert_eq!(client.request("status"), "running\n");
    let line = client.request("bogus");
    assert!(line.starts_with("error:"), "{line}");
    assert_eq!(client.request("stop"), "stopping\n");
    let (status, stderr) = vmm.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(!api.exists(), "the API socket is removed");
}

#[test]
fn bad_input_is_named() {
    assert_refused_naming(
        &["--kernel", "/nonexistent/vmlinux", "--pvm-capable"],
        &["/nonexistent/vmlinux"],
    );
    assert_refused_naming(&["--kernel", "/k", "--vcpus", "0"], &["vcpus"]);
    // virtio-fs connects at start: no virtiofsd, no VM.
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("pvh.S", dir.path());
    let socket = dir.path().join("virtiofsd.sock");
    let fs = format!("{},tag=hullfs", socket.display());
    assert_refused_naming(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--fs",
            &fs,
            "--pvm-capable",
        ],
        &[&socket.display().to_string(), "virtiofsd"],
    );
    assert_refused_naming(&["--kernel", "/k", "--fs", "/v.sock,tag="], &["tag \"\""]);
}
