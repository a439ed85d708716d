//! hull-vmm's jail (`hull_vmm::jail`), seen from outside through /proc: the
//! 64-bit test guest runs with the VMM pivoted into a directory, in network
//! namespace of its own, as uid and gid 65534, in a cgroup the test creates,
//! with its open files bounded, no core dumps and none of the descriptors
//! its caller leaked, and still answers the host over
//! the hybrid-vsock socket inside the jail and connects out to a host
//! service there. The virtio-fs guest, jailed, speaks FUSE to a virtiofsd
//! outside the jail over the session opened before it. Bad jail input is
//! refused with an error that names it.
//!
//! Needs root (for /dev/kvm, mounts and cgroups), gcc, virtiofsd, and a
//! writable cgroup v2 hierarchy at /sys/fs/cgroup (or
//! /sys/fs/cgroup/unified, in systemd's hybrid layout).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::cgroup::TestCgroup;
use common::virtiofsd::VirtiofsdProcess;
use common::{
    assert_log_contains, assert_refused_naming, build, pass_fds, require_kvm, serve_port_5200,
    status_field, vmm_command, vsock_ping_pong, ApiClient, Vmm,
};

const NOBODY: u32 = 65534;

/// Soft and hard value of the line `name` of /proc/<pid>/limits.
fn limit(pid: u32, name: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/limits"));
    let mut values = line.split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

/// What every descriptor of `pid` refers to.
fn open_files_of(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
        .collect()
}

/// Mount point and root (the directory mounted there) of every mount
/// `pid` sees.
fn mounts(pid: u32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields[4].to_owned(), fields[3].to_owned())
        })
        .collect()
}

/// Waits until hull-vmm's main thread is in seccomp filter mode: it confines
/// itself last, after the jail and every other thread.
fn wait_until_confined(vmm: &mut Vmm) {
    let pid = vmm.child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_field(pid, "Seccomp:") != "2" {
        if let Some(status) = vmm.child.try_wait().unwrap() {
            let stderr = vmm.stderr();
            panic!("hull-vmm ended before confining itself ({status:?}): {stderr}");
        }
        assert!(Instant::now() < deadline, "hull-vmm never confined itself");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn jailed_vmm_runs_as_nobody_in_its_cgroup_and_sees_only_the_jail() {
    require_kvm();
    // Declared first, so it is removed after the VMM is gone.
    let cgroup = TestCgroup::v2("vmm");
    let dir = tempfile::tempdir().unwrap();
    // The guest kernel and serial log stay outside the jail: opened before.
    let kernel = build("payload64.c", dir.path());
    let serial = dir.path().join("serial.log");
    let jail = dir.path().join("jail");
    std::fs::create_dir(&jail).unwrap();
    // The jailed VMM removes its sockets at exit, so the directory is its.
    std::os::unix::fs::chown(&jail, Some(NOBODY), Some(NOBODY)).unwrap();
    let uds = jail.join("v.sock");
    let api = jail.join("api.sock");
    let service = serve_port_5200(&uds);
    std::os::unix::fs::chown(&service.path, Some(NOBODY), Some(NOBODY)).unwrap();

    let mut command = vmm_command(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "32",
        "--serial-log",
        serial.to_str().unwrap(),
        "--vsock-cid",
        "3",
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--api-sock",
        api.to_str().unwrap(),
        "--pvm-capable",
        "--jail",
        jail.to_str().unwrap(),
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--cgroup",
        cgroup.path.to_str().unwrap(),
    ]);
    // A descriptor the caller leaks, open across exec: hull-vmm must close it.
    let leaked = dir.path().join("leaked");
    std::fs::write(&leaked, b"").unwrap();
    let leaked_file = std::fs::File::open(&leaked).unwrap();
    pass_fds(&mut command, &[(leaked_file.as_raw_fd(), 9)]);
    let mut vmm = Vmm::start(&mut command);
    drop(leaked_file);
    let pid = vmm.child.id();

    // The guest waits for the host's connection meanwhile.
    wait_until_confined(&mut vmm);
    let ids = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    assert_eq!(
        status_field(pid, "Uid:"),
        ids,
        "real, effective, saved, fs uid"
    );
    assert_eq!(
        status_field(pid, "Gid:"),
        ids,
        "real, effective, saved, fs gid"
    );
    assert_eq!(status_field(pid, "Groups:"), "", "supplementary groups");
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "CapBnd:"), "0000000000000000");

    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let unified = format!("0::{}", cgroup.name);
    assert!(
        cgroups.lines().any(|line| line == unified),
        "{unified} not in:\n{cgroups}"
    );
    let procs = std::fs::read_to_string(cgroup.path.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), pid.to_string());

    let namespace =
        |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    for kind in ["mnt", "net"] {
        assert_ne!(
            namespace(&pid.to_string(), kind),
            namespace("self", kind),
            "{kind} namespace"
        );
    }
    let open_files = hull_vmm::jail::process::CONFINED_OPEN_FILES.min(
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .unwrap()
            .1,
    );
    assert_eq!(
        limit(pid, "Max open files"),
        (open_files.to_string(), open_files.to_string())
    );
    assert_eq!(limit(pid, "Max core file size"), ("0".into(), "0".into()));
    let fds = open_files_of(pid);
    assert!(
        !fds.iter().any(|target| target == &leaked),
        "the leaked descriptor is still open: {fds:?}"
    );
    let mounts = mounts(pid);
    let canonical_jail = jail.canonicalize().unwrap();
    assert_eq!(mounts.len(), 1, "only the jail is mounted: {mounts:?}");
    let (mount_point, root) = &mounts[0];
    assert_eq!(mount_point, "/", "{mounts:?}");
    assert!(
        canonical_jail.ends_with(root.trim_start_matches('/')),
        "the root mount shows {root}, not the jail {}",
        canonical_jail.display()
    );
    for host in ["/proc", "/usr", "/sys", "/dev", "/tmp"] {
        assert!(
            !mounts.iter().any(|(point, _)| point == host),
            "{host} visible"
        );
    }

    // The API socket inside the jail still answers.
    assert_eq!(ApiClient::connect(&api).request("status"), "running\n");

    vsock_ping_pong(&uds);
    assert_eq!(service.received(), b"hello");
    let log = vmm.wait_success(Duration::from_secs(30), &serial, "");
    assert_log_contains(
        &log,
        &[
            "hull-payload: answered",
            "hull-payload: port 5200 says hi from the host",
            "hull-payload: done",
        ],
    );
    // Removed from inside the jail, by uid 65534, through their jail paths.
    assert!(!uds.exists(), "the vsock socket is removed");
    assert!(!api.exists(), "the API socket is removed");
}

/// The shim starts hull-vmm with `PR_SET_PDEATHSIG(SIGKILL)`, so that a
/// killed shim cannot leak a VM. The kernel clears that signal when the
/// jail changes the VMM's uid; the jail sets it again. The parent here is
/// a thread (the death signal follows the thread that forked), which ends
/// once the VMM is jailed and confined.
#[test]
fn jailed_vmm_still_dies_with_its_parent() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("payload64.c", dir.path());
    let jail = dir.path().join("jail");
    std::fs::create_dir(&jail).unwrap();
    let args: Vec<String> = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "32",
        "--vsock-cid",
        "3",
        "--vsock-uds",
        jail.join("v.sock").to_str().unwrap(),
        "--pvm-capable",
        "--jail",
        jail.to_str().unwrap(),
        "--uid",
        "65534",
        "--gid",
        "65534",
    ]
    .map(String::from)
    .to_vec();
    let parent = std::thread::spawn(move || {
        let mut command = vmm_command(&args);
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut vmm = Vmm::start(&mut command);
        wait_until_confined(&mut vmm);
        assert!(status_field(vmm.child.id(), "Uid:").starts_with(&NOBODY.to_string()));
        vmm
    });
    // The thread that started the VMM has ended; the guest still waits for
    // a vsock connection, so only the death signal ends the VMM.
    let mut vmm = parent.join().unwrap();
    let status = vmm
        .wait_for(Duration::from_secs(10))
        .expect("the jailed hull-vmm outlived its parent");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

/// virtio-fs connects to virtiofsd while the VM is built, before the jail:
/// the socket may be outside the jail, and is named here relative to
/// hull-vmm's working directory, which the jail changes. The rings start
/// (vhost-user on a jailed vCPU) when the guest sets DRIVER_OK.
#[test]
fn jailed_vmm_keeps_the_virtio_fs_session_it_opened_before_the_jail() {
    require_kvm();
    let mut virtiofsd = VirtiofsdProcess::start();
    std::fs::write(virtiofsd.share().join("hello.txt"), vec![b'j'; 777]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("fs.c", dir.path());
    let serial = dir.path().join("serial.log");
    let jail = dir.path().join("jail");
    std::fs::create_dir(&jail).unwrap();
    let socket = virtiofsd.socket();
    let (socket_dir, socket_name) = (socket.parent().unwrap(), socket.file_name().unwrap());
    let fs = format!("{},tag=hullfs", socket_name.to_str().unwrap());

    let vmm = Vmm::start(
        vmm_command(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory-mib",
            "32",
            "--serial-log",
            serial.to_str().unwrap(),
            "--fs",
            &fs,
            "--pvm-capable",
            "--jail",
            jail.to_str().unwrap(),
            "--uid",
            "65534",
            "--gid",
            "65534",
        ])
        .current_dir(socket_dir),
    );
    let log = vmm.wait_success(Duration::from_secs(30), &serial, &virtiofsd.log());
    assert_log_contains(
        &log,
        &[
            "hull-payload: virtio-fs ready",
            "fuse init error=0 major=7",
            "lookup hello.txt error=0 size=777",
            "hull-payload: done",
        ],
    );
    let status = virtiofsd.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", virtiofsd.log());
}

#[test]
fn bad_jail_input_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let jail = dir.path().join("jail");
    std::fs::create_dir(&jail).unwrap();
    let jail = jail.to_str().unwrap();
    let inside = format!("{jail}/v.sock");
    let outside = dir.path().join("v.sock");
    let outside = outside.to_str().unwrap();
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    let base = ["--kernel", "/k", "--pvm-capable"];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            with(&["--jail", missing, "--uid", "1", "--gid", "1"]),
            vec![missing],
        ),
        (with(&["--uid", "65534"]), vec!["--jail"]),
        (with(&["--cgroup", "/sys/fs/cgroup/x"]), vec!["--jail"]),
        (with(&["--jail", jail, "--gid", "1"]), vec!["--uid"]),
        (
            with(&["--jail", jail, "--uid", "0", "--gid", "1"]),
            vec!["uid = 0"],
        ),
        (
            with(&["--jail", "relative/jail", "--uid", "1", "--gid", "1"]),
            vec!["relative/jail", "absolute"],
        ),
        (
            with(&[
                "--jail", jail, "--uid", "1", "--gid", "1", "--cgroup", missing,
            ]),
            vec![missing, "cgroup"],
        ),
        (
            with(&["--jail", jail, "--uid", "1", "--gid", "1", "--cgroup", jail]),
            vec![jail, "not a cgroup v2 directory"],
        ),
        (
            with(&[
                "--jail",
                jail,
                "--uid",
                "1",
                "--gid",
                "1",
                "--vsock-cid",
                "3",
                "--vsock-uds",
                outside,
            ]),
            vec!["vsock socket", outside, "not inside the jail"],
        ),
        (
            with(&[
                "--jail",
                jail,
                "--uid",
                "1",
                "--gid",
                "1",
                "--vsock-cid",
                "3",
                "--vsock-uds",
                &inside,
                "--api-sock",
                outside,
            ]),
            vec!["API socket", outside, "not inside the jail"],
        ),
    ];
    for (args, named) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused_naming(&args, &named);
    }

    // The same checks apply to a configuration file's [jail].
    let config = dir.path().join("vm.toml");
    std::fs::write(
        &config,
        format!("[boot]\nkernel = \"/k\"\n[jail]\nroot = \"{missing}\"\nuid = 1\ngid = 1\n"),
    )
    .unwrap();
    assert_refused_naming(&["--config", config.to_str().unwrap()], &[missing]);
    // Nothing was created by the refused runs.
    let left: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        left.iter().filter(|p| !p.ends_with("vm.toml")).count(),
        1,
        "{left:?}"
    );
    assert!(Path::new(jail).read_dir().unwrap().next().is_none());
}
