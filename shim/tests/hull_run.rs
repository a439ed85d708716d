//! End to end: `hull run` boots the real guest kernel under QEMU (TCG on
//! these hosts) with the real initrd, runs busybox commands in a container,
//! and leaves nothing behind. Where the answer should not depend on the
//! runtime, the same command runs under runc in the same test for comparison.
//!
//! Needs root, QEMU, virtiofsd, runc and the assets `make test` builds; it
//! passes their paths in HULL_TEST_KERNEL, HULL_TEST_INITRD, HULL_TEST_ROOTFS.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Env {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    initrd: PathBuf,
    rootfs: PathBuf,
}

fn asset(var: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run the tests with `make test`"));
    assert!(
        path.exists(),
        "{var}={} does not exist: run `make test`",
        path.display()
    );
    path
}

impl Env {
    /// A configuration on the backend HULL_TEST_HYPERVISOR names (the
    /// default, QEMU here, when unset; `builtin` in the nested KVM lab).
    fn new() -> Env {
        Env::with_hypervisor(std::env::var("HULL_TEST_HYPERVISOR").ok().as_deref())
    }

    fn with_hypervisor(hypervisor: Option<&str>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            kernel: asset("HULL_TEST_KERNEL"),
            initrd: asset("HULL_TEST_INITRD"),
            rootfs: asset("HULL_TEST_ROOTFS"),
            dir,
        };
        let config = format!(
            "kernel = {:?}\ninitrd = {:?}\nstate_dir = {:?}\nagent_timeout_secs = 60\ncgroup_parent = {:?}\n",
            env.kernel,
            env.initrd,
            env.state_dir(),
            env.cgroup_parent(),
        );
        let config = match hypervisor {
            // hull-vmm as this build made it, next to `hull`.
            Some("builtin") => format!(
                "{config}hypervisor = \"builtin\"\nvmm = {:?}\n",
                Path::new(env!("CARGO_BIN_EXE_hull")).with_file_name("hull-vmm")
            ),
            Some(other) => format!("{config}hypervisor = {other:?}\n"),
            None => config,
        };
        std::fs::write(env.config(), config).unwrap();
        env
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The cgroup under which this test's sandboxes get theirs, in every
    /// hierarchy.
    fn cgroup_parent(&self) -> String {
        let dir = self.dir.path().file_name().unwrap().to_string_lossy();
        format!("hull-run-test-{}", dir.trim_start_matches('.'))
    }

    /// `<hierarchy>/<cgroup_parent>` in each cgroup hierarchy the host mounts.
    fn cgroup_parents(&self) -> Vec<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        mounts
            .lines()
            .filter_map(|line| {
                let (before, after) = line.split_once(" - ")?;
                let fstype = after.split(' ').next()?;
                (fstype == "cgroup" || fstype == "cgroup2").then_some(())?;
                before.split(' ').nth(4).map(PathBuf::from)
            })
            .map(|hierarchy| hierarchy.join(self.cgroup_parent()))
            .collect()
    }

    /// `hull --config <this env's> SUBCOMMAND`.
    fn command(&self, subcommand: &str) -> Command {
        let mut hull = Command::new(env!("CARGO_BIN_EXE_hull"));
        hull.arg("--config").arg(self.config()).arg(subcommand);
        hull
    }

    /// `hull run EXTRA --rootfs <this env's> -- COMMAND`.
    fn run_command(&self, extra: &[&str], command: &[&str]) -> Command {
        let mut run = self.command("run");
        run.args(extra)
            .arg("--rootfs")
            .arg(&self.rootfs)
            .arg("--")
            .args(command);
        run
    }

    fn hull(&self, extra: &[&str], command: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .run_command(extra, command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running hull");
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        });
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap();
        show_console_log_of_a_failed_boot(&output.stderr);
        output
    }

    fn run(&self, command: &[&str]) -> Output {
        self.hull(&[], command, b"")
    }

    /// Nothing of any sandbox may remain: no process that was given a path
    /// under the state dir (QEMU, virtiofsd), no mount there, no socket.
    fn assert_nothing_left(&self) {
        for parent in self.cgroup_parents() {
            let left: Vec<_> = walk(&parent).into_iter().filter(|p| p.is_dir()).collect();
            assert!(left.is_empty(), "cgroups left: {left:?}");
        }
        let state = self.state_dir();
        let state = state.to_string_lossy();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(
            !mounts.lines().any(|l| l.contains(&*state)),
            "mounts left under {state}"
        );
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                assert!(!cmdline.contains(&*state), "process left behind: {cmdline}");
            }
        }
        for entry in walk(Path::new(&*state)) {
            let name = entry.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name == "console.log" || name == "virtiofsd.log" || entry.is_dir(),
                "left in the state dir: {}",
                entry.display()
            );
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for parent in self.cgroup_parents() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            }
            found.push(path);
        }
    }
    found
}

/// Prints the guest console log that hull names after a failed boot or
/// run, into the test's captured output (shown if the test fails): in the
/// nested KVM lab the file is gone with the lab.
fn show_console_log_of_a_failed_boot(stderr: &[u8]) {
    let stderr = text(stderr);
    let Some((_, rest)) = ["guest console log: ", "guest console log is kept at "]
        .iter()
        .find_map(|marker| stderr.split_once(marker))
    else {
        return;
    };
    let path = rest.split_whitespace().next().unwrap_or_default();
    if let Ok(log) = std::fs::read_to_string(path) {
        eprintln!("--- {path} ---\n{log}\n---");
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `args` under runc on the same rootfs, with runc's default spec.
fn runc(rootfs: &Path, args: &[&str]) -> Output {
    let bundle = tempfile::tempdir().unwrap();
    let mut spec = oci_spec::runtime::Spec::default();
    let mut root = spec.root().clone().unwrap();
    // runc refuses a rootfs path that goes through a symlink.
    root.set_path(std::fs::canonicalize(rootfs).unwrap());
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    process.set_terminal(Some(false));
    spec.set_process(Some(process));
    spec.set_hostname(Some("hull".into()));
    std::fs::write(
        bundle.path().join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    // Unique per call: tests of this binary run runc side by side.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("hull-test-{}-{run}", std::process::id());
    let output = Command::new("runc")
        .arg("run")
        .arg("--bundle")
        .arg(bundle.path())
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .expect("runc is installed");
    let _ = Command::new("runc").args(["delete", "-f", &id]).output();
    output
}

#[test]
fn uname_shows_the_guest_kernel_not_the_hosts() {
    let env = Env::new();
    let output = env.run(&["uname", "-r"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let guest = text(&output.stdout).trim().to_owned();
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .trim()
        .to_owned();
    assert!(guest.ends_with("-hull"), "guest release {guest:?}");
    assert_ne!(guest, host);
    env.assert_nothing_left();
}

#[test]
fn stdout_stderr_and_exit_status_match_runc() {
    let env = Env::new();
    let command = ["sh", "-c", "echo out; echo err >&2; exit 7"];
    let hull = env.run(&command);
    let runc = runc(&env.rootfs, &command);
    assert_eq!(hull.status.code(), Some(7), "{}", text(&hull.stderr));
    assert_eq!(text(&hull.stdout), "out\n");
    assert_eq!(text(&hull.stderr), "err\n");
    assert_eq!(hull.status.code(), runc.status.code());
    assert_eq!(hull.stdout, runc.stdout);
    assert_eq!(hull.stderr, runc.stderr);
    env.assert_nothing_left();
}

#[test]
fn signals_behave_as_under_runc() {
    let env = Env::new();
    // The container's init is PID 1 of its PID namespace: a signal it has no
    // handler for, sent from inside, is dropped (runc: status 0). A child
    // killed by SIGTERM reports 128+15 through the shell.
    for command in [
        ["sh", "-c", "kill -TERM $$; echo survived"],
        ["sh", "-c", "sleep 100 & kill -TERM $!; wait $!"],
    ] {
        let hull = env.run(&command);
        let runc = runc(&env.rootfs, &command);
        assert_eq!(
            hull.status.code(),
            runc.status.code(),
            "{command:?}: {}",
            text(&hull.stderr)
        );
        assert_eq!(hull.stdout, runc.stdout, "{command:?}");
    }
    let child_killed = env.run(&["sh", "-c", "sleep 100 & kill -TERM $!; wait $!"]);
    assert_eq!(child_killed.status.code(), Some(143));
    env.assert_nothing_left();
}

/// SIGTERM while the VM boots stops the boot: `hull run` exits 128+15 at
/// once, having removed the sandbox, rather than dying and leaving its
/// mounts and cgroups or starting the container.
#[test]
fn a_signal_during_boot_removes_the_sandbox() {
    let env = Env::new();
    // Were the signal to reach the container instead, it would exit 7.
    let mut child = env
        .run_command(&[], &["sh", "-c", "trap 'exit 7' TERM; sleep 100 & wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running hull");
    // The VMM's pid file is written as it starts, seconds before the guest
    // kernel (under TCG) has booted to the agent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !walk(&env.state_dir())
        .iter()
        .any(|p| p.ends_with("vmm.pid"))
    {
        assert!(std::time::Instant::now() < deadline, "no VMM started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.stdin.take();
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    env.assert_nothing_left();
}

#[test]
fn stdin_is_piped_into_the_container() {
    let env = Env::new();
    let output = env.hull(&[], &["cat"], b"hi\n");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "hi\n");
    env.assert_nothing_left();
}

#[test]
fn ten_mib_of_stdout_arrive_intact() {
    let env = Env::new();
    let output = env.run(&["sh", "-c", "yes 0123456789abcdef | head -c 10485760"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let expected: Vec<u8> = b"0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(10 * 1024 * 1024)
        .collect();
    assert_eq!(output.stdout.len(), expected.len());
    assert!(output.stdout == expected, "10 MiB of stdout differ");
    env.assert_nothing_left();
}

#[test]
fn a_missing_command_exits_127_with_the_reason() {
    let env = Env::new();
    let output = env.run(&["no-such-command"]);
    assert_eq!(output.status.code(), Some(127));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("no-such-command"), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
    env.assert_nothing_left();
}

#[test]
fn a_missing_rootfs_is_refused_before_any_vm_starts() {
    let env = Env::new();
    let output = env
        .command("run")
        .args(["--rootfs", "/nonexistent/rootfs", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125));
    assert!(
        text(&output.stderr).contains("rootfs /nonexistent/rootfs does not exist"),
        "{}",
        text(&output.stderr)
    );
    assert!(!env.state_dir().exists() || walk(&env.state_dir()).is_empty());
}

/// `hypervisor = "builtin"` needs KVM with VT-x/AMD-V. On a host without
/// it (PVM, as where these tests are written, or no KVM) `hull run` refuses
/// at once, naming the host's virtualization and the way out, before a
/// state directory, virtiofsd or VMM exists. With VT-x/AMD-V the same run
/// boots the guest under hull-vmm (found next to this build's `hull`).
#[test]
fn builtin_hypervisor_runs_only_where_kvm_can_boot_linux() {
    use hull_vmm_api::host::Virtualization;
    let env = Env::with_hypervisor(Some("builtin"));

    let started = std::time::Instant::now();
    let output = env.hull(&["-v"], &["uname", "-r"], b"");
    let took = started.elapsed();
    let stderr = text(&output.stderr);
    match Virtualization::detect() {
        Virtualization::Hardware => {
            assert_eq!(output.status.code(), Some(0), "{stderr}");
            assert!(text(&output.stdout).trim().ends_with("-hull"), "{stderr}");
            assert!(stderr.contains("hull-vmm started"), "{stderr}");
        }
        host => {
            assert_eq!(output.status.code(), Some(125), "{stderr}");
            for part in [
                "hypervisor = \"builtin\" cannot run here",
                host.describe(),
                "PVM",
                "hypervisor = \"qemu\"",
            ] {
                assert!(stderr.contains(part), "{part:?} not in {stderr}");
            }
            assert!(
                took < std::time::Duration::from_secs(5),
                "refused only after {took:?}"
            );
            // Not even a log: nothing was started.
            assert!(
                !env.state_dir().exists() || walk(&env.state_dir()).is_empty(),
                "left in the state dir: {:?}",
                walk(&env.state_dir())
            );
        }
    }
    env.assert_nothing_left();
}

#[test]
fn a_kernel_that_cannot_boot_names_the_console_log() {
    let env = Env::new();
    let bogus = env.dir.path().join("not-a-kernel");
    std::fs::write(&bogus, vec![0u8; 4096]).unwrap();
    let output = env.hull(
        &["--kernel", bogus.to_str().unwrap(), "--boot-timeout", "20"],
        &["true"],
        b"",
    );
    assert_eq!(output.status.code(), Some(125));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("console.log"), "{stderr}");
    env.assert_nothing_left();
}

#[test]
fn a_guest_without_an_agent_times_out_naming_the_console_log() {
    let env = Env::new();
    // A guest that boots but never starts an agent: busybox as /init.
    let stage = env.dir.path().join("initrd");
    std::fs::create_dir_all(stage.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", stage.join("bin/busybox")).unwrap();
    std::fs::write(
        stage.join("init"),
        "#!/bin/busybox sh\n/bin/busybox sleep 1000\n",
    )
    .unwrap();
    Command::new("chmod")
        .args(["755"])
        .arg(stage.join("init"))
        .status()
        .unwrap();
    let initrd = env.dir.path().join("no-agent.img");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio --quiet -o -H newc > {}",
            stage.display(),
            initrd.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let output = env.hull(
        &["--initrd", initrd.to_str().unwrap(), "--boot-timeout", "4"],
        &["true"],
        b"",
    );
    assert_eq!(output.status.code(), Some(125));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("did not say that it serves within"),
        "{stderr}"
    );
    assert!(stderr.contains("console.log"), "{stderr}");
    env.assert_nothing_left();
}

#[test]
fn tty_gives_the_process_a_terminal() {
    let env = Env::new();
    let output = env.hull(&["--tty"], &["sh", "-c", "tty; echo done"], b"");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout).replace('\r', "");
    assert!(stdout.starts_with("/dev/pts/"), "{stdout:?}");
    assert!(stdout.ends_with("done\n"), "{stdout:?}");
    env.assert_nothing_left();
}

/// `--vcpus 2` gives the VM two CPUs and the guest brings both up (on
/// hull-vmm: the second through INIT/SIPI), so the container sees two.
#[test]
fn two_vcpus_give_the_container_two_cpus() {
    let env = Env::new();
    let output = env.hull(
        &["--vcpus", "2"],
        &["sh", "-c", "nproc; grep -c ^processor /proc/cpuinfo"],
        b"",
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "2\n2\n");
    env.assert_nothing_left();
}

#[test]
fn an_impossible_vcpu_count_is_refused_before_any_vm_starts() {
    let env = Env::new();
    for count in ["0", "65"] {
        let output = env.hull(&["--vcpus", count], &["true"], b"");
        assert_eq!(output.status.code(), Some(2), "--vcpus {count}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains("--vcpus"), "{stderr}");
        assert!(stderr.contains(count), "{stderr}");
    }
    assert!(!env.state_dir().exists() || walk(&env.state_dir()).is_empty());
}

/// The median of the `hull bench` table row that starts with `name`, in ms.
fn bench_median_ms(report: &str, name: &str) -> f64 {
    let row = report
        .lines()
        .find(|line| line.starts_with(&format!("| {name}")))
        .unwrap_or_else(|| panic!("no row `{name}` in:\n{report}"));
    let median = row.split('|').nth(2).unwrap().trim();
    median
        .strip_suffix(" ms")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("median `{median}` of `{name}` is not in ms"))
}

#[test]
fn bench_times_a_raw_boot_of_the_same_guest_beside_hull_run() {
    let env = Env::new();
    let output = env
        .command("bench")
        .args(["-n", "1", "--burst", "0", "--idle", "0"])
        .args(["--stdout-mb", "0", "--rootfs"])
        .arg(&env.rootfs)
        .output()
        .unwrap();
    let report = text(&output.stdout);
    assert!(output.status.success(), "{report}{}", text(&output.stderr));
    // The raw boot ends when the guest's PID 1 powers off; `hull run` boots
    // the same guest, then runs a container and ends the VM, so it must
    // take longer.
    let raw = bench_median_ms(&report, "raw boot");
    let run = bench_median_ms(&report, "hull run -- true: whole run");
    assert!(raw > 0.0 && raw < run, "{report}");
    assert!(report.contains("hull run -- true (whole run) ÷ raw boot"));
    env.assert_nothing_left();
}

/// The shared memory (the guest's RAM, a memfd) of the one VMM running
/// under `state`, in KiB.
fn vmm_rss_shmem_kib(state: &Path) -> u64 {
    let pid_file = walk(state)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "vmm.pid"))
        .expect("a running sandbox has a vmm.pid");
    let pid = std::fs::read_to_string(pid_file).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("RssShmem:"))
        .expect("RssShmem in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Free page reporting: QEMU's virtio-balloon, and hull-vmm's own in the
/// nested lab (vmm/src/devices/virtio/balloon.rs).
#[test]
fn memory_the_guest_frees_returns_to_the_host() {
    use std::io::{BufRead, BufReader};
    let env = Env::new();
    let fill_then_free = "head -c 50000000 /dev/zero > /dev/shm/fill && echo filled && \
                          read a && rm /dev/shm/fill && echo freed && read b";
    let mut child = env
        .run_command(&[], &["sh", "-c", fill_then_free])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "filled");
    let filled = vmm_rss_shmem_kib(&env.state_dir());
    stdin.write_all(b"\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "freed");
    // The guest reports free blocks two seconds after they are freed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Reported in 2 MiB blocks (agent/src/init.rs): a little of the 48 MiB
    // stays in blocks the guest's other pages share.
    const RETURNED_KIB: u64 = 32 * 1024;
    let mut now = filled;
    while now + RETURNED_KIB > filled && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
        now = vmm_rss_shmem_kib(&env.state_dir());
    }
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        now + RETURNED_KIB <= filled,
        "the guest freed 50 MB but the VMM's guest memory went from {filled} KiB only to {now} KiB"
    );
    env.assert_nothing_left();
}
