//! The builtin backend with the real hull-vmm binary (built beside this
//! build's `hull` by `cargo test --workspace`): the configuration the shim
//! writes, the jail it asks for (the sandbox directory, uid 65534) and a
//! pod's tap passed as descriptor 3 are all accepted, and hull-vmm gets as
//! far as this host lets it. On a PVM host that is the refusal of Hull's
//! ordinary Linux guest (`pvm_capable = false`); with VT-x/AMD-V it is the
//! connection to virtiofsd, which this test does not start. Either way
//! hull-vmm has parsed the file, checked the jail's paths and taken the
//! tap, which come before both.
//!
//! Needs root (a network namespace and a tap) and /dev/kvm.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use hull_shim::hypervisor::builtin::{Builtin, VmmJail};
use hull_shim::hypervisor::{Hypervisor, NetDevice, VmExit, VmParams, VmmHost};
use hull_vmm_api::host::Virtualization;

/// A tap created as the shim creates a pod's (with a virtio-net header),
/// in the calling thread's network namespace.
fn open_tap(name: &str) -> OwnedFd {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun");
    // SAFETY: all zeroes is a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    tun.into()
}

#[test]
fn hull_vmm_takes_the_shims_configuration_jail_and_tap() {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let vmm = Path::new(env!("CARGO_BIN_EXE_hull")).with_file_name("hull-vmm");
    assert!(
        vmm.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (make test)",
        vmm.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let sandbox = dir.path().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    let config = VmParams {
        // Opened only after the steps this test is about.
        kernel: dir.path().join("vmlinux"),
        initrd: dir.path().join("initrd.img"),
        cmdline: "console=ttyS0 quiet panic=-1 pci=off".into(),
        vcpus: 1,
        memory_mib: 64,
        vsock_uds: sandbox.join("vsock.sock"),
        guest_cid: 3,
        fs_socket: dir.path().join("virtiofsd.sock"),
        fs_tag: "hull".into(),
        console_log: sandbox.join("console.log"),
        net: None,
    };
    let config_file = sandbox.join("vmm.toml");
    let jail = VmmJail {
        root: sandbox.clone(),
        uid: 65534,
        gid: 65534,
    };
    // The tap's namespace lives as long as this thread and hull-vmm, which
    // is started here and dies with the thread that started it.
    let exit = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): run as root");
        let tap = open_tap("hull0");
        let config = VmParams {
            net: Some(NetDevice {
                tap_fd: tap.as_raw_fd(),
                mac: "02:42:ac:11:00:0a".into(),
            }),
            ..config
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut builtin = Builtin::new(vmm, config_file, jail);
            let console = hull_shim::sandbox::capped_log(&config.console_log, 1 << 20)
                .expect("the console log");
            let host = VmmHost {
                console: console.writer,
                cgroup_procs: Vec::new(),
            };
            builtin
                .start(&config, host)
                .await
                .expect("starting hull-vmm");
            let mut exit = builtin.exit_watch();
            let ended =
                tokio::time::timeout(Duration::from_secs(20), exit.wait_for(Option::is_some))
                    .await
                    .expect("hull-vmm did not exit")
                    .map(|e| *e);
            builtin.stop(Duration::from_secs(1)).await.unwrap();
            console.copier.await.unwrap().unwrap();
            ended.unwrap()
        })
    })
    .join()
    .unwrap();

    let log = std::fs::read_to_string(sandbox.join("console.log")).unwrap();
    assert_eq!(exit, Some(VmExit::Exited(Some(2))), "{log}");
    for refused in ["Invalid VM configuration", "jail", "Tap fd"] {
        assert!(!log.contains(refused), "{refused:?} in {log}");
    }
    let expected = match Virtualization::detect() {
        Virtualization::Hardware => "Cannot connect to virtiofsd",
        Virtualization::Pvm => "This host's KVM is PVM",
        Virtualization::None => "No usable KVM",
    };
    assert!(log.contains(expected), "{expected:?} not in {log}");
    assert!(sandbox.join("vmm.toml").is_file());
}
