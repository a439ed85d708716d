//! hull-agent on the host, reached over its Unix sockets, running real
//! containers from a busybox rootfs. The agent runs in a throwaway mount,
//! PID, UTS and cgroup namespace (via unshare), so everything it starts dies
//! with it. Its cgroup namespace is rooted at a cgroup v2 directory of the
//! test's own (`hull-agent-test-*`), mounted as its /sys/fs/cgroup, which
//! goes with everything the agent made in it when the test ends.
//!
//! The network tests give the agent a network namespace of its own too, and
//! look into it with `nsenter --net` and `ip -j`.
//!
//! Needs root, util-linux's unshare and nsenter, iproute2 and busybox-static
//! (`make test` installs them).

use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hull_protocols::agent::*;
use hull_protocols::agent_ttrpc::AgentClient;
use hull_protocols::stdio::{parse_answer, StreamHeader, StreamKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use ttrpc::context;

struct HostAgent {
    child: Child,
    dir: tempfile::TempDir,
    client: AgentClient,
    /// Removed after the agent is killed (fields drop after `drop`).
    _cgroup: TestCgroup,
}

/// A cgroup v2 directory that is the root of an agent's cgroup namespace.
/// The agent lives in its `agent` child, so the root holds no process and
/// the agent can enable controllers for the containers' cgroups.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> TestCgroup {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = cgroup2_mount().join(format!("hull-agent-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).expect("making the test's cgroup");
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    /// Kills whatever is left in the tree and removes it, deepest first.
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        while remove_cgroup_tree(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Where the host mounts cgroup v2 (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host).
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mounts
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split(' ').next() == Some("cgroup2")).then(|| before.split(' ').nth(4))?
        })
        .map(PathBuf::from)
        .expect("this test needs cgroup v2 mounted on the host")
}

/// The cgroup v2 directory this test process is in.
fn own_cgroup2() -> PathBuf {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("this process has a cgroup v2 path");
    cgroup2_mount().join(path.trim_start_matches('/'))
}

impl HostAgent {
    async fn launch() -> HostAgent {
        Self::launch_in(&[]).await
    }

    /// An agent in a network namespace of its own as well, as in the guest.
    async fn launch_with_own_network() -> HostAgent {
        Self::launch_in(&["--net"]).await
    }

    async fn launch_in(extra_namespaces: &[&str]) -> HostAgent {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = TestCgroup::new();
        let agent = env!("CARGO_BIN_EXE_hull-agent");
        let script = format!(
            "mount -t cgroup2 none /sys/fs/cgroup && mkdir /sys/fs/cgroup/agent \
             && echo $$ > /sys/fs/cgroup/agent/cgroup.procs \
             && exec {agent} serve --dir {}",
            dir.path().display()
        );
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.0.join("cgroup.procs"))
            .unwrap();
        let mut command = Command::new("unshare");
        // unshare enters the test's cgroup first, so that is the root of
        // the namespace it makes. (Writing to an open file allocates
        // nothing, as code between fork and exec must not.)
        unsafe {
            command.pre_exec(move || std::io::Write::write_all(&mut &procs, b"0"));
        }
        let child = command
            .args(extra_namespaces)
            .args([
                "--mount",
                "--pid",
                "--uts",
                "--cgroup",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "sh",
                "-c",
                &script,
            ])
            .env("HULL_AGENT_LOG", "debug")
            .spawn()
            .expect("running unshare");
        let socket = dir.path().join("agent.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.path().join("stdio.sock").exists() {
            assert!(Instant::now() < deadline, "hull-agent did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
            .await
            .expect("connecting to the agent");
        // unshare itself only waits for the agent: out of the namespace's
        // root, which must hold no process once the agent enables
        // controllers for its children.
        std::fs::write(own_cgroup2().join("cgroup.procs"), child.id().to_string())
            .expect("moving unshare out of the agent's cgroup root");
        HostAgent {
            child,
            dir,
            client: AgentClient::new(client),
            _cgroup: cgroup,
        }
    }

    async fn attach(&self, container: &str, exec: &str, kind: StreamKind) -> UnixStream {
        let mut stream = UnixStream::connect(self.dir.path().join("stdio.sock"))
            .await
            .unwrap();
        let header = StreamHeader {
            kind,
            container_id: container.into(),
            exec_id: exec.into(),
        };
        stream.write_all(header.encode().as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        loop {
            let byte = stream.read_u8().await.unwrap();
            answer.push(byte);
            if byte == b'\n' {
                break;
            }
        }
        parse_answer(std::str::from_utf8(&answer).unwrap()).expect("stream attached");
        stream
    }

    async fn read_all(
        &self,
        container: &str,
        exec: &str,
        kind: StreamKind,
    ) -> tokio::task::JoinHandle<Vec<u8>> {
        let mut stream = self.attach(container, exec, kind).await;
        tokio::spawn(async move {
            let mut out = Vec::new();
            stream.read_to_end(&mut out).await.unwrap();
            out
        })
    }

    async fn create(
        &self,
        id: &str,
        spec: &oci_spec::runtime::Spec,
        stdio: Stdio,
    ) -> ttrpc::Result<CreateContainerResponse> {
        self.client
            .create_container(
                ctx(),
                &CreateContainerRequest {
                    container_id: id.into(),
                    oci_spec: serde_json::to_vec(spec).unwrap(),
                    stdio: Some(stdio).into(),
                    ..Default::default()
                },
            )
            .await
    }

    async fn start(&self, id: &str) {
        self.client
            .start_container(
                ctx(),
                &StartContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .expect("start");
    }

    async fn wait(&self, id: &str, exec: &str) -> i32 {
        self.client
            .wait_process(
                ctx(),
                &WaitProcessRequest {
                    container_id: id.into(),
                    exec_id: exec.into(),
                    ..Default::default()
                },
            )
            .await
            .expect("wait")
            .status
    }

    async fn remove(&self, id: &str) {
        self.client
            .remove_container(
                ctx(),
                &RemoveContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .expect("remove");
    }

    async fn signal(&self, id: &str, exec: &str, signal: i32, all: bool) -> ttrpc::Result<Empty> {
        self.client
            .signal_process(
                ctx(),
                &SignalProcessRequest {
                    container_id: id.into(),
                    exec_id: exec.into(),
                    signal: signal as u32,
                    all,
                    ..Default::default()
                },
            )
            .await
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

/// A busybox rootfs: the static binary, its applets as symlinks, and the
/// few files a container expects.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for sub in ["etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    rootfs
}

fn spec(rootfs: &Path, args: &[&str], terminal: bool) -> oci_spec::runtime::Spec {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut root = spec.root().clone().unwrap();
    root.set_path(rootfs.to_owned());
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    process.set_terminal(Some(terminal));
    spec.set_process(Some(process));
    spec
}

fn pipes(stdin: bool) -> Stdio {
    Stdio {
        stdin,
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn runs_a_container_with_separate_stdout_stderr_and_exit_code() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    let spec = spec(
        &rootfs,
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        false,
    );
    agent.create("c1", &spec, pipes(false)).await.unwrap();
    let out = agent.read_all("c1", "", StreamKind::Stdout).await;
    let err = agent.read_all("c1", "", StreamKind::Stderr).await;
    agent.start("c1").await;
    assert_eq!(agent.wait("c1", "").await, 7);
    assert_eq!(out.await.unwrap(), b"out\n");
    assert_eq!(err.await.unwrap(), b"err\n");
    agent.remove("c1").await;
}

#[tokio::test]
async fn a_runtime_forker_that_died_is_replaced() {
    let agent = HostAgent::launch().await;
    // The agent and its forker share the agent's cgroup; the forker is the
    // one whose parent is the other.
    let procs = std::fs::read_to_string(agent._cgroup.0.join("agent/cgroup.procs")).unwrap();
    let pids: Vec<&str> = procs.lines().collect();
    let parent_of = |pid: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("PPid:")).unwrap();
        line.split_whitespace().nth(1).unwrap().to_owned()
    };
    let forker = *pids
        .iter()
        .find(|pid| pids.contains(&parent_of(pid).as_str()))
        .unwrap_or_else(|| panic!("no forker among the agent's processes {pids:?}"));
    let killed = Command::new("kill")
        .args(["-KILL", forker])
        .status()
        .unwrap();
    assert!(killed.success());

    let rootfs = busybox_rootfs(agent.dir.path());
    let spec = spec(&rootfs, &["sh", "-c", "echo out; exit 3"], false);
    agent.create("c1", &spec, pipes(false)).await.unwrap();
    let out = agent.read_all("c1", "", StreamKind::Stdout).await;
    agent.start("c1").await;
    assert_eq!(agent.wait("c1", "").await, 3);
    assert_eq!(out.await.unwrap(), b"out\n");
    agent.remove("c1").await;
}

#[tokio::test]
async fn stdin_reaches_the_container_and_its_end_closes_it() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    agent
        .create("cat", &spec(&rootfs, &["cat"], false), pipes(true))
        .await
        .unwrap();
    let mut stdin = agent.attach("cat", "", StreamKind::Stdin).await;
    let out = agent.read_all("cat", "", StreamKind::Stdout).await;
    agent.start("cat").await;
    stdin.write_all(b"hi\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(agent.wait("cat", "").await, 0);
    assert_eq!(out.await.unwrap(), b"hi\n");
}

#[tokio::test]
async fn large_output_arrives_intact() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    // 10 MiB of a repeating pattern, checked byte for byte.
    let spec = spec(
        &rootfs,
        &["sh", "-c", "yes 0123456789abcdef | head -c 10485760"],
        false,
    );
    agent.create("big", &spec, pipes(false)).await.unwrap();
    let out = agent.read_all("big", "", StreamKind::Stdout).await;
    agent.start("big").await;
    assert_eq!(agent.wait("big", "").await, 0);
    let out = out.await.unwrap();
    assert_eq!(out.len(), 10 * 1024 * 1024);
    let line = b"0123456789abcdef\n";
    assert!(out.chunks(line.len()).all(|c| line.starts_with(c)));
}

#[tokio::test]
async fn exec_signals_and_kill_statuses() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    agent
        .create(
            "sleeper",
            &spec(&rootfs, &["sleep", "1000"], false),
            pipes(false),
        )
        .await
        .unwrap();
    agent.start("sleeper").await;

    // An exec'd process is an ordinary process: SIGTERM kills it, 128+15.
    let process = serde_json::json!({
        "args": ["sh", "-c", "sleep 1000 & echo $FOO; wait"],
        "env": ["PATH=/bin", "FOO=exec-env"],
        "cwd": "/tmp",
        "user": {"uid": 0, "gid": 0},
    });
    agent
        .client
        .exec_process(
            ctx(),
            &ExecProcessRequest {
                container_id: "sleeper".into(),
                exec_id: "e1".into(),
                process: serde_json::to_vec(&process).unwrap(),
                stdio: Some(pipes(false)).into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut out = agent.attach("sleeper", "e1", StreamKind::Stdout).await;
    let mut line = String::new();
    BufReader::new(&mut out).read_line(&mut line).await.unwrap();
    assert_eq!(line, "exec-env\n");
    let pids = agent
        .client
        .list_processes(
            ctx(),
            &ListProcessesRequest {
                container_id: "sleeper".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .pids;
    assert!(pids.len() >= 3, "init, exec sh and its sleep: {pids:?}");
    agent
        .signal("sleeper", "e1", libc::SIGTERM, false)
        .await
        .unwrap();
    assert_eq!(agent.wait("sleeper", "e1").await, 128 + libc::SIGTERM);

    // The container's init is PID 1 of its namespace, and SIGKILL ends it.
    agent
        .signal("sleeper", "", libc::SIGKILL, false)
        .await
        .unwrap();
    assert_eq!(agent.wait("sleeper", "").await, 128 + libc::SIGKILL);
    let err = agent
        .signal("sleeper", "", libc::SIGKILL, false)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("already exited"), "{err:?}");
    agent.remove("sleeper").await;
}

#[tokio::test]
async fn kill_all_reaches_every_process() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    let spec = spec(
        &rootfs,
        &["sh", "-c", "sleep 1000 & sleep 1000 & wait"],
        false,
    );
    agent.create("all", &spec, pipes(false)).await.unwrap();
    agent.start("all").await;
    agent.signal("all", "", libc::SIGKILL, true).await.unwrap();
    assert_eq!(agent.wait("all", "").await, 137);
}

#[tokio::test]
async fn missing_command_is_not_found_and_leaves_nothing() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    let err = agent
        .create(
            "nope",
            &spec(&rootfs, &["no-such-command"], false),
            pipes(false),
        )
        .await
        .unwrap_err();
    match err {
        ttrpc::Error::RpcStatus(status) => {
            assert_eq!(status.code(), ttrpc::Code::NOT_FOUND);
            assert!(
                status.message().contains("executable file not found"),
                "{}",
                status.message()
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    // The id is free again: nothing of the failed container is left.
    agent
        .create("nope", &spec(&rootfs, &["true"], false), pipes(false))
        .await
        .unwrap();
    assert!(!agent
        .dir
        .path()
        .join("state/runtime/nope")
        .join("missing")
        .exists());
}

#[tokio::test]
async fn terminal_process_gets_a_pty_and_resizes() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    let spec = spec(&rootfs, &["sh", "-c", "read x; stty size; tty"], true);
    let stdio = Stdio {
        terminal: true,
        stdin: true,
        stdout: true,
        ..Default::default()
    };
    agent.create("tty", &spec, stdio).await.unwrap();
    let mut stdin = agent.attach("tty", "", StreamKind::Stdin).await;
    let out = agent.read_all("tty", "", StreamKind::Stdout).await;
    agent.start("tty").await;
    agent
        .client
        .resize_terminal(
            ctx(),
            &ResizeTerminalRequest {
                container_id: "tty".into(),
                rows: 33,
                columns: 101,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    assert_eq!(agent.wait("tty", "").await, 0);
    let out = String::from_utf8_lossy(&out.await.unwrap()).replace('\r', "");
    assert!(out.contains("33 101\n"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
}

#[tokio::test]
async fn version_check_refuses_unknown_versions() {
    let agent = HostAgent::launch().await;
    let ok = agent
        .client
        .check(
            ctx(),
            &CheckRequest {
                api_version: ApiVersion::API_VERSION_V1.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.api_version.enum_value(), Ok(ApiVersion::API_VERSION_V1));
    let err = agent
        .client
        .check(ctx(), &CheckRequest::default())
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("hull.agent.v1"), "{err:?}");
}

#[tokio::test]
async fn user_env_cwd_and_hostname_follow_the_spec() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    let mut spec = spec(
        &rootfs,
        &["sh", "-c", "id -u; id -g; pwd; echo $GREETING; hostname"],
        false,
    );
    let mut process = spec.process().clone().unwrap();
    let mut user = process.user().clone();
    user.set_uid(65534);
    user.set_gid(65534);
    process.set_user(user);
    process.set_cwd("/tmp".into());
    let mut env = process.env().clone().unwrap_or_default();
    env.push("GREETING=hello".into());
    process.set_env(Some(env));
    spec.set_process(Some(process));
    spec.set_hostname(Some("box".into()));
    agent.create("who", &spec, pipes(false)).await.unwrap();
    let out = agent.read_all("who", "", StreamKind::Stdout).await;
    agent.start("who").await;
    assert_eq!(agent.wait("who", "").await, 0);
    assert_eq!(
        String::from_utf8(out.await.unwrap()).unwrap(),
        "65534\n65534\n/tmp\nhello\nbox\n"
    );
}

#[tokio::test]
async fn confinement_follows_the_spec() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    let script = "touch /file 2>/dev/null && echo rootfs-writable; \
                  mkdir /tmp/d 2>/dev/null || echo mkdir-denied; \
                  ulimit -n; \
                  mount -t tmpfs none /mnt 2>/dev/null || echo mount-denied; \
                  echo $$";
    let mut spec = spec(&rootfs, &["sh", "-c", script], false);
    let mut root = spec.root().clone().unwrap();
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    let mut linux = spec.linux().clone().unwrap();
    let seccomp: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    }))
    .unwrap();
    linux.set_seccomp(Some(seccomp));
    spec.set_linux(Some(linux));
    // /tmp must be writable for mkdir to reach seccomp rather than EROFS.
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        serde_json::from_value(serde_json::json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]
        }))
        .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    agent.create("jail", &spec, pipes(false)).await.unwrap();
    let out = agent.read_all("jail", "", StreamKind::Stdout).await;
    agent.start("jail").await;
    assert_eq!(agent.wait("jail", "").await, 0);
    // Read-only rootfs, the seccomp filter, runc's default RLIMIT_NOFILE,
    // no CAP_SYS_ADMIN, and a PID namespace of its own.
    assert_eq!(
        String::from_utf8(out.await.unwrap()).unwrap(),
        "mkdir-denied\n1024\nmount-denied\n1\n"
    );
}

// Exec'd processes and the container's seccomp profile: runc gives an exec'd
// process the container's `linux.seccomp`, and its own capabilities,
// no_new_privs and rlimits from the exec's `process`.

/// The capability bits of the confined processes: CAP_CHOWN, CAP_DAC_OVERRIDE,
/// CAP_KILL and CAP_NET_BIND_SERVICE bounding, effective and permitted;
/// CAP_NET_BIND_SERVICE inheritable and ambient. No CAP_SYS_ADMIN, so a
/// filter without no_new_privs needs the agent to hold it for a moment.
const BOUNDED: u64 = 1 << 0 | 1 << 1 | 1 << 5 | 1 << 10;
const AMBIENT: u64 = 1 << 10;

/// `no_new_privs` is the process's noNewPrivileges; `None` leaves it out,
/// as containerd does when it is false.
fn confined_process(args: &[&str], uid: u32, no_new_privs: Option<bool>) -> serde_json::Value {
    let bounded = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
    ];
    let mut process = serde_json::json!({
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": uid, "gid": uid},
        "capabilities": {
            "bounding": bounded,
            "effective": bounded,
            "permitted": bounded,
            "inheritable": ["CAP_NET_BIND_SERVICE"],
            "ambient": ["CAP_NET_BIND_SERVICE"],
        },
    });
    if let Some(no_new_privs) = no_new_privs {
        process["noNewPrivileges"] = no_new_privs.into();
    }
    process
}

/// Allows every syscall but those that change a file's mode: EPERM.
fn no_chmod_profile() -> oci_spec::runtime::LinuxSeccomp {
    serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{
            "names": ["chmod", "fchmod", "fchmodat", "fchmodat2"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1
        }]
    }))
    .unwrap()
}

/// A container sleeping as `process`, with a tmpfs /tmp anyone may write
/// and, if given, a seccomp profile.
fn sleeper_spec(
    rootfs: &Path,
    process: serde_json::Value,
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
) -> oci_spec::runtime::Spec {
    let mut spec = spec(rootfs, &[], false);
    spec.set_process(Some(serde_json::from_value(process).unwrap()));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_seccomp(seccomp);
    spec.set_linux(Some(linux));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(
        serde_json::from_value(serde_json::json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "mode=1777"]
        }))
        .unwrap(),
    );
    spec.set_mounts(Some(mounts));
    spec
}

/// Prints the exec'd shell's /proc status, the container init's, the
/// exec's RLIMIT_NOFILE and what chmod says, sections split by "==".
const REPORT: &str = "cat /proc/$$/status; echo ==; cat /proc/1/status; echo ==; \
                      grep 'Max open files' /proc/$$/limits; echo ==; \
                      touch /tmp/f && chmod 600 /tmp/f 2>&1 && echo chmod-allowed";

/// The confinement fields of a /proc/<pid>/status.
fn confinement(status: &str) -> std::collections::BTreeMap<String, String> {
    const FIELDS: [&str; 8] = [
        "Seccomp",
        "Seccomp_filters",
        "NoNewPrivs",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
    ];
    status
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| FIELDS.contains(key))
        .map(|(key, value)| (key.to_owned(), value.trim().to_owned()))
        .collect()
}

fn expected_confinement(
    seccomp: bool,
    uid: u32,
    no_new_privs: bool,
) -> std::collections::BTreeMap<String, String> {
    let caps = |mask: u64| format!("{mask:016x}");
    // Without file capabilities, exec gives root the bounding set and
    // other users only their ambient capabilities.
    let permitted = if uid == 0 { BOUNDED } else { AMBIENT };
    [
        ("Seccomp", if seccomp { "2" } else { "0" }.to_owned()),
        (
            "Seccomp_filters",
            if seccomp { "1" } else { "0" }.to_owned(),
        ),
        ("NoNewPrivs", (no_new_privs as u8).to_string()),
        ("CapInh", caps(AMBIENT)),
        ("CapPrm", caps(permitted)),
        ("CapEff", caps(permitted)),
        ("CapBnd", caps(BOUNDED)),
        ("CapAmb", caps(AMBIENT)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

impl HostAgent {
    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
    ) -> ttrpc::Result<ExecProcessResponse> {
        self.client
            .exec_process(
                ctx(),
                &ExecProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    process: serde_json::to_vec(process).unwrap(),
                    stdio: Some(pipes(false)).into(),
                    ..Default::default()
                },
            )
            .await
    }

    /// Runs an exec process to its end: its exit status and stdout.
    async fn exec_to_end(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
    ) -> (i32, String) {
        self.exec(id, exec_id, process).await.expect("exec");
        let out = self.read_all(id, exec_id, StreamKind::Stdout).await;
        let status = self.wait(id, exec_id).await;
        (status, String::from_utf8(out.await.unwrap()).unwrap())
    }
}

#[tokio::test]
async fn exec_gets_the_containers_seccomp_profile() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    let cases = [0, 65534]
        .into_iter()
        .flat_map(|uid| [Some(true), Some(false), None].map(|no_new_privs| (uid, no_new_privs)));
    for (uid, no_new_privs) in cases {
        let nnp = no_new_privs.map_or("omitted".to_owned(), |set| set.to_string());
        let id = format!("seccomp-{uid}-nnp-{nnp}");
        let init = confined_process(&["sleep", "1000"], uid, no_new_privs);
        let spec = sleeper_spec(&rootfs, init, Some(no_chmod_profile()));
        agent.create(&id, &spec, pipes(false)).await.unwrap();
        agent.start(&id).await;

        // The exec's own process, as containerd sends it: the init's
        // settings, other args, and here a limit of its own.
        let mut exec = confined_process(&["sh", "-c", REPORT], uid, no_new_privs);
        exec["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1234, "hard": 2345}]);
        let (status, out) = agent.exec_to_end(&id, "report", &exec).await;
        let case = format!("uid {uid}, noNewPrivileges {no_new_privs:?}: {out}");
        let sections: Vec<&str> = out.split("==\n").collect();
        assert_eq!(sections.len(), 4, "{case}");
        let expected = expected_confinement(true, uid, no_new_privs == Some(true));
        assert_eq!(confinement(sections[1]), expected, "the init, {case}");
        assert_eq!(confinement(sections[0]), expected, "the exec, {case}");
        assert_eq!(
            sections[2].split_whitespace().collect::<Vec<_>>(),
            ["Max", "open", "files", "1234", "2345", "files"],
            "{case}"
        );
        assert_eq!(
            sections[3], "chmod: /tmp/f: Operation not permitted\n",
            "{case}"
        );
        assert_ne!(status, 0, "{case}");

        agent.signal(&id, "", libc::SIGKILL, false).await.unwrap();
        agent.wait(&id, "").await;
        agent.remove(&id).await;
    }
}

#[tokio::test]
async fn exec_without_a_seccomp_profile_is_not_filtered() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    let spec = sleeper_spec(&rootfs, confined_process(&["sleep", "1000"], 0, None), None);
    agent
        .create("unfiltered", &spec, pipes(false))
        .await
        .unwrap();
    agent.start("unfiltered").await;
    let exec = confined_process(&["sh", "-c", REPORT], 0, None);
    let (status, out) = agent.exec_to_end("unfiltered", "report", &exec).await;
    let sections: Vec<&str> = out.split("==\n").collect();
    assert_eq!(sections.len(), 4, "{out}");
    let expected = expected_confinement(false, 0, false);
    assert_eq!(confinement(sections[1]), expected, "the init: {out}");
    assert_eq!(confinement(sections[0]), expected, "the exec: {out}");
    assert_eq!(sections[3], "chmod-allowed\n", "{out}");
    assert_eq!(status, 0, "{out}");
}

/// Hull has no seccomp agent to give an exec'd process's notify fd to, so
/// it refuses such an exec rather than run it unconfined.
#[tokio::test]
async fn exec_refuses_a_profile_that_notifies() {
    use std::io::Read;
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    // libcontainer hands the init's notify fd to this listener.
    let listener_path = agent.dir.path().join("seccomp-agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&listener_path).unwrap();
    let seccomp_agent = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut message = Vec::new();
        stream.read_to_end(&mut message).unwrap();
        message
    });
    let profile = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": listener_path,
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    }))
    .unwrap();
    let spec = sleeper_spec(
        &rootfs,
        confined_process(&["sleep", "1000"], 0, Some(true)),
        Some(profile),
    );
    agent
        .create("notifying", &spec, pipes(false))
        .await
        .unwrap();
    agent.start("notifying").await;
    assert!(!seccomp_agent.join().unwrap().is_empty());

    let exec = confined_process(&["true"], 0, Some(true));
    let err = agent.exec("notifying", "e1", &exec).await.unwrap_err();
    assert!(format!("{err:?}").contains("SCMP_ACT_NOTIFY"), "{err:?}");
}

// The guest network: UpdateInterface and UpdateRoutes on a veth standing in
// for the guest's virtio-net NIC (this kernel may lack the dummy driver).

const NIC_MAC: &str = "02:00:00:00:00:aa";

impl HostAgent {
    /// The agent's pid on the host: the child unshare forked, which exec'd
    /// the agent.
    fn agent_pid(&self) -> u32 {
        let pid = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        children
            .split_whitespace()
            .next()
            .expect("unshare has forked the agent")
            .parse()
            .unwrap()
    }

    /// Runs `ip ARGS` in the agent's network namespace; panics on failure.
    fn ip(&self, args: &[&str]) -> String {
        let output = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.agent_pid()))
            .arg("ip")
            .args(args)
            .output()
            .expect("running nsenter ip");
        assert!(
            output.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `ip -j ARGS`, parsed.
    fn ip_json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ip(&all)).unwrap()
    }

    async fn update_interface(
        &self,
        name: &str,
        mac: &str,
        mtu: u32,
        addresses: &[(&str, u32)],
    ) -> ttrpc::Result<Empty> {
        let interface = Interface {
            name: name.into(),
            mac_address: mac.into(),
            mtu,
            addresses: addresses
                .iter()
                .map(|(address, prefix_length)| IpAddress {
                    address: (*address).into(),
                    prefix_length: *prefix_length,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        self.client
            .update_interface(
                ctx(),
                &UpdateInterfaceRequest {
                    interface: Some(interface).into(),
                    ..Default::default()
                },
            )
            .await
    }

    /// Routes as (destination, gateway, device).
    async fn update_routes(&self, routes: &[(&str, &str, &str)]) -> ttrpc::Result<Empty> {
        let routes = routes
            .iter()
            .map(|(destination, gateway, device)| Route {
                destination: (*destination).into(),
                gateway: (*gateway).into(),
                device: (*device).into(),
                ..Default::default()
            })
            .collect();
        self.client
            .update_routes(
                ctx(),
                &UpdateRoutesRequest {
                    routes,
                    ..Default::default()
                },
            )
            .await
    }

    /// The addresses of `device` that are not link-local, as "ip/prefix",
    /// sorted; panics if one is still tentative (DAD not skipped).
    fn addresses(&self, device: &str) -> Vec<String> {
        let links = self.ip_json(&["addr", "show", "dev", device]);
        let mut addresses: Vec<String> = links[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["scope"] != "link")
            .map(|a| {
                assert!(a.get("tentative").is_none(), "tentative address: {a}");
                format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"])
            })
            .collect();
        addresses.sort();
        addresses
    }

    /// The routes of `device` as "destination via gateway" (or
    /// "destination scope link"), sorted, kernel routes left out.
    fn routes(&self, family: &str, device: &str) -> Vec<String> {
        let mut routes: Vec<String> = self
            .ip_json(&[family, "route", "show", "dev", device])
            .iter()
            .filter(|r| r["protocol"] != "kernel")
            .map(|r| {
                let destination = r["dst"].as_str().unwrap();
                match r["gateway"].as_str() {
                    Some(gateway) => format!("{destination} via {gateway}"),
                    None => {
                        let scope = r["scope"].as_str().unwrap_or("global");
                        format!("{destination} scope {scope}")
                    }
                }
            })
            .collect();
        routes.sort();
        routes
    }
}

fn rpc_status(result: ttrpc::Result<Empty>) -> (ttrpc::Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => (status.code(), status.message().to_string()),
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// Whether any process is still in the network namespace with this inode.
fn netns_in_use(inode: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .any(|entry| {
            std::fs::metadata(entry.path().join("ns/net")).is_ok_and(|ns| ns.ino() == inode)
        })
}

#[tokio::test]
async fn interface_and_routes_configure_the_nic_found_by_mac() {
    use std::os::unix::fs::MetadataExt;
    let agent = HostAgent::launch_with_own_network().await;
    let agent_pid = agent.agent_pid();
    let netns = std::fs::metadata(format!("/proc/{agent_pid}/ns/net"))
        .unwrap()
        .ino();
    agent.ip(&[
        "link", "add", "nic0", "address", NIC_MAC, "type", "veth", "peer", "name", "wire",
    ]);
    agent.ip(&["link", "set", "wire", "up"]);
    // The agent brought lo up, as it does in the guest.
    let lo = &agent.ip_json(&["link", "show", "dev", "lo"])[0];
    assert!(
        lo["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{lo}"
    );

    agent
        .update_interface(
            "eth0",
            &NIC_MAC.to_uppercase(),
            1400,
            &[("10.88.0.5", 16), ("fd00:88::5", 64)],
        )
        .await
        .unwrap();
    let link = &agent.ip_json(&["link", "show", "dev", "eth0"])[0];
    assert_eq!(link["address"], NIC_MAC, "{link}");
    assert_eq!(link["mtu"], 1400, "{link}");
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{link}"
    );
    assert!(agent
        .ip_json(&["link", "show"])
        .iter()
        .all(|l| l["ifname"] != "nic0"));
    assert_eq!(agent.addresses("eth0"), ["10.88.0.5/16", "fd00:88::5/64"]);

    // Listed before the link route that makes its gateway reachable, as a
    // shim may list them: the agent orders them. The prefix routes the
    // kernel made for the addresses come too, as read from the pod's
    // namespace, and must not clash with the kernel's.
    agent
        .update_routes(&[
            ("10.77.0.0/16", "169.254.1.1", "eth0"),
            ("default", "10.88.0.1", "eth0"),
            ("10.99.1.0/24", "10.88.0.254", "eth0"),
            ("169.254.1.1", "", "eth0"),
            ("::/0", "fd00:88::1", "eth0"),
            ("10.88.0.0/16", "", "eth0"),
            ("fd00:88::/64", "", "eth0"),
        ])
        .await
        .unwrap();
    assert_eq!(
        agent.routes("-4", "eth0"),
        [
            "10.77.0.0/16 via 169.254.1.1",
            "10.88.0.0/16 scope link",
            "10.99.1.0/24 via 10.88.0.254",
            "169.254.1.1 scope link",
            "default via 10.88.0.1",
        ]
    );
    assert_eq!(
        agent.routes("-6", "eth0"),
        ["default via fd00:88::1", "fd00:88::/64 scope global"]
    );

    // A new address set replaces the old one; the link goes down and up, so
    // the routes come again, now fewer: the others are gone.
    agent
        .update_interface(
            "eth0",
            NIC_MAC,
            1400,
            &[("10.88.0.7", 16), ("fd00:88::7", 64)],
        )
        .await
        .unwrap();
    assert_eq!(agent.addresses("eth0"), ["10.88.0.7/16", "fd00:88::7/64"]);
    agent
        .update_routes(&[
            ("default", "10.88.0.1", "eth0"),
            ("10.99.1.0/24", "10.88.0.254", "eth0"),
        ])
        .await
        .unwrap();
    agent
        .update_routes(&[("default", "10.88.0.1", "eth0")])
        .await
        .unwrap();
    assert_eq!(agent.routes("-4", "eth0"), ["default via 10.88.0.1"]);
    assert_eq!(agent.routes("-6", "eth0"), Vec::<String>::new());

    assert!(
        netns_in_use(netns),
        "the agent's namespace is seen in /proc"
    );
    drop(agent);
    let deadline = Instant::now() + Duration::from_secs(10);
    while netns_in_use(netns) {
        assert!(
            Instant::now() < deadline,
            "a process is still in the agent's network namespace"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn network_errors_name_what_was_wrong() {
    let agent = HostAgent::launch_with_own_network().await;
    agent.ip(&[
        "link", "add", "nic0", "address", NIC_MAC, "type", "veth", "peer", "name", "wire",
    ]);

    let (code, message) = rpc_status(
        agent
            .update_interface("eth0", "02:00:00:00:00:99", 1400, &[("10.88.0.5", 16)])
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{message}");
    assert!(message.contains("02:00:00:00:00:99"), "{message}");
    assert!(message.contains(&format!("nic0 ({NIC_MAC})")), "{message}");

    let (code, message) = rpc_status(
        agent
            .update_interface("eth0", NIC_MAC, 1400, &[("10.88.0.5", 33)])
            .await,
    );
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{message}");
    assert!(
        message.contains("interface.addresses[0].prefix_length: 33"),
        "{message}"
    );
    // Nothing was changed by the refused requests.
    assert!(agent
        .ip_json(&["link", "show"])
        .iter()
        .any(|l| l["ifname"] == "nic0"));

    agent
        .update_interface("eth0", NIC_MAC, 0, &[("10.88.0.5", 16)])
        .await
        .unwrap();
    let (code, message) = rpc_status(
        agent
            .update_routes(&[("default", "10.88.0.1", "eth9")])
            .await,
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{message}");
    assert!(
        message.contains("device eth9 of route default via 10.88.0.1 dev eth9 not found"),
        "{message}"
    );

    // The kernel's refusal, with the route it refused.
    let (code, message) = rpc_status(
        agent
            .update_routes(&[("default", "10.200.0.1", "eth0")])
            .await,
    );
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{message}");
    assert!(
        message
            .contains("adding the route default via 10.200.0.1 dev eth0: Network is unreachable"),
        "{message}"
    );
}

/// Containers created at once whose cgroups share a parent that does not
/// exist yet: libcgroups makes each missing directory with exists() then
/// create_dir, so two creates raced to make the parent and the loser failed
/// with "File exists" (here in nearly every run), until the agent made the
/// parents itself.
#[tokio::test]
async fn concurrent_creates_share_a_new_cgroup_parent() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    // A parent this run alone uses, and deep: a create that finds a level
    // made only looks at it, so it catches up with the one making them,
    // and the two race for the next level.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let top = format!("hull-race-{}-{stamp}", std::process::id());
    let levels: Vec<String> = (0..400).map(|level| format!("l{level}")).collect();
    let parent = format!("/{top}/{}", levels.join("/"));
    let ids: Vec<String> = (0..16).map(|i| format!("race{i}")).collect();
    let creates = ids.iter().map(|id| {
        let mut spec = spec(&rootfs, &["true"], false);
        let mut linux = spec.linux().clone().unwrap();
        linux.set_cgroups_path(Some(format!("{parent}/{id}").into()));
        spec.set_linux(Some(linux));
        let agent = &agent;
        async move { (id, agent.create(id, &spec, pipes(false)).await) }
    });
    let results = futures_util::future::join_all(creates).await;
    for (id, result) in &results {
        if result.is_ok() {
            agent.start(id).await;
            assert_eq!(agent.wait(id, "").await, 0);
            agent.remove(id).await;
        }
    }
    // The cgroups of the removed containers are gone; their parents are
    // left to whoever made them, here the test.
    let cgroup_root = PathBuf::from(format!("/proc/{}/root/sys/fs/cgroup", agent.agent_pid()));
    let mut dir = cgroup_root.join(parent.trim_start_matches('/'));
    while dir != cgroup_root {
        let _ = std::fs::remove_dir(&dir);
        dir.pop();
    }
    for (id, result) in results {
        if let Err(err) = result {
            panic!("creating {id}: {err:?}");
        }
    }
}

#[tokio::test]
async fn cgroups_path_must_stay_under_the_cgroup_root() {
    let agent = HostAgent::launch().await;
    let rootfs = busybox_rootfs(agent.dir.path());
    let mut spec = spec(&rootfs, &["true"], false);
    let mut linux = spec.linux().clone().unwrap();
    linux.set_cgroups_path(Some("/hull/../../escape/c1".into()));
    spec.set_linux(Some(linux));
    match agent
        .create("escape", &spec, pipes(false))
        .await
        .unwrap_err()
    {
        ttrpc::Error::RpcStatus(status) => {
            assert_eq!(status.code(), ttrpc::Code::INVALID_ARGUMENT);
            assert!(
                status.message().contains("cgroupsPath"),
                "{}",
                status.message()
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
}
