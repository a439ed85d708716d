//! End-to-end harness for Hull's containerd path.
//!
//! Each test starts its own containerd (`scripts/private-containerd.sh`) in a
//! fresh directory under /tmp, with Hull's state directory inside it, imports
//! the local busybox image and drives everything through `ctr`, so the same
//! scenario can run under `io.containerd.runc.v2` and `io.containerd.hull.v2`
//! and the answers can be compared. Dropping the [`Containerd`] stops it and
//! removes everything it started, also when the test panicked.
//!
//! [`cri`] does the same through containerd's CRI plugin, the way the
//! kubelet drives a runtime: pods with networking, volumes, exec, logs and
//! stats, under a runtime handler (`runc`, `hull`).

pub mod artifacts;
pub mod config_spec;
pub mod cri;
pub mod pool;
pub mod process;
pub mod scenarios;
pub mod soak;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub use process::{describe, exit_code, text, Background};

/// Hull's runtime type.
pub const HULL: &str = "io.containerd.hull.v2";
/// runc's runtime type, the reference behaviour.
pub const RUNC: &str = "io.containerd.runc.v2";
/// The containerd namespace every test uses.
pub const NAMESPACE: &str = "hull-test";
/// The busybox image. `ctr` does not normalise names (`local/busybox:latest`
/// is not found), so tests use the full name CRI would resolve to.
pub const BUSYBOX: &str = "docker.io/local/busybox:latest";
/// The busybox image with Env FOO=bar, WorkingDir /tmp, User 65534:65534.
pub const BUSYBOX_CUSTOM: &str = "docker.io/local/busybox-custom:latest";

/// How long one `ctr` command may take before the harness kills it.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);

const SHIM_BINARY: &str = "containerd-shim-hull-v2";

/// The Hull configuration a test's containerd hands to the shim (through
/// `HULL_CONFIG`). `state_dir` is always the test's own directory.
#[derive(Clone, Debug, Default)]
pub struct HullConfig {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub agent_timeout_secs: Option<u64>,
    /// Raw TOML lines appended to the file (an unknown key, for example).
    pub extra: String,
}

impl HullConfig {
    /// The guest assets `make test` names in HULL_TEST_KERNEL and
    /// HULL_TEST_INITRD, and the agent timeout in HULL_TEST_AGENT_TIMEOUT
    /// where set (`make test-kvm`: the lab's one emulated CPU boots slowly).
    pub fn from_env() -> Self {
        let asset = |var: &str| {
            let path = std::env::var_os(var).unwrap_or_else(|| {
                panic!("{var} is not set: run the Hull end-to-end tests with `make test`, or set HULL_TEST_KERNEL and HULL_TEST_INITRD to a guest kernel and initrd")
            });
            let path = PathBuf::from(path);
            assert!(path.exists(), "{var}={} does not exist", path.display());
            path
        };
        let agent_timeout_secs = std::env::var("HULL_TEST_AGENT_TIMEOUT").ok().map(|secs| {
            secs.parse()
                .unwrap_or_else(|_| panic!("HULL_TEST_AGENT_TIMEOUT={secs:?} is not whole seconds"))
        });
        Self {
            kernel: Some(asset("HULL_TEST_KERNEL")),
            initrd: Some(asset("HULL_TEST_INITRD")),
            agent_timeout_secs,
            ..Self::default()
        }
    }

    fn render(&self, state_dir: &Path, cgroup_parent: &str) -> String {
        let mut toml = format!(
            "state_dir = {state_dir:?}\nlog_level = \"debug\"\ncgroup_parent = {cgroup_parent:?}\n"
        );
        // This build's built-in VMM, used where `auto` picks it (VT-x/AMD-V).
        toml += &format!("vmm = {:?}\n", artifacts::bin_dir().join("hull-vmm"));
        if let Some(kernel) = &self.kernel {
            toml += &format!("kernel = {:?}\n", kernel);
        }
        if let Some(initrd) = &self.initrd {
            toml += &format!("initrd = {:?}\n", initrd);
        }
        if let Some(secs) = self.agent_timeout_secs {
            toml += &format!("agent_timeout_secs = {secs}\n");
        }
        toml += &self.extra;
        toml
    }
}

/// A private containerd with its own root, state, socket and Hull state dir.
pub struct Containerd {
    dir: PathBuf,
    /// Makes container ids unique across test processes: runc keeps its
    /// state in the host-wide /run/containerd/runc/<namespace>/<id>.
    tag: String,
    next_id: AtomicUsize,
}

impl Containerd {
    /// Starts containerd for Hull with the guest assets from the environment.
    pub fn start() -> Self {
        Self::start_with(HullConfig::from_env())
    }

    /// Starts containerd for runc only: Hull gets a config without guest
    /// assets (its state dir is still private).
    pub fn start_for_runc() -> Self {
        Self::start_with(HullConfig::default())
    }

    /// Starts containerd whose Hull shim reads `config`.
    pub fn start_with(config: HullConfig) -> Self {
        Self::launch(config, false)
    }

    /// Starts containerd with its CRI plugin (`private-containerd.sh start
    /// DIR --cri`) and a CNI network of its own; see [`cri::CriContainerd`],
    /// which also imports the pause image.
    pub fn start_cri_with(config: HullConfig) -> Self {
        Self::launch(config, true)
    }

    fn launch(config: HullConfig, cri: bool) -> Self {
        // Short: containerd's and Hull's Unix sockets live under it. In
        // TMPDIR where one is set: the nested KVM lab points it at a tmpfs,
        // as containerd's overlay snapshots cannot live on its overlay root.
        let template = std::env::temp_dir().join("hc-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template)
            .unwrap_or_else(|e| panic!("mkdtemp {}: {e}", template.display()));
        let tag = dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("hc-")
            .to_lowercase();
        let containerd = Self {
            dir,
            tag,
            next_id: AtomicUsize::new(0),
        };
        std::fs::write(
            containerd.hull_config(),
            config.render(
                &containerd.hull_state_dir(),
                &containerd.hull_cgroup_parent(),
            ),
        )
        .expect("write hull config");

        containerd.start_daemon(cri);
        containerd
    }

    fn start_daemon(&self, cri: bool) {
        // The shim under test comes first on containerd's PATH; containerd
        // passes its environment (and so HULL_CONFIG) to every shim.
        let mut path = OsString::from(artifacts::bin_dir());
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut cmd = self.script("start");
        if cri {
            cmd.arg("--cri");
        }
        cmd.env("PATH", path).env("HULL_CONFIG", self.hull_config());
        let output = process::run(cmd, None, Duration::from_secs(30));
        assert!(
            output.status.success(),
            "private containerd did not start\n{}",
            describe(&output)
        );
    }

    /// Kills the containerd daemon (SIGKILL, as a crash would), leaving
    /// its shims and their tasks running.
    pub fn kill_daemon(&self) {
        let pidfile = self.dir.join("containerd.pid");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}", pidfile.display()));
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill containerd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "containerd {pid} did not die");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the daemon again on the same root, state and sockets (a
    /// containerd without the CRI plugin).
    pub fn restart_daemon(&self) {
        self.start_daemon(false);
    }

    /// Stops containerd now (`private-containerd.sh stop`), without the
    /// clean-up a CRI client would do first; Drop stops it again (the
    /// script is idempotent) and removes the directory.
    pub fn stop(&self) {
        let output = process::run(self.script("stop"), None, Duration::from_secs(120));
        assert!(
            output.status.success(),
            "private-containerd.sh stop failed\n{}",
            describe(&output)
        );
    }

    fn script(&self, action: &str) -> Command {
        let mut cmd =
            Command::new(artifacts::workspace_root().join("scripts/private-containerd.sh"));
        cmd.arg(action).arg(&self.dir);
        cmd
    }

    /// The directory everything of this containerd lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Hull's state dir (`state_dir` in the test config).
    pub fn hull_state_dir(&self) -> PathBuf {
        self.dir.join("hull")
    }

    /// The cgroup (in every hierarchy) under which this containerd's Hull
    /// sandboxes get theirs (`cgroup_parent` in the test config).
    pub fn hull_cgroup_parent(&self) -> String {
        format!("hull-test-{}", self.tag)
    }

    /// The cgroup directories of Hull's sandboxes that exist now.
    pub fn sandbox_cgroups(&self) -> Vec<PathBuf> {
        cgroup_dirs(&self.hull_cgroup_parent())
            .into_iter()
            .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .map(|entry| entry.path())
            .collect()
    }

    /// Pid and command line of every host process of Hull's sandboxes (the
    /// VMM, virtiofsd, the vsock backend), found by their sandbox cgroups,
    /// whatever their names and command lines.
    pub fn sandbox_processes(&self) -> Vec<(u32, String)> {
        processes_in(&self.sandbox_cgroups())
    }

    /// Pid and command line of every host process of sandbox `id`.
    pub fn processes_of_sandbox(&self, id: &str) -> Vec<(u32, String)> {
        processes_in(&cgroup_dirs(&format!("{}/{id}", self.hull_cgroup_parent())))
    }

    /// The pid of the shim serving container `id`.
    pub fn shim_pid(&self, id: &str) -> u32 {
        let flag = format!("-id {id} ");
        let shims = self.processes(&[SHIM_BINARY]);
        shims
            .iter()
            .find(|(_, cmdline)| format!("{cmdline} ").contains(&flag))
            .map(|(pid, _)| *pid)
            .unwrap_or_else(|| panic!("no shim for {id} among {shims:#?}"))
    }

    /// The pid of sandbox `id`'s VMM, as the shim recorded it.
    pub fn vmm_pid(&self, id: &str) -> u32 {
        let file = self.hull_state_dir().join(id).join("vmm.pid");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    }

    /// The Hull config file the shim reads.
    pub fn hull_config(&self) -> PathBuf {
        self.dir.join("hull.toml")
    }

    /// containerd's log, which also carries the shims' logs.
    pub fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// A container id unique to this run, starting with `name`.
    pub fn id(&self, name: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{name}{n}-{}", self.tag)
    }

    /// Imports the busybox image.
    pub fn import_busybox(&self) {
        self.import(artifacts::busybox_image());
    }

    /// Imports the busybox image with image Env, WorkingDir and User.
    pub fn import_busybox_custom(&self) {
        self.import(artifacts::busybox_custom_image());
    }

    fn import(&self, archive: &Path) {
        self.import_into(NAMESPACE, archive);
    }

    /// Imports an image archive into a containerd namespace (`k8s.io` for
    /// what CRI runs).
    pub fn import_into(&self, namespace: &str, archive: &Path) {
        let archive = archive.to_str().expect("utf-8 path");
        let output = process::run(
            self.ctr_command_in(namespace, &["images", "import", archive]),
            None,
            CTR_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "ctr -n {namespace} images import {archive} failed\n{}",
            describe(&output)
        );
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_in(NAMESPACE, args)
    }

    fn ctr_command_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(self.socket())
            .arg("-n")
            .arg(namespace)
            .args(args);
        cmd
    }

    /// `ctr -a SOCK -n hull-test ARGS...` with stdin at /dev/null.
    pub fn ctr(&self, args: &[&str]) -> Output {
        process::run(self.ctr_command(args), None, CTR_TIMEOUT)
    }

    /// `ctr ARGS...` with `stdin` piped in.
    pub fn ctr_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        process::run(self.ctr_command(args), stdin, CTR_TIMEOUT)
    }

    /// `ctr ARGS...` under a pseudo-terminal, with `input` typed into it.
    pub fn ctr_in_pty(&self, args: &[&str], input: &[u8]) -> Output {
        process::run_in_pty(self.ctr_command(args), input, CTR_TIMEOUT)
    }

    /// `ctr run --rm --runtime RUNTIME busybox ID CMD...`; ctr's exit status
    /// is the container's.
    pub fn ctr_run(&self, runtime: &str, id: &str, cmd: &[&str], stdin: Option<&[u8]>) -> Output {
        self.ctr_with_stdin(&run_args(runtime, BUSYBOX, id, &[], cmd), stdin)
    }

    /// `ctr run --rm` with extra `ctr run` flags and another image.
    pub fn ctr_run_with(
        &self,
        runtime: &str,
        image: &str,
        flags: &[&str],
        id: &str,
        cmd: &[&str],
    ) -> Output {
        self.ctr(&run_args(runtime, image, id, flags, cmd))
    }

    /// `ctr run --rm -t` under a pseudo-terminal.
    pub fn ctr_run_tty(&self, runtime: &str, id: &str, cmd: &[&str], input: &[u8]) -> Output {
        self.ctr_in_pty(&run_args(runtime, BUSYBOX, id, &["-t"], cmd), input)
    }

    /// A foreground `ctr run --rm` left running in the background, to be
    /// signalled or watched.
    pub fn spawn_run(&self, runtime: &str, id: &str, cmd: &[&str]) -> Background {
        Background::spawn(self.ctr_command(&run_args(runtime, BUSYBOX, id, &[], cmd)))
    }

    /// Any `ctr` command left running in the background.
    pub fn spawn_ctr(&self, args: &[&str]) -> Background {
        Background::spawn(self.ctr_command(args))
    }

    /// `ctr run -d`: creates and starts the task, then returns.
    pub fn run_detached(&self, runtime: &str, id: &str, cmd: &[&str]) {
        let mut args = vec!["run", "-d", "--runtime", runtime, BUSYBOX, id];
        args.extend_from_slice(cmd);
        let output = self.ctr(&args);
        assert!(
            output.status.success(),
            "ctr run -d {id} failed\n{}",
            describe(&output)
        );
    }

    /// `ctr task exec --exec-id EXEC_ID ID CMD...`; ctr's exit status is the
    /// process's.
    pub fn exec(&self, id: &str, exec_id: &str, cmd: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
        args.extend_from_slice(cmd);
        self.ctr_with_stdin(&args, stdin)
    }

    /// `ctr task exec -t` under a pseudo-terminal.
    pub fn exec_tty(&self, id: &str, exec_id: &str, cmd: &[&str], input: &[u8]) -> Output {
        let mut args = vec!["task", "exec", "-t", "--exec-id", exec_id, id];
        args.extend_from_slice(cmd);
        self.ctr_in_pty(&args, input)
    }

    /// `ctr task kill -s SIGNAL ID`.
    pub fn kill(&self, id: &str, signal: &str) {
        let output = self.ctr(&["task", "kill", "-s", signal, id]);
        assert!(
            output.status.success(),
            "ctr task kill -s {signal} {id} failed\n{}",
            describe(&output)
        );
    }

    /// The pids `ctr task ps ID` lists.
    pub fn ps(&self, id: &str) -> Vec<u32> {
        let output = self.ctr(&["task", "ps", id]);
        assert!(
            output.status.success(),
            "ctr task ps {id} failed\n{}",
            describe(&output)
        );
        text(&output.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// `ctr task pause ID`.
    pub fn pause(&self, id: &str) {
        let output = self.ctr(&["task", "pause", id]);
        assert!(
            output.status.success(),
            "ctr task pause {id} failed\n{}",
            describe(&output)
        );
    }

    /// `ctr task resume ID`.
    pub fn resume(&self, id: &str) {
        let output = self.ctr(&["task", "resume", id]);
        assert!(
            output.status.success(),
            "ctr task resume {id} failed\n{}",
            describe(&output)
        );
    }

    /// `ctr task metrics --format json ID`, parsed.
    pub fn metrics(&self, id: &str) -> serde_json::Value {
        let output = self.ctr(&["task", "metrics", "--format", "json", id]);
        assert!(
            output.status.success(),
            "ctr task metrics {id} failed\n{}",
            describe(&output)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "ctr task metrics {id}: not JSON ({e})\n{}",
                describe(&output)
            )
        })
    }

    /// The task's status as `ctr task ls` shows it (RUNNING, PAUSED,
    /// STOPPED, ...), or None when there is no task.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let output = self.ctr(&["task", "ls"]);
        assert!(
            output.status.success(),
            "ctr task ls failed\n{}",
            describe(&output)
        );
        text(&output.stdout).lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&id)).then(|| fields.last().unwrap_or(&"").to_string())
        })
    }

    /// Waits until the task's status is `status`.
    pub fn wait_for_status(&self, id: &str, status: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.task_status(id).as_deref() == Some(status) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deletes a stopped task and its container; returns the task's exit
    /// code (`ctr task delete` only reports a non-zero one, as a warning).
    pub fn remove(&self, id: &str) -> i32 {
        let output = self.ctr(&["task", "delete", id]);
        assert!(
            output.status.success(),
            "ctr task delete {id} failed\n{}",
            describe(&output)
        );
        let stderr = text(&output.stderr);
        let code = match stderr.split("exit with non-zero exit code ").nth(1) {
            Some(rest) => rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("cannot parse the exit code in: {stderr}")),
            None => 0,
        };
        let output = self.ctr(&["containers", "rm", id]);
        assert!(
            output.status.success(),
            "ctr containers rm {id} failed\n{}",
            describe(&output)
        );
        code
    }

    /// Kills a task with SIGKILL, waits for it to stop and removes it.
    pub fn kill_and_remove(&self, id: &str) -> i32 {
        self.kill(id, "SIGKILL");
        assert!(
            self.wait_for_status(id, "STOPPED", Duration::from_secs(20)),
            "task {id} did not stop after SIGKILL"
        );
        self.remove(id)
    }

    /// Processes of the given kinds whose command line names this
    /// containerd's directory (shims by socket address, QEMU and virtiofsd
    /// by Hull's state dir).
    pub fn processes(&self, names: &[&str]) -> Vec<(u32, String)> {
        processes_mentioning(&self.dir, names)
    }

    /// Mount points under `under`.
    pub fn mounts_under(&self, under: &Path) -> Vec<PathBuf> {
        mounts_under(under)
    }

    /// The tail of containerd's log (the shims log into it too).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn run_args<'a>(
    runtime: &'a str,
    image: &'a str,
    id: &'a str,
    flags: &[&'a str],
    cmd: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend_from_slice(flags);
    args.push(image);
    args.push(id);
    args.extend_from_slice(cmd);
    args
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- last lines of {} ---\n{}\n---",
                self.log().display(),
                self.log_tail(80)
            );
        }
        // The script deletes tasks and containers, stops containerd, kills
        // whatever still names the directory and unmounts under it.
        let output = process::run(self.script("stop"), None, Duration::from_secs(120));
        if !output.status.success() {
            eprintln!("private-containerd.sh stop failed\n{}", describe(&output));
        }
        // Again, in case the script could not finish; and the sandboxes'
        // processes, which need not name the directory (QEMU in its jail).
        let mut processes = processes_mentioning(&self.dir, LEFTOVER_KINDS);
        processes.extend(self.sandbox_processes());
        for (pid, _) in processes {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for mount in mounts_under(&self.dir).into_iter().rev() {
            if nix::mount::umount(&mount).is_err() {
                let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
        let parents = cgroup_dirs(&self.hull_cgroup_parent());
        for dir in self.sandbox_cgroups().into_iter().chain(parents) {
            let _ = remove_cgroup(&dir);
        }
    }
}

/// Removes a cgroup directory, waiting a little for the kernel to let go of
/// one whose last process was just killed.
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Err(e) if Instant::now() < deadline && e.kind() != std::io::ErrorKind::NotFound => {
                thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The directories of cgroup `cgroup` (a path below each hierarchy's root)
/// that exist, in every hierarchy: the unified one alone, or each v1
/// controller's and the hybrid v2 tree.
pub fn cgroup_dirs(cgroup: &str) -> Vec<PathBuf> {
    let relative = cgroup.trim_start_matches('/');
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = Vec::new();
    if root.join("cgroup.controllers").exists() {
        dirs.push(root.join(relative));
    } else {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            dirs.push(entry.path().join(relative));
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Pid and command line of every process in the cgroups `dirs`.
pub fn processes_in(dirs: &[PathBuf]) -> Vec<(u32, String)> {
    let mut found: Vec<(u32, String)> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|procs| {
            procs
                .lines()
                .filter_map(|l| l.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                .unwrap_or_default();
            (pid, cmdline.trim().to_owned())
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Process names the harness cleans up after and checks for leftovers.
pub(crate) const LEFTOVER_KINDS: &[&str] = &[
    SHIM_BINARY,
    "containerd-shim-runc-v2",
    "qemu-system-x86_64",
    // The built-in VMM, and with QEMU the vsock backend (`hull-vmm vsock`).
    "hull-vmm",
    // `hull pool` and its warm shims (`hull --config <dir>/hull.toml ...`).
    "hull",
    "virtiofsd",
    "containerd",
];

/// Pid and command line of every process named one of `names` (by its
/// executable's file name) whose command line mentions `needle`.
pub fn processes_mentioning(needle: &Path, names: &[&str]) -> Vec<(u32, String)> {
    let needle = needle.to_string_lossy();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // comm is truncated to 15 bytes; argv[0] is not.
        let Some(program) = args.first().and_then(|a| Path::new(a).file_name()) else {
            continue;
        };
        let program = program.to_string_lossy();
        let cmdline = args.join(" ");
        if names.iter().any(|n| program == *n) && cmdline.contains(needle.as_ref()) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Mount points under `dir` (not `dir` itself), parents before children.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        // Strictly under: a test may put the directory itself on a disk
        // of its own (a small tmpfs, to fill).
        .filter(|point| point.starts_with(dir) && point != dir)
        .collect();
    mounts.sort();
    mounts
}

/// Asserts that nothing of a container is left: no shim, QEMU or virtiofsd
/// of this containerd, no mount under Hull's state dir or containerd's task
/// state, and no sandbox dir in Hull's state dir. Shims exit shortly after
/// their last container is deleted, so this waits a little for them.
pub fn assert_no_leftovers(c: &Containerd) {
    assert_no_processes_or_mounts(c);
    let sandboxes: Vec<String> = std::fs::read_dir(c.hull_state_dir())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        sandboxes.is_empty(),
        "sandbox dirs left in {}: {sandboxes:?}",
        c.hull_state_dir().display()
    );
}

/// The process and mount half of [`assert_no_leftovers`], for failures after
/// which Hull may keep a sandbox dir with the guest console log.
pub fn assert_no_processes_or_mounts(c: &Containerd) {
    let kinds = &LEFTOVER_KINDS[..LEFTOVER_KINDS.len() - 1];
    let task_state = c.dir().join("state");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut processes = c.processes(kinds);
        processes.extend(c.sandbox_processes());
        let cgroups = c.sandbox_cgroups();
        let mut mounts = c.mounts_under(&c.hull_state_dir());
        mounts.extend(c.mounts_under(&task_state));
        if processes.is_empty() && mounts.is_empty() && cgroups.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("left behind:\nprocesses: {processes:#?}\nmounts: {mounts:#?}\ncgroups: {cgroups:#?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The host's kernel release.
pub fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read /proc/sys/kernel/osrelease")
        .trim()
        .to_string()
}

/// Asserts that the Hull shim binary was built next to the test binaries.
pub fn require_hull_shim() {
    let shim = artifacts::bin_dir().join(SHIM_BINARY);
    assert!(
        shim.exists(),
        "{} is missing: build it with `cargo build -p hull-shim` before the end-to-end tests",
        shim.display()
    );
}
