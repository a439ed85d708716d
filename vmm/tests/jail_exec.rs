//! `hull-vmm jail`, which confines itself and execs a program (`hull_vmm::jail::exec`):
//! a shell sees only its new root (read-only /usr and the usr-merge links, the devices
//! asked for) and reports what it can do, while the test checks it from outside through
//! /proc: credentials, capabilities, namespaces, descriptors, limits, cgroups, and that
//! nothing was mounted on the host. The same as root of a user namespace the test made;
//! QEMU under the jail running a test guest; and bad arguments refused by name.
//!
//! Needs root, a cgroup v2 hierarchy and the cgroup v1 `pids` hierarchy (this host's hybrid
//! layout), /dev/kvm and /dev/net/tun to copy, gcc and qemu-system-x86_64.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

mod common;

use common::cgroup::TestCgroup;
use common::{build, pass_fds, status_field, Vmm, VMM};

const NOBODY: u32 = 65534;

/// `--symlink` arguments that give the new root the host's usr-merge links
/// (`usr/bin:/bin` and so on), as the shim computes them.
fn usr_merge_symlinks() -> Vec<String> {
    let mut args = Vec::new();
    for link in ["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"] {
        if let Ok(target) = std::fs::read_link(link) {
            args.push("--symlink".to_owned());
            args.push(format!("{}:{link}", target.display()));
        }
    }
    args
}

/// Mount points of this process's mount namespace under `dir`.
fn host_mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|line| line.split(' ').nth(4).unwrap().to_owned())
        .filter(|point| Path::new(point).starts_with(&dir))
        .collect()
}

/// A jailed program, killed and reaped on drop.
struct Jailed {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Jailed {
    fn spawn(command: &mut Command) -> Jailed {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running hull-vmm jail");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Jailed { child, stdout }
    }

    /// Lines of the program's output up to `ready`.
    fn read_until_ready(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).unwrap() == 0 {
                let mut stderr = String::new();
                std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr)
                    .unwrap();
                panic!("the program ended before `ready`: {lines:?}, stderr: {stderr}");
            }
            let line = line.trim_end().to_owned();
            if line == "ready" {
                return lines;
            }
            lines.push(line);
        }
    }

    /// Lets the program past its `read` and returns its exit code.
    fn finish(mut self) -> Option<i32> {
        self.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        self.wait().code()
    }

    /// Waits for the exit, ten seconds at most.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the program did not end"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Jailed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

fn namespace(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[test]
fn jailed_program_sees_only_its_root_and_runs_as_nobody_without_privileges() {
    // Declared first, so they are removed after the program is gone.
    let unified = TestCgroup::v2("exec");
    let pids = TestCgroup::v1("pids", "exec");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // Under the tmpfs the jail mounts over the root, in its namespace only.
    std::fs::write(root.join("hidden-by-the-tmpfs"), b"").unwrap();
    let mounts_before = host_mounts_under(dir.path());

    // Descriptor 5 is kept; 6 is left open across exec by mistake and must be closed.
    let (kept_read, kept_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let leaked = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let script = "id -u; id -g; ls -A /; ls -A /dev; \
                  echo x > /dev/null && echo null-ok; \
                  touch /usr/hull-jail-test 2>&1; touch /new-file 2>&1; \
                  test -e /etc/passwd && echo passwd-present || echo passwd-absent; \
                  echo through-5 >&5 && echo kept-ok; \
                  (echo leak >&6) 2>/dev/null && echo leaked || echo not-leaked; \
                  pwd; echo ready; read line";
    let mut command = Command::new(VMM);
    command
        .args([
            "jail",
            "--root",
            root.to_str().unwrap(),
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--unshare",
            "net,ipc,uts",
            "--ro-bind",
            "/usr",
        ])
        .args(usr_merge_symlinks())
        .args(["--dev", "null", "--dev", "zero", "--dev", "kvm"])
        .args(["--cgroup", unified.path.to_str().unwrap()])
        .args(["--cgroup", pids.path.to_str().unwrap()])
        .args(["--rlimit", "nofile=64:128", "--rlimit", "core=0"])
        .args(["--rlimit", "fsize=1048576"])
        .args(["--keep-fd", "5", "--", "/bin/sh", "-c", script]);
    pass_fds(
        &mut command,
        &[(kept_write.as_raw_fd(), 5), (leaked.as_raw_fd(), 6)],
    );
    let mut jailed = Jailed::spawn(&mut command);
    drop(kept_write);
    let pid = jailed.child.id();
    let output = jailed.read_until_ready();

    // What the program saw.
    let mut links: Vec<String> = usr_merge_symlinks()
        .iter()
        .filter(|arg| *arg != "--symlink")
        .map(|arg| arg.rsplit_once(":/").unwrap().1.to_owned())
        .collect();
    links.extend(["dev".to_owned(), "usr".to_owned()]);
    links.sort();
    let ls_root: Vec<String> = output[2..2 + links.len()].to_vec();
    assert_eq!(&output[..2], ["65534", "65534"], "{output:?}");
    assert_eq!(ls_root, links, "only the binds, links and /dev: {output:?}");
    let rest = &output[2 + links.len()..];
    assert_eq!(&rest[..3], ["kvm", "null", "zero"], "{output:?}");
    assert_eq!(rest[3], "null-ok");
    assert!(rest[4].contains("Read-only file system"), "{output:?}");
    assert!(rest[5].contains("Read-only file system"), "{output:?}");
    assert_eq!(
        &rest[6..],
        ["passwd-absent", "kept-ok", "not-leaked", "/"],
        "{output:?}"
    );
    let mut through_5 = String::new();
    BufReader::new(std::fs::File::from(kept_read))
        .read_line(&mut through_5)
        .unwrap();
    assert_eq!(through_5, "through-5\n");

    // What the host sees of it.
    let ids = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    assert_eq!(status_field(pid, "Uid:"), ids);
    assert_eq!(status_field(pid, "Gid:"), ids);
    assert_eq!(status_field(pid, "Groups:"), "");
    for field in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:"] {
        assert_eq!(status_field(pid, field), "0000000000000000", "{field}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    for kind in ["mnt", "net", "ipc", "uts"] {
        assert_ne!(
            namespace(&pid.to_string(), kind),
            namespace("self", kind),
            "{kind} namespace"
        );
    }
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|fd| fd.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(fds.contains(&"5".to_owned()), "{fds:?}");
    assert!(!fds.contains(&"6".to_owned()), "{fds:?}");
    assert_eq!(limit(pid, "Max open files"), ("64".into(), "128".into()));
    assert_eq!(limit(pid, "Max core file size"), ("0".into(), "0".into()));
    assert_eq!(
        limit(pid, "Max file size"),
        ("1048576".into(), "1048576".into())
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroups.lines().any(|l| l == format!("0::{}", unified.name)),
        "{cgroups}"
    );
    assert!(
        cgroups
            .lines()
            .any(|l| l.ends_with(&format!(":pids:{}", pids.name))),
        "{cgroups}"
    );
    // The device nodes, through the program's own root.
    let dev = |name: &str| std::fs::metadata(format!("/proc/{pid}/root/dev/{name}")).unwrap();
    let (kvm, null) = (dev("kvm"), dev("null"));
    assert_eq!(
        (kvm.uid(), kvm.gid(), kvm.permissions().mode() & 0o777),
        (NOBODY, NOBODY, 0o600)
    );
    assert_eq!(kvm.rdev(), std::fs::metadata("/dev/kvm").unwrap().rdev());
    assert_eq!((null.uid(), null.permissions().mode() & 0o777), (0, 0o666));
    // The host's view of the root directory is untouched.
    assert_eq!(host_mounts_under(dir.path()), mounts_before);
    assert!(root.join("hidden-by-the-tmpfs").exists());

    assert_eq!(jailed.finish(), Some(0));
    assert_eq!(host_mounts_under(dir.path()), mounts_before);
    let left: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

/// A user namespace made as a caller would: a child process unshares it, the parent
/// writes its maps and opens it.
struct UserNamespace {
    holder: Child,
    fd: OwnedFd,
}

impl UserNamespace {
    fn create(first_host_id: u32) -> UserNamespace {
        let mut command = Command::new("/bin/sleep");
        command.arg("600");
        // SAFETY: unshare is a plain system call in the forked child.
        unsafe {
            command.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let holder = command.spawn().unwrap();
        let pid = holder.id();
        for map in ["uid_map", "gid_map"] {
            std::fs::write(
                format!("/proc/{pid}/{map}"),
                format!("0 {first_host_id} 65536"),
            )
            .unwrap();
        }
        let fd = std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .unwrap()
            .into();
        UserNamespace { holder, fd }
    }
}

impl Drop for UserNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn program_runs_as_root_of_the_user_namespace_it_is_given() {
    let namespace_holder = UserNamespace::create(100000);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut command = Command::new(VMM);
    command
        .args([
            "jail",
            "--root",
            root.to_str().unwrap(),
            "--userns-fd",
            "3",
            "--unshare",
            "net",
            "--ro-bind",
            "/usr",
        ])
        .args(usr_merge_symlinks())
        .args(["--dev", "null", "--dev", "net/tun"])
        .args(["--", "/bin/sh", "-c", "id -u; id -g; echo ready; read line"]);
    pass_fds(&mut command, &[(namespace_holder.fd.as_raw_fd(), 3)]);
    let mut jailed = Jailed::spawn(&mut command);
    let pid = jailed.child.id();
    let output = jailed.read_until_ready();
    assert_eq!(output, ["0", "0"], "root inside");
    let host = "100000\t100000\t100000\t100000";
    assert_eq!(status_field(pid, "Uid:"), host, "100000 from the host");
    assert_eq!(status_field(pid, "Gid:"), host);
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(
        namespace(&pid.to_string(), "user"),
        namespace(&namespace_holder.holder.id().to_string(), "user")
    );
    assert_ne!(namespace(&pid.to_string(), "net"), namespace("self", "net"));
    // The device only the program may use belongs to the namespace's root.
    let tun = std::fs::metadata(format!("/proc/{pid}/root/dev/net/tun")).unwrap();
    assert_eq!((tun.uid(), tun.gid()), (100000, 100000));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert_eq!(fds, 3, "the namespace's descriptor is not inherited");
    assert_eq!(jailed.finish(), Some(0));
}

/// QEMU as the shim will start it: under the jail, as nobody, without a network, with its
/// own seccomp sandbox, a test guest on the serial console and QMP on a descriptor.
#[test]
fn qemu_runs_a_guest_in_the_jail() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = build("pvh.S", dir.path());
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let (qmp, qmp_for_qemu) = UnixStream::pair().unwrap();
    let mut command = Command::new(VMM);
    command
        .args([
            "jail",
            "--root",
            root.to_str().unwrap(),
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--unshare",
            "net,ipc,uts",
            "--ro-bind",
            "/usr",
            "--ro-bind",
            &format!("{}:/guest/pvh", kernel.display()),
        ])
        .args(usr_merge_symlinks())
        .args(["--dev", "null", "--dev", "urandom", "--keep-fd", "3"])
        .args(["--rlimit", "core=0", "--"])
        .args([
            "/usr/bin/qemu-system-x86_64",
            "-M",
            "microvm",
            "-accel",
            "tcg",
            "-m",
            "32",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-kernel",
            "/guest/pvh",
            "-append",
            "console=ttyS0 jailed-qemu",
            "-chardev",
            "socket,id=qmp,fd=3",
            "-mon",
            "chardev=qmp,mode=control",
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
    pass_fds(&mut command, &[(qmp_for_qemu.as_raw_fd(), 3)]);
    let mut jailed = Jailed::spawn(&mut command);
    drop(qmp_for_qemu);
    let pid = jailed.child.id();

    let mut serial = String::new();
    jailed.stdout.read_line(&mut serial).unwrap();
    assert_eq!(
        serial,
        "hull-payload: pvh entry, cmdline=console=ttyS0 jailed-qemu\n"
    );
    qmp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut replies = BufReader::new(qmp.try_clone().unwrap());
    let mut request = |line: &str| {
        if !line.is_empty() {
            (&qmp).write_all(format!("{line}\n").as_bytes()).unwrap();
        }
        let mut reply = String::new();
        replies.read_line(&mut reply).unwrap();
        reply
    };
    assert!(request("").starts_with("{\"QMP\""));
    assert!(request(r#"{"execute":"qmp_capabilities"}"#).contains("\"return\""));
    let status = request(r#"{"execute":"query-status"}"#);
    assert!(status.contains("\"running\": true"), "{status}");

    let ids = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    assert_eq!(status_field(pid, "Uid:"), ids);
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    // QEMU's own filter (-sandbox on), which the jail lets it install.
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    assert_ne!(namespace(&pid.to_string(), "net"), namespace("self", "net"));

    let quit = request(r#"{"execute":"quit"}"#);
    assert!(
        quit.contains("\"return\"") || quit.contains("SHUTDOWN"),
        "{quit}"
    );
    assert_eq!(jailed.wait().code(), Some(0), "QEMU's exit");
}

#[test]
fn bad_arguments_are_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let root = root.to_str().unwrap();
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    let not_cgroup = dir.path().to_str().unwrap();
    let mounts_before = host_mounts_under(dir.path());
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--"], vec!["PROGRAM"]),
        (vec!["--root", root], vec!["PROGRAM"]),
        (vec!["--", "bin/true"], vec!["bin/true", "absolute"]),
        (vec!["--", missing], vec![missing]),
        (vec!["--rlimit", "cpu=1", "--", "/bin/true"], vec!["cpu=1"]),
        (
            vec!["--rlimit", "nofile=x", "--", "/bin/true"],
            vec!["nofile=x"],
        ),
        (vec!["--uid", "65534", "--", "/bin/true"], vec!["--gid"]),
        (vec!["--gid", "65534", "--", "/bin/true"], vec!["--uid"]),
        (
            vec!["--uid", "0", "--gid", "0", "--", "/bin/true"],
            vec!["--uid 0", "non-root"],
        ),
        (
            vec!["--root", root, "--ro-bind", missing, "--", "/usr/bin/true"],
            vec![missing],
        ),
        (
            vec![
                "--root",
                root,
                "--ro-bind",
                "/usr/lib",
                "--",
                "/usr/bin/true",
            ],
            vec!["/usr/bin/true", "not reachable"],
        ),
        (
            vec!["--cgroup", not_cgroup, "--", "/bin/true"],
            vec![not_cgroup, "not a cgroup"],
        ),
        (vec!["--unshare", "pid", "--", "/bin/true"], vec!["\"pid\""]),
        (
            vec!["--root", root, "--dev", "sda", "--", "/bin/true"],
            vec!["\"sda\""],
        ),
        (
            vec!["--keep-fd", "77", "--", "/bin/true"],
            vec!["--keep-fd 77"],
        ),
        (
            vec!["--userns-fd", "0", "--", "/bin/true"],
            vec!["descriptor 0"],
        ),
        (vec!["--ro-bind", "/usr", "--", "/bin/true"], vec!["--root"]),
    ];
    for (args, named) in cases {
        let (status, stderr) = Vmm::start(
            Command::new(VMM)
                .arg("jail")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .wait(Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        for name in named {
            assert!(stderr.contains(name), "{args:?}: {name:?} not in {stderr}");
        }
    }
    // Nothing was mounted or made.
    assert_eq!(host_mounts_under(dir.path()), mounts_before);
    assert_eq!(std::fs::read_dir(root).unwrap().count(), 0);
}
