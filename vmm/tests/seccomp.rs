//! hull-vmm's confinement (`hull_vmm::seccomp`): the test guests of
//! kvm_payloads.rs run to the end with every thread filtered and without
//! capabilities, a forbidden system call kills the VMM with SIGSYS, and the
//! filters let through, or stop, the calls a guest can make the VMM issue.
//!
//! Needs root (for /dev/kvm and taps), gcc, and for the tap test unshare
//! (util-linux) and ip (iproute2).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hull_vmm::devices::virtio::net::Tap;
use hull_vmm::seccomp::{self, ThreadKind};

mod common;

use common::{
    assert_log_contains, build, require_kvm, serve_port_5200, vmm_command, vsock_ping_pong,
    ApiClient, Vmm, VMM,
};

/// Name, seccomp mode, effective and bounding capabilities of every thread
/// of `pid`. KVM's own kernel workers (`kvm-*`), which never make system
/// calls, are left out.
fn threads(pid: u32) -> Vec<(String, String, String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let comm = comm.trim().to_owned();
        if !comm.starts_with("kvm-") {
            threads.push((comm, field("Seccomp:"), field("CapEff:"), field("CapBnd:")));
        }
    }
    threads.sort();
    threads
}

#[test]
fn every_thread_is_filtered_and_without_capabilities_and_the_api_still_stops_the_vm() {
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

    // Threads confine themselves as they start: wait until all have.
    let pid = vmm.child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let threads = loop {
        let threads = threads(pid);
        let confined = threads.iter().all(|(_, mode, _, _)| mode == "2");
        if confined || Instant::now() > deadline {
            break threads;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let names: Vec<&str> = threads.iter().map(|t| t.0.as_str()).collect();
    for expected in ["vcpu0", "vmm-events", "vmm-api", "hull-vmm"] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    // main, the thread waiting for the vCPUs, vcpu0, events, API.
    assert_eq!(threads.len(), 5, "{threads:?}");
    for (name, mode, effective, bounding) in &threads {
        assert_eq!(mode, "2", "{name} is not in seccomp filter mode");
        assert_eq!(effective, "0000000000000000", "{name} keeps capabilities");
        assert_eq!(bounding, "0000000000000000", "{name} keeps a bounding set");
    }

    assert_eq!(client.request("status"), "running\n");
    assert_eq!(client.request("stop"), "stopping\n");
    let (status, stderr) = vmm.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{status:?}: {stderr}");
    assert!(!api.exists(), "the API socket is removed");
    assert!(!uds.exists(), "the vsock socket is removed");
}

#[test]
fn filtered_linux64_guest_talks_vsock() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("payload64.c", dir.path());
    let serial = dir.path().join("serial.log");
    let uds = dir.path().join("v.sock");
    // The guest's own connection: socket and connect on a vCPU thread.
    let service = serve_port_5200(&uds);
    let vmm = Vmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "64",
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
    assert_eq!(service.received(), b"hello");
    assert_log_contains(
        &log,
        &["port 5200 says hi from the host", "hull-payload: done"],
    );
    assert!(!uds.exists(), "the vsock socket is removed");
}

/// The tap the guest's net device uses, made by iproute2 in hull-vmm's own
/// network namespace before hull-vmm starts: 10.77.0.1/24 with a known
/// MAC, up, IPv6 off so the guest sees only ARP. The namespace, and the tap
/// with it, go away with the VMM.
const TAP_SETUP: &str = "set -e
if [ -e /proc/sys/net/ipv6 ]; then echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; fi
ip tuntap add dev hulltap0 mode tap
ip link set hulltap0 address 02:00:00:00:77:01
ip addr add 10.77.0.1/24 dev hulltap0
ip link set hulltap0 up
exec \"$@\"";

#[test]
fn filtered_linux64_guest_gets_an_arp_reply_through_a_tap() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("payload64.c", dir.path());
    let serial = dir.path().join("serial.log");
    let uds = dir.path().join("v.sock");
    let child = Command::new("unshare")
        .args(["--net", "--", "sh", "-c", TAP_SETUP, "sh", VMM])
        .args([
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory-mib",
            "64",
            "--serial-log",
            serial.to_str().unwrap(),
            "--vsock-cid",
            "3",
            "--vsock-uds",
            uds.to_str().unwrap(),
            "--net",
            "hulltap0",
            "--pvm-capable",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running hull-vmm under unshare (util-linux) and ip (iproute2)");
    let vmm = Vmm { child };
    // The guest answers vsock first, then turns to the net device.
    vsock_ping_pong(&uds);

    let log = vmm.wait_success(Duration::from_secs(60), &serial, "");
    assert_log_contains(
        &log,
        &[
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6",
            "hull-payload: net ready mac=02:00:00:00:00:01",
            "hull-payload: 10.77.0.1 is at 02:00:00:00:77:01",
            "hull-payload: done",
        ],
    );
}

/// As the shim gives hull-vmm a pod's tap: opened by another process (here
/// the test, in a network namespace of its own that hull-vmm never enters),
/// blocking, with a virtio-net header, and passed as descriptor 3 that the
/// configuration file names (`[[net]] fd = 3`).
#[test]
fn filtered_linux64_guest_gets_an_arp_reply_through_a_passed_tap() {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("payload64.c", dir.path());
    let serial = dir.path().join("serial.log");
    let uds = dir.path().join("v.sock");
    let config = dir.path().join("vm.toml");
    std::fs::write(
        &config,
        format!(
            "[machine]\nmemory_mib = 64\npvm_capable = true\n[boot]\nkernel = {kernel:?}\n\
             [serial]\nlog = {serial:?}\n[vsock]\nguest_cid = 3\nuds_path = {uds:?}\n\
             [[net]]\nfd = 3\n"
        ),
    )
    .unwrap();
    // The namespace and the tap belong to this thread and die with it.
    let vmm = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare: run as root");
        let ipv6 = "/proc/sys/net/ipv6/conf/default/disable_ipv6";
        if Path::new(ipv6).exists() {
            std::fs::write(ipv6, "1").unwrap();
        }
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        // SAFETY: all zeroes is a valid ifreq.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"hullfdtap0") {
            *slot = *byte as libc::c_char;
        }
        request.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        let tap = OwnedFd::from(tun);
        let status = Command::new("sh")
            .arg("-c")
            .arg(
                "set -e; ip link set hullfdtap0 address 02:00:00:00:77:01; \
                 ip addr add 10.77.0.1/24 dev hullfdtap0; ip link set hullfdtap0 up",
            )
            .status()
            .expect("ip (iproute2)");
        assert!(status.success());
        let fd = tap.as_raw_fd();
        let mut command = vmm_command(&["--config", config.to_str().unwrap()]);
        // SAFETY: dup2 and fcntl are async-signal-safe and touch only the child.
        unsafe {
            command.pre_exec(move || {
                let rc = if fd == 3 {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let vmm = Vmm::start(&mut command);
        // The VMM holds its own copy; the test's goes.
        drop(tap);
        vmm
    })
    .join()
    .unwrap();
    vsock_ping_pong(&uds);

    let log = vmm.wait_success(Duration::from_secs(60), &serial, "");
    assert_log_contains(
        &log,
        &[
            "hull-payload: net ready mac=02:00:00:00:00:01",
            "hull-payload: 10.77.0.1 is at 02:00:00:00:77:01",
            "hull-payload: done",
        ],
    );
}

#[test]
fn filtered_pvh_guest_runs() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("pvh.S", dir.path());
    let serial = dir.path().join("serial.log");
    let log = Vmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 pvh-test",
        "--memory-mib",
        "32",
        "--serial-log",
        serial.to_str().unwrap(),
        "--pvm-capable",
    ])
    .wait_success(Duration::from_secs(30), &serial, "");
    assert_log_contains(&log, &["hull-payload: pvh entry"]);
}

#[test]
fn a_forbidden_system_call_kills_the_vmm_unless_seccomp_is_off() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("pvh.S", dir.path());
    let args = ["--kernel", kernel.to_str().unwrap(), "--pvm-capable"];
    let selftest = [(seccomp::SELFTEST_ENV, "1")];

    let (status, stderr) =
        Vmm::start(vmm_command(&args).envs(selftest)).wait(Duration::from_secs(30));
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}: {stderr}");
    assert!(!stderr.contains("fork was allowed"), "{stderr}");

    let no_seccomp = [&args[..], &["--no-seccomp"]].concat();
    let (status, stderr) =
        Vmm::start(vmm_command(&no_seccomp).envs(selftest)).wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status:?}: {stderr}");
    assert!(stderr.contains("fork was allowed"), "{stderr}");
}

/// The environment variable that turns this test binary, run again as a
/// child, into a probe: it confines itself with one filter and makes one
/// system call (see `probe_child`).
const PROBE_ENV: &str = "HULL_VMM_SECCOMP_PROBE";

/// How a probe child ended: 0 when the call went through, or a signal.
fn run_probe(probe: &str, socket_dir: &Path) -> ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "filters_allow_what_a_guest_may_cause_and_kill_the_rest",
            "--nocapture",
        ])
        .env(PROBE_ENV, probe)
        .env("HULL_VMM_PROBE_DIR", socket_dir)
        .stdout(Stdio::null())
        .status()
        .unwrap()
}

#[test]
fn filters_allow_what_a_guest_may_cause_and_kill_the_rest() {
    if let Ok(probe) = std::env::var(PROBE_ENV) {
        // This is the child run by the loop below.
        return probe_child(&probe);
    }
    let dir = tempfile::tempdir().unwrap();
    // A host service a guest connects to through vsock: `<uds>_<port>`.
    let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("v.sock_52")).unwrap();
    for (probe, expected) in [
        // A guest-initiated vsock connection runs on the vCPU thread.
        ("vcpu-unix-connect", None),
        // virtio-fs activation: a vhost-user request with an eventfd attached.
        ("vcpu-vhost-user", None),
        ("event-loop-vhost-user", Some(libc::SIGSYS)),
        ("vcpu-inet-socket", Some(libc::SIGSYS)),
        ("vcpu-other-ioctl", Some(libc::SIGSYS)),
        ("vcpu-open", Some(libc::SIGSYS)),
        ("event-loop-exec-mapping", Some(libc::SIGSYS)),
        ("api-connect", Some(libc::SIGSYS)),
        // The kick signal may be sent; SIGUSR1 would end the process by
        // itself, so SIGSYS shows the filter stopped it first.
        ("main-kick", None),
        ("main-other-signal", Some(libc::SIGSYS)),
        // virtio-net: frames go out on a vCPU (TX notification) and come in
        // on a vCPU (RX notification) or the event loop (the tap readable);
        // taps are opened before the threads are confined, never after.
        ("vcpu-tap-io", None),
        ("event-loop-tap-io", None),
        ("vcpu-tap-open", Some(libc::SIGSYS)),
        // The vsock backend (`hull-vmm vsock`): its threads are started under its filter,
        // glibc's clone3 is answered ENOSYS so it falls back to a clone whose flags are
        // checked, and a new process is not allowed; guest-initiated connections and
        // vhost-user go through, anything else a guest or QEMU could want does not.
        ("vsock-thread", None),
        ("vsock-clone3-enosys", None),
        ("vsock-fork", Some(libc::SIGSYS)),
        ("vsock-unix-connect", None),
        ("vsock-vhost-user", None),
        ("vsock-inet-socket", Some(libc::SIGSYS)),
        ("vsock-open", Some(libc::SIGSYS)),
        ("vsock-exec-mapping", Some(libc::SIGSYS)),
        ("vsock-other-prctl", Some(libc::SIGSYS)),
    ] {
        let status = run_probe(probe, dir.path());
        match expected {
            None => assert_eq!(status.code(), Some(0), "{probe}: {status:?}"),
            Some(signal) => assert_eq!(status.signal(), Some(signal), "{probe}: {status:?}"),
        }
    }
}

/// The child side of `filters_allow_what_a_guest_may_cause_and_kill_the_rest`:
/// confines itself with one filter and makes one system call.
fn probe_child(probe: &str) {
    let dir = std::path::PathBuf::from(std::env::var("HULL_VMM_PROBE_DIR").unwrap());
    let kind = match probe.split('-').next().unwrap() {
        "vcpu" => ThreadKind::Vcpu,
        "event" => ThreadKind::EventLoop,
        "api" => ThreadKind::Api,
        "main" => ThreadKind::Main,
        "vsock" => ThreadKind::VsockBackend,
        other => panic!("unknown probe {other}"),
    };
    let path = std::ffi::CString::new(dir.join("v.sock_52").to_str().unwrap()).unwrap();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(path.as_bytes()) {
        *slot = *byte as libc::c_char;
    }
    // The thread the main filter's thread kicks, as it kicks vCPUs; it is
    // not confined, so it can return from the signal handler.
    let kick = libc::SIGRTMIN();
    // SAFETY: installs a handler that does nothing, for the kick signal.
    unsafe {
        extern "C" fn ignore(_: libc::c_int) {}
        libc::signal(kick, ignore as *const () as libc::sighandler_t);
    }
    let target = std::thread::spawn(|| loop {
        std::thread::park();
    });
    let target = std::os::unix::thread::JoinHandleExt::as_pthread_t(&target);
    // A connected pair, as with virtiofsd, and an fd to pass over it.
    let (frontend, backend) = std::os::unix::net::UnixStream::pair().unwrap();
    let eventfd = std::fs::File::open("/dev/null").unwrap();
    // A tap of this probe's own, in a network namespace of its own, made
    // before confinement as the VMM makes its taps.
    let mut tap = None;
    if probe.contains("-tap-") {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        if probe.ends_with("-io") {
            tap = Some(Tap::open("hullprobe0").unwrap());
        }
    }
    let filter = seccomp::compile(kind).unwrap();
    seccomp::try_confine_current_thread(kind, Some(&filter)).unwrap();
    // SAFETY: plain system calls on values owned here; the process exits
    // right after, so nothing outlives them.
    let ok = unsafe {
        match probe {
            "vcpu-unix-connect" | "api-connect" | "vsock-unix-connect" => {
                let fd = libc::socket(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                );
                fd >= 0
                    && libc::connect(
                        fd,
                        &address as *const _ as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                    ) == 0
            }
            "vcpu-vhost-user" | "event-loop-vhost-user" | "vsock-vhost-user" => {
                use std::os::fd::AsRawFd;
                send_with_fd(frontend.as_raw_fd(), eventfd.as_raw_fd())
                    && recv_with_fd(backend.as_raw_fd())
            }
            "vcpu-inet-socket" | "vsock-inet-socket" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) >= 0
            }
            "vcpu-other-ioctl" => {
                let mut size: libc::winsize = std::mem::zeroed();
                libc::ioctl(2, libc::TIOCGWINSZ, &mut size) == 0
            }
            "vcpu-open" | "vsock-open" => {
                libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) >= 0
            }
            "event-loop-exec-mapping" | "vsock-exec-mapping" => {
                let map = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                map != libc::MAP_FAILED
            }
            "vcpu-tap-io" | "event-loop-tap-io" => {
                // The tap is down: the kernel refuses the frame and has none
                // to give, but both calls ran.
                let tap = tap.as_ref().unwrap();
                let sent = tap.write_frame(&[0; 12], &[0; 60]);
                let received = tap.read_frame(&mut [0; 2048]);
                sent.is_err_and(|e| e.raw_os_error() == Some(libc::EIO))
                    && received.is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
            }
            "vcpu-tap-open" => Tap::open("hullprobe1").is_ok(),
            "main-kick" => libc::pthread_kill(target, kick) == 0,
            "main-other-signal" => libc::pthread_kill(target, libc::SIGUSR1) == 0,
            "vsock-thread" => std::thread::Builder::new()
                .name("probe".into())
                .spawn(|| 7)
                .is_ok_and(|thread| thread.join().ok() == Some(7)),
            "vsock-clone3-enosys" => {
                let rc = libc::syscall(libc::SYS_clone3, std::ptr::null_mut::<u8>(), 0usize);
                rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
            }
            "vsock-fork" => libc::fork() >= 0,
            "vsock-other-prctl" => libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) == 0,
            other => panic!("unknown probe {other}"),
        }
    };
    // SAFETY: ends the probe process without running anything else.
    unsafe { libc::_exit(if ok { 0 } else { 1 }) };
}

/// One byte with `fd` attached (SCM_RIGHTS), as vhost-user passes eventfds.
///
/// # Safety
/// `socket` and `fd` are open.
unsafe fn send_with_fd(socket: libc::c_int, fd: libc::c_int) -> bool {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
    let cmsg = libc::CMSG_FIRSTHDR(&msg);
    (*cmsg).cmsg_level = libc::SOL_SOCKET;
    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
    (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
    libc::CMSG_DATA(cmsg)
        .cast::<libc::c_int>()
        .write_unaligned(fd);
    libc::sendmsg(socket, &msg, 0) == 1
}

/// Receives what `send_with_fd` sent.
///
/// # Safety
/// `socket` is open.
unsafe fn recv_with_fd(socket: libc::c_int) -> bool {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) == 1
}
