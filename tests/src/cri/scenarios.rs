//! Pod scenarios through CRI. Each takes the runtime handler and returns
//! what a user of the pod would observe, with nothing that differs between
//! runs (no IPs, ids or timestamps), so a test can check runc's answers
//! against the expected ones and Hull's against runc's. Every scenario
//! removes its pod through CRI and reports what the removal left behind.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use k8s_cri::v1 as api;

use super::pod::PodFootprint;
use super::port_forward;
use super::{ContainerSpec, CriContainerd, CriError, Pod, PodSpec};

/// How long a server in a pod may take to start answering.
const SERVER_START: Duration = Duration::from_secs(30);

/// What a pod held on the host while it ran, and what its removal left.
#[derive(Debug, PartialEq, Eq)]
pub struct Teardown {
    /// Which kinds of host resources the pod had while it ran: the check
    /// after removal only means something for kinds that were there.
    pub held: Held,
    /// Everything still there after StopPodSandbox and RemovePodSandbox.
    pub left: PodFootprint,
}

/// Which kinds of host resources a running pod had.
#[derive(Debug, PartialEq, Eq)]
pub struct Held {
    pub processes: bool,
    pub netns: bool,
    pub veth: bool,
    pub mounts: bool,
    pub ip_allocation: bool,
    pub cgroups: bool,
}

impl Held {
    /// A pod with its own network has every kind.
    pub const ALL: Held = Held {
        processes: true,
        netns: true,
        veth: true,
        mounts: true,
        ip_allocation: true,
        cgroups: true,
    };
}

fn teardown(pod: Pod<'_>) -> Teardown {
    let (before, left) = pod.teardown();
    Teardown {
        held: Held {
            processes: !before.processes.is_empty(),
            netns: !before.netns.is_empty(),
            veth: !before.interfaces.is_empty(),
            mounts: !before.mounts.is_empty(),
            ip_allocation: !before.ip_allocations.is_empty(),
            cgroups: !before.cgroups.is_empty(),
        },
        left,
    }
}

/// Networking, naming and shared namespaces of a pod with two containers.
#[derive(Debug, PartialEq, Eq)]
pub struct PodNetworking {
    /// PodSandboxStatus reports an IP in the CNI subnet.
    pub ip_in_pod_subnet: bool,
    /// The host's HTTP GET of podIP:8080 (httpd in container A).
    pub host_to_pod: String,
    /// Container B's `wget` of 127.0.0.1:8080: A's httpd.
    pub container_to_container: String,
    /// Container B's `wget` of a server the test runs on the bridge's
    /// gateway address: what B printed.
    pub pod_to_host: String,
    /// ... the request line the host's server got ...
    pub host_got_request: String,
    /// ... from the pod's IP.
    pub host_saw_pod_ip: bool,
    /// `hostname` in A and B.
    pub hostnames: [String; 2],
    pub etc_hostname: String,
    /// What one container reads in /dev/shm of a file the other wrote there.
    pub shm_shared: String,
    pub resolv_conf: String,
    /// /etc/hosts equals the file CRI wrote (for a pod network, a copy of
    /// the host's /etc/hosts).
    pub etc_hosts_is_hosts_copy: bool,
    /// A and B share the network, IPC and UTS namespaces ...
    pub shared_network_ipc_uts: bool,
    /// ... and not the PID namespace (NamespaceMode CONTAINER).
    pub separate_pid: bool,
    /// The pod's network namespace is not the host's: the host's CNI
    /// bridge, which exists only there, is not among the pod's interfaces.
    /// (Namespace inode numbers say nothing across kernels: a guest's and
    /// a freshly booted host's can be equal, as in the nested KVM lab.)
    pub network_isolated_from_host: bool,
    pub teardown: Teardown,
}

pub const POD_HOSTNAME: &str = "hull-pod";
pub const DNS_SEARCHES: [&str; 2] = ["hull.test", "svc.hull.test"];
pub const DNS_OPTIONS: [&str; 1] = ["ndots:2"];

/// The DNS server the pods are told about: an address of the pod network
/// that nothing answers on (DNS is only configured, never queried).
pub fn dns_server(cri: &CriContainerd) -> Ipv4Addr {
    let base = u32::from(cri.network().subnet);
    Ipv4Addr::from(base + 53)
}

pub fn pod_networking(cri: &CriContainerd, handler: &str) -> PodNetworking {
    let network = cri.network().clone();
    let dns = dns_server(cri).to_string();
    let mut pod = run_pod(
        cri,
        handler,
        PodSpec::new("net")
            .hostname(POD_HOSTNAME)
            .dns(&[&dns], &DNS_SEARCHES, &DNS_OPTIONS),
    );
    let server = pod.start_container(&ContainerSpec::new(
        "server",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    ));
    let client = pod.start_container(&ContainerSpec::new("client", &["sleep", "100000"]));
    let pod_ip = pod
        .ip()
        .unwrap_or_else(|| panic!("pod {} has no IP", pod.name()));

    let host_to_pod = http_get(
        SocketAddr::from((pod_ip, 8080)),
        "/index.html",
        SERVER_START,
    )
    .unwrap_or_else(|e| panic!("GET http://{pod_ip}:8080/index.html from the host: {e}"));
    let container_to_container = pod.exec_ok(
        &client,
        &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/index.html"],
    );

    let host_server = OneShotHttpServer::start(network.gateway, "hello-from-host\n");
    let url = format!("http://{}/from-pod", host_server.address());
    let pod_to_host = pod.exec_ok(&client, &["wget", "-q", "-O", "-", &url]);
    let (host_got_request, peer) = host_server.wait();

    let hostnames = [
        pod.exec_ok(&server, &["hostname"]),
        pod.exec_ok(&client, &["hostname"]),
    ];
    pod.exec_ok(
        &server,
        &["sh", "-c", "echo shm-of-the-pod > /dev/shm/note"],
    );
    let shm_shared = pod.exec_ok(&client, &["cat", "/dev/shm/note"]);
    let etc_hostname = pod.exec_ok(&client, &["cat", "/etc/hostname"]);
    let resolv_conf = pod.exec_ok(&client, &["cat", "/etc/resolv.conf"]);
    let etc_hosts = pod.exec_ok(&client, &["cat", "/etc/hosts"]);
    let host_hosts = std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts");

    let namespaces = |container: &str| {
        pod.exec_ok(
            container,
            &[
                "sh",
                "-c",
                "for ns in net ipc uts pid; do readlink /proc/self/ns/$ns; done",
            ],
        )
        .lines()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    let (a, b) = (namespaces(&server), namespaces(&client));
    assert_eq!(a.len(), 4, "readlink of 4 namespaces in server: {a:?}");
    assert_eq!(b.len(), 4, "readlink of 4 namespaces in client: {b:?}");
    let interfaces = pod.exec_ok(&client, &["cat", "/proc/net/dev"]);
    let interfaces: Vec<&str> = interfaces
        .lines()
        .filter_map(|line| Some(line.split_once(':')?.0.trim()))
        .collect();
    assert!(
        interfaces.contains(&"lo"),
        "no interfaces read in the pod: {interfaces:?}"
    );

    PodNetworking {
        ip_in_pod_subnet: network.contains(pod_ip),
        host_to_pod,
        container_to_container,
        pod_to_host,
        host_got_request,
        host_saw_pod_ip: peer == pod_ip,
        hostnames,
        etc_hostname,
        shm_shared,
        resolv_conf,
        etc_hosts_is_hosts_copy: etc_hosts == host_hosts,
        shared_network_ipc_uts: a[..3] == b[..3],
        separate_pid: a[3] != b[3],
        network_isolated_from_host: !interfaces.contains(&network.bridge.as_str()),
        teardown: teardown(pod),
    }
}

/// Host directories and files seen through the container's mounts.
#[derive(Debug, PartialEq, Eq)]
pub struct Volumes {
    /// Read-write directory: the host's file as the container reads it ...
    pub rw_reads_host_file: String,
    /// ... and a file the container wrote, as the host reads it, with its
    /// mode on the host.
    pub rw_written_on_host: String,
    pub rw_written_mode: u32,
    /// Read-only directory: the host's file as the container reads it ...
    pub ro_reads_host_file: String,
    /// ... and the exit code and stderr of a write into it.
    pub ro_write_code: i32,
    pub ro_write_error: String,
    /// Single-file mounts (a Secret and a ConfigMap key): `%a` mode and
    /// content inside the container.
    pub secret_file: (String, String),
    pub config_file: (String, String),
    /// A host directory (emptyDir on disk) mounted in both containers: its
    /// mode, and what B reads of a file A wrote.
    pub empty_dir_mode: String,
    pub empty_dir_shared: String,
    /// A host tmpfs mounted as a hostPath: its file system type inside the
    /// container (`statfs`'s magic number in hex) and a file the container
    /// wrote, as the host reads it.
    pub tmpfs_type: String,
    pub tmpfs_written_on_host: String,
    pub teardown: Teardown,
}

pub fn volumes(cri: &CriContainerd, handler: &str) -> Volumes {
    let mut pod = run_pod(cri, handler, PodSpec::new("vol"));
    let dir = pod.dir().join("volumes");
    let rw = dir.join("rw");
    let ro = dir.join("ro");
    let empty = dir.join("empty");
    let memory = dir.join("memory");
    for d in [&rw, &ro, &empty, &memory] {
        create_dir(d);
    }
    write_file(&rw.join("from-host"), "rw-host-data\n", 0o644);
    write_file(&ro.join("from-host"), "ro-host-data\n", 0o644);
    let secret = dir.join("secret-token");
    write_file(&secret, "s3cret\n", 0o400);
    let config = dir.join("app.conf");
    write_file(&config, "key=value\n", 0o644);
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o777))
        .expect("chmod emptyDir");
    let _tmpfs = Tmpfs::mount(&memory);

    let writer = pod.start_container(
        &ContainerSpec::new("writer", &["sleep", "100000"])
            .mount(&rw, "/data/rw", false)
            .mount(&ro, "/data/ro", true)
            .mount(&secret, "/etc/secret/token", true)
            .mount(&config, "/etc/config/app.conf", true)
            .mount(&empty, "/cache", false)
            .mount(&memory, "/mem", false),
    );
    let reader = pod.start_container(
        &ContainerSpec::new("reader", &["sleep", "100000"]).mount(&empty, "/cache", false),
    );

    let rw_reads_host_file = pod.exec_ok(&writer, &["cat", "/data/rw/from-host"]);
    pod.exec_ok(
        &writer,
        &["sh", "-c", "echo from-container > /data/rw/written"],
    );
    let written = rw.join("written");
    let rw_written_on_host = std::fs::read_to_string(&written)
        .unwrap_or_else(|e| panic!("reading {}: {e}", written.display()));
    let rw_written_mode = mode(&written);

    let ro_reads_host_file = pod.exec_ok(&writer, &["cat", "/data/ro/from-host"]);
    let (ro_write_code, _, ro_write_error) =
        pod.exec(&writer, &["sh", "-c", "echo x > /data/ro/new"]);

    let file = |path: &str| {
        let stat = pod.exec_ok(&writer, &["stat", "-c", "%a", path]);
        (
            stat.trim().to_string(),
            pod.exec_ok(&writer, &["cat", path]),
        )
    };
    let secret_file = file("/etc/secret/token");
    let config_file = file("/etc/config/app.conf");

    let empty_dir_mode = pod
        .exec_ok(&writer, &["stat", "-c", "%a", "/cache"])
        .trim()
        .to_string();
    pod.exec_ok(
        &writer,
        &["sh", "-c", "echo shared-by-writer > /cache/note"],
    );
    let empty_dir_shared = pod.exec_ok(&reader, &["cat", "/cache/note"]);

    let tmpfs_type = pod
        .exec_ok(&writer, &["stat", "-f", "-c", "%t", "/mem"])
        .trim()
        .to_string();
    pod.exec_ok(&writer, &["sh", "-c", "echo in-memory > /mem/file"]);
    let in_memory = memory.join("file");
    let tmpfs_written_on_host = std::fs::read_to_string(&in_memory)
        .unwrap_or_else(|e| panic!("reading {}: {e}", in_memory.display()));

    Volumes {
        rw_reads_host_file,
        rw_written_on_host,
        rw_written_mode,
        ro_reads_host_file,
        ro_write_code,
        ro_write_error,
        secret_file,
        config_file,
        empty_dir_mode,
        empty_dir_shared,
        tmpfs_type,
        tmpfs_written_on_host,
        teardown: teardown(pod),
    }
}

/// An emptyDir with `medium: Memory`, as the kubelet makes one: a tmpfs at
/// `<pod>/volumes/kubernetes.io~empty-dir/<name>`, bound into two
/// containers of the pod.
#[derive(Debug, PartialEq, Eq)]
pub struct MemoryVolume {
    /// Its file system type in the writer (`statfs` magic in hex).
    pub fs_type: String,
    /// What the reader reads of a file the writer wrote.
    pub shared: String,
    /// Whether that file is in the host's tmpfs.
    pub on_host: bool,
    pub teardown: Teardown,
}

/// tmpfs's `statfs` magic, as `stat -f -c %t` prints it.
pub const TMPFS_MAGIC_HEX: &str = "1021994";

pub fn memory_volume(cri: &CriContainerd, handler: &str) -> MemoryVolume {
    let mut pod = run_pod(cri, handler, PodSpec::new("memvol"));
    let volume = pod.dir().join("volumes/kubernetes.io~empty-dir/cache");
    create_dir(&volume);
    let _tmpfs = Tmpfs::mount(&volume);
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o777))
        .expect("chmod the emptyDir");
    let writer = pod.start_container(
        &ContainerSpec::new("writer", &["sleep", "100000"]).mount(&volume, "/cache", false),
    );
    let reader = pod.start_container(
        &ContainerSpec::new("reader", &["sleep", "100000"]).mount(&volume, "/cache", false),
    );
    let fs_type = pod
        .exec_ok(&writer, &["stat", "-f", "-c", "%t", "/cache"])
        .trim()
        .to_string();
    pod.exec_ok(&writer, &["sh", "-c", "echo in-pod-memory > /cache/note"]);
    let shared = pod.exec_ok(&reader, &["cat", "/cache/note"]);
    let on_host = volume.join("note").exists();
    MemoryVolume {
        fs_type,
        shared,
        on_host,
        teardown: teardown(pod),
    }
}

/// Exit code, stdout and stderr of one exec.
#[derive(Debug, PartialEq, Eq)]
pub struct ExecResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// ExecSync, and streaming exec over containerd's streaming server.
#[derive(Debug, PartialEq, Eq)]
pub struct Exec {
    /// ExecSync of `echo out; echo err >&2; exit 3`.
    pub sync: ExecResult,
    /// Streaming exec without a terminal: stdin in, stdout and stderr apart.
    pub streams: ExecResult,
    /// Streaming exec of `sh` with a terminal resized to 100x40: what
    /// `stty size` printed ...
    pub terminal_size: String,
    /// ... `[ -t 0 ]` in it ...
    pub terminal_is_tty: bool,
    /// ... and the exit code of `exit 5`.
    pub terminal_exit_code: i32,
    pub teardown: Teardown,
}

pub fn exec(cri: &CriContainerd, handler: &str) -> Exec {
    let mut pod = run_pod(cri, handler, PodSpec::new("exec"));
    let id = pod.start_container(&ContainerSpec::new("shell", &["sleep", "100000"]));

    let (code, stdout, stderr) = pod.exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let sync = ExecResult {
        code,
        stdout,
        stderr,
    };

    let client = cri.client();
    let mut session = client
        .exec(api::ExecRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "read line; echo got-$line; echo err-$line >&2; exit 7".into(),
            ],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    session
        .send_stdin(b"hello\n")
        .unwrap_or_else(|e| panic!("exec stdin: {e}"));
    let outcome = session
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("streaming exec without a terminal: {e}"));
    let streams = ExecResult {
        code: outcome.exit_code,
        stdout: String::from_utf8_lossy(&outcome.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&outcome.stderr).into_owned(),
    };

    let mut session = client
        .exec(api::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stdin: true,
            stdout: true,
            // A terminal has one output stream: CRI refuses stderr with tty.
            stderr: false,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    session
        .resize(100, 40)
        .unwrap_or_else(|e| panic!("exec resize: {e}"));
    // The resize travels its own channel to the runtime while stdin goes
    // to the shell, so the shell waits (at most 10 s) until it sees the new
    // size. The markers are split in the typed line, so that its echo does
    // not count.
    session
        .send_stdin(
            b"i=0; until [ \"$(stty size)\" = '40 100' ] || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done; \
              echo \"SI\"\"ZE:$(stty size):\"; [ -t 0 ] && echo \"T\"\"TY:yes:\"; exit 5\n",
        )
        .unwrap_or_else(|e| panic!("exec stdin: {e}"));
    let outcome = session
        .wait(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("streaming exec with a terminal: {e}"));
    let output = String::from_utf8_lossy(&outcome.stdout).replace('\r', "");
    let marked = |key: &str| {
        let (_, rest) = output.split_once(&format!("{key}:"))?;
        rest.split_once(':').map(|(value, _)| value.to_string())
    };
    let terminal_size = marked("SIZE")
        .unwrap_or_else(|| panic!("the terminal exec printed no size\noutput: {output:?}"));

    Exec {
        sync,
        streams,
        terminal_size,
        terminal_is_tty: marked("TTY").as_deref() == Some("yes"),
        terminal_exit_code: outcome.exit_code,
        teardown: teardown(pod),
    }
}

/// A container's log file as CRI wrote it.
#[derive(Debug, PartialEq, Eq)]
pub struct Logs {
    pub exit_code: i32,
    pub reason: String,
    /// ContainerStatus.log_path is the file under the pod's LogDirectory.
    pub log_path_in_log_directory: bool,
    /// Every line is `<RFC 3339 time> <stream> <P|F> <text>`.
    pub every_line_well_formed: bool,
    /// `<tag> <text>` of the stdout lines, in order; text longer than 40
    /// bytes shown as `<N bytes>`.
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub teardown: Teardown,
}

/// The log-line limit of containerd (max_container_log_line_size): longer
/// lines are split into partial (P) lines.
pub const LOG_LINE_LIMIT: usize = 16 * 1024;

pub fn logs(cri: &CriContainerd, handler: &str) -> Logs {
    let mut pod = run_pod(cri, handler, PodSpec::new("logs"));
    let spec = ContainerSpec::new(
        "logger",
        &[
            "sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; head -c 20000 /dev/zero | tr '\\0' x; echo; echo last",
        ],
    );
    let id = pod.start_container(&spec);
    let status = pod.wait_exited(&id, Duration::from_secs(30));
    let path = pod.log_dir().join(spec.log_path());
    // The status can come before the last line is flushed to the file.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains(" stdout F last\n") || Instant::now() >= deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<Option<LogLine>> = text.lines().map(LogLine::parse).collect();
    let shown = |stream: &str| {
        lines
            .iter()
            .flatten()
            .filter(|l| l.stream == stream)
            .map(|l| {
                let text = if l.text.len() > 40 {
                    format!("<{} bytes>", l.text.len())
                } else {
                    l.text.clone()
                };
                format!("{} {text}", l.tag)
            })
            .collect::<Vec<_>>()
    };
    Logs {
        exit_code: status.exit_code,
        reason: status.reason.clone(),
        log_path_in_log_directory: Path::new(&status.log_path) == path,
        every_line_well_formed: !lines.is_empty() && lines.iter().all(Option::is_some),
        stdout: shown("stdout"),
        stderr: shown("stderr"),
        teardown: teardown(pod),
    }
}

/// One line of the CRI log format.
struct LogLine {
    stream: String,
    tag: String,
    text: String,
}

impl LogLine {
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.splitn(4, ' ');
        let time = fields.next()?;
        let stream = fields.next()?;
        let tag = fields.next()?;
        let text = fields.next().unwrap_or_default();
        (is_rfc3339(time) && matches!(stream, "stdout" | "stderr") && matches!(tag, "P" | "F"))
            .then(|| Self {
                stream: stream.to_string(),
                tag: tag.to_string(),
                text: text.to_string(),
            })
    }
}

/// `2006-01-02T15:04:05.999999999Z07:00` (Go's RFC3339Nano).
fn is_rfc3339(time: &str) -> bool {
    let b = time.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let zone = time.ends_with('Z')
        || time
            .get(time.len().saturating_sub(6)..)
            .is_some_and(|z| (z.starts_with('+') || z.starts_with('-')) && z.as_bytes()[3] == b':');
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && zone
}

/// Stats and a resource update of a running container.
#[derive(Debug, PartialEq, Eq)]
pub struct Resources {
    /// ContainerStats reports at least 100 ms of CPU after a 1 s busy loop.
    pub cpu_usage_reported: bool,
    /// ... and a non-zero memory working set.
    pub memory_working_set_reported: bool,
    /// ListContainerStats of the pod lists the container, with CPU usage.
    pub listed_in_pod_stats: bool,
    /// The memory limit the container's cgroup shows, at creation (64 MiB)
    /// and after UpdateContainerResources (48 MiB).
    pub memory_limit: u64,
    pub memory_limit_after_update: u64,
    pub teardown: Teardown,
}

pub const MIB: i64 = 1024 * 1024;

/// The container's own memory limit: cgroup v2's memory.max, or v1's
/// memory.limit_in_bytes.
const READ_MEMORY_LIMIT: &str =
    "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes";

pub fn resources(cri: &CriContainerd, handler: &str) -> Resources {
    let mut pod = run_pod(cri, handler, PodSpec::new("res"));
    let id = pod
        .start_container(&ContainerSpec::new("busy", &["sleep", "100000"]).memory_limit(64 * MIB));
    // timeout ends the loop with SIGTERM; the outer shell exits 0.
    pod.exec_ok(
        &id,
        &["sh", "-c", "timeout 1 sh -c 'while :; do :; done'; true"],
    );
    let stats = cri
        .client()
        .container_stats(&id)
        .unwrap_or_else(|e| panic!("{e}"));
    let cpu = |s: &api::ContainerStats| {
        s.cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value)
    };
    let working_set = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    let listed = cri
        .client()
        .list_container_stats(pod.id())
        .unwrap_or_else(|e| panic!("{e}"));
    let listed_in_pod_stats = listed
        .iter()
        .any(|s| s.attributes.as_ref().is_some_and(|a| a.id == id) && cpu(s) > 0);

    let limit = |pod: &Pod<'_>| -> u64 {
        let text = pod.exec_ok(&id, &["sh", "-c", READ_MEMORY_LIMIT]);
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("memory limit {text:?}: {e}"))
    };
    let memory_limit = limit(&pod);
    cri.client()
        .update_container_resources(
            &id,
            api::LinuxContainerResources {
                memory_limit_in_bytes: 48 * MIB,
                memory_swap_limit_in_bytes: 48 * MIB,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let memory_limit_after_update = limit(&pod);

    Resources {
        cpu_usage_reported: cpu(&stats) >= 100_000_000,
        memory_working_set_reported: working_set > 0,
        listed_in_pod_stats,
        memory_limit,
        memory_limit_after_update,
        teardown: teardown(pod),
    }
}

/// A container that allocates past its memory limit.
#[derive(Debug, PartialEq, Eq)]
pub struct OutOfMemory {
    pub exit_code: i32,
    pub reason: String,
    pub teardown: Teardown,
}

pub fn out_of_memory(cri: &CriContainerd, handler: &str) -> OutOfMemory {
    let mut pod = run_pod(cri, handler, PodSpec::new("oom"));
    // tail keeps the (endless) last line of /dev/zero in memory.
    let id = pod
        .start_container(&ContainerSpec::new("hog", &["tail", "/dev/zero"]).memory_limit(32 * MIB));
    let status = pod.wait_exited(&id, Duration::from_secs(60));
    OutOfMemory {
        exit_code: status.exit_code,
        reason: status.reason,
        teardown: teardown(pod),
    }
}

/// A pod with `hostNetwork: true`.
#[derive(Debug, PartialEq, Eq)]
pub struct HostNetwork {
    /// The container's network namespace is the host's.
    pub shares_host_netns: bool,
    /// The container sees the host's CNI bridge.
    pub sees_host_bridge: bool,
    pub teardown: Teardown,
}

/// RunPodSandbox's error when the handler refuses a host-network pod
/// (what a VM runtime may do), else what the pod saw.
pub fn host_network(cri: &CriContainerd, handler: &str) -> Result<HostNetwork, CriError> {
    let mut pod = Pod::run(cri, handler, PodSpec::new("hostnet").host_network())?;
    let id = pod.start_container(&ContainerSpec::new("shell", &["sleep", "100000"]));
    let netns = pod.exec_ok(&id, &["readlink", "/proc/self/ns/net"]);
    let host_netns = std::fs::read_link("/proc/self/ns/net")
        .expect("readlink /proc/self/ns/net")
        .to_string_lossy()
        .into_owned();
    let devices = pod.exec_ok(&id, &["cat", "/proc/net/dev"]);
    let bridge = format!("{}:", cri.network().bridge);
    Ok(HostNetwork {
        shares_host_netns: netns.trim() == host_netns,
        sees_host_bridge: devices.split_whitespace().any(|w| w == bridge),
        teardown: teardown(pod),
    })
}

/// A pod with `shareProcessNamespace: true`.
#[derive(Debug, PartialEq, Eq)]
pub struct SharedPid {
    /// The command of PID 1 as the second container sees it (the pause
    /// container's).
    pub pid1: String,
    /// The first container's `sleep` as the second container sees it.
    pub sees_other_container: bool,
    pub teardown: Teardown,
}

pub fn shared_pid(cri: &CriContainerd, handler: &str) -> SharedPid {
    let mut pod = run_pod(
        cri,
        handler,
        PodSpec::new("pidns").share_process_namespace(),
    );
    pod.start_container(&ContainerSpec::new("a", &["sleep", "4242"]));
    let b = pod.start_container(&ContainerSpec::new("b", &["sleep", "100000"]));
    let pid1 = pod.exec_ok(&b, &["cat", "/proc/1/comm"]);
    let processes = pod.exec_ok(&b, &["ps", "-o", "args"]);
    SharedPid {
        pid1: pid1.trim().to_string(),
        sees_other_container: processes.lines().any(|l| l.trim() == "sleep 4242"),
        teardown: teardown(pod),
    }
}

/// A privileged container in a privileged pod: under runc it sees the
/// host's devices; the error is CRI's answer when a handler refuses.
#[derive(Debug, PartialEq, Eq)]
pub struct Privileged {
    /// The container sees the host's disk devices.
    pub sees_host_devices: bool,
    pub teardown: Teardown,
}

pub fn privileged(cri: &CriContainerd, handler: &str) -> Result<Privileged, CriError> {
    let mut pod = Pod::run(cri, handler, PodSpec::new("priv").privileged())?;
    let created =
        pod.create_container(&ContainerSpec::new("admin", &["sleep", "100000"]).privileged());
    // containerd asks the runtime for the task at StartContainer.
    let started = created.and_then(|id| cri.client().start_container(&id).map(|()| id));
    let id = match started {
        Ok(id) => id,
        Err(err) => {
            // Report the refusal only after the pod is removed cleanly.
            let left = teardown(pod).left;
            assert_eq!(
                left,
                PodFootprint::default(),
                "a refused pod left things behind"
            );
            return Err(err);
        }
    };
    let host_devices: Vec<String> = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let devices = pod.exec_ok(&id, &["ls", "/dev"]);
    Ok(Privileged {
        sees_host_devices: host_devices
            .iter()
            .any(|d| devices.split_whitespace().any(|seen| seen == d)),
        teardown: teardown(pod),
    })
}

/// A read-only volume whose host directory has a tmpfs mounted inside it.
/// A plain `ro` bind is not recursive: the tmpfs stays writable.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadOnlyVolume {
    /// Writing a file at the volume's top (the error, or `written`).
    pub top: String,
    /// Writing a file in the tmpfs below it.
    pub below: String,
    /// What the host's tmpfs holds after.
    pub host_sees_below: String,
    pub teardown: Teardown,
}

pub fn read_only_volume_with_a_mount_inside(cri: &CriContainerd, handler: &str) -> ReadOnlyVolume {
    let mut pod = Pod::run(cri, handler, PodSpec::new("rovolume"))
        .unwrap_or_else(|e| panic!("a pod under {handler}: {e}"));
    let volume = pod.dir().join("ro-volume");
    let inner = volume.join("inner");
    create_dir(&volume);
    create_dir(&inner);
    write_file(&volume.join("from-host"), "top\n", 0o644);
    let tmpfs = Tmpfs::mount(&inner);
    let id = pod.start_container(
        &ContainerSpec::new("user", &["sleep", "100000"]).mount(&volume, "/data", true),
    );
    let write = |path: &str| {
        let script = format!("echo data > {path} && echo written");
        let (_, out, err) = pod.exec(&id, &["sh", "-c", &script]);
        format!("{}{}", out.trim(), err.trim())
    };
    let top = write("/data/new");
    let below = write("/data/inner/new");
    let host_sees_below = std::fs::read_to_string(inner.join("new")).unwrap_or_default();
    let teardown = teardown(pod);
    drop(tmpfs);
    ReadOnlyVolume {
        top,
        below,
        host_sees_below,
        teardown,
    }
}

/// Mount propagation between a pod's containers and from the node: three
/// privileged containers bind one host directory (a shared mount, which
/// containerd requires) with `Bidirectional`, `HostToContainer` and `None`;
/// each mounts a tmpfs in it, and then the node does.
#[derive(Debug, PartialEq, Eq)]
pub struct MountPropagation {
    /// Per container, the tmpfs mounts it sees in the volume (the node's is
    /// `node`).
    pub seen: Vec<(String, String)>,
    /// The tmpfs mounts the host sees in the directory: under runc the
    /// `Bidirectional` container's, in a VM none.
    pub host_sees: String,
    pub teardown: Teardown,
}

pub fn mount_propagation(cri: &CriContainerd, handler: &str) -> MountPropagation {
    let mut pod = Pod::run(cri, handler, PodSpec::new("propagation").privileged())
        .unwrap_or_else(|e| panic!("a privileged pod under {handler}: {e}"));
    let volume = pod.dir().join("propagation");
    create_dir(&volume);
    let names = ["bidirectional", "host-to-container", "private"];
    for name in names.iter().chain(&["node"]) {
        create_dir(&volume.join(name));
    }
    let shared = SharedMount::bind(&volume);
    let containers: Vec<String> = names
        .iter()
        .zip([
            api::MountPropagation::PropagationBidirectional,
            api::MountPropagation::PropagationHostToContainer,
            api::MountPropagation::PropagationPrivate,
        ])
        .map(|(name, propagation)| {
            pod.start_container(
                &ContainerSpec::new(name, &["sleep", "100000"])
                    .privileged()
                    .mount_propagating(&volume, "/mnt/vol", propagation),
            )
        })
        .collect();
    for (id, name) in containers.iter().zip(names) {
        let script =
            format!("mount -t tmpfs {name} /mnt/vol/{name} && echo {name} > /mnt/vol/{name}/file");
        pod.exec_ok(id, &["sh", "-c", &script]);
    }
    // The node mounts in the volume once the containers run.
    let node = volume.join("node");
    nix::mount::mount(
        Some("node"),
        &node,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", node.display()));
    write_file(&node.join("file"), "node\n", 0o644);
    let seen = containers
        .iter()
        .zip(names)
        .map(|(id, name)| {
            let files = pod.exec_ok(id, &["sh", "-c", "cat /mnt/vol/*/file 2>/dev/null | sort"]);
            (
                name.to_string(),
                files.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    let host_sees = names
        .iter()
        .chain(&["node"])
        .filter(|name| volume.join(name).join("file").exists())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    drop(shared);
    MountPropagation {
        seen,
        host_sees,
        teardown: teardown(pod),
    }
}

/// A directory bound onto itself and made a shared mount, as a node's
/// volume directory must be for `Bidirectional`; dropping it detaches it
/// with whatever was mounted below it.
struct SharedMount(PathBuf);

impl SharedMount {
    fn bind(dir: &Path) -> Self {
        use nix::mount::{mount, MsFlags};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .unwrap_or_else(|e| panic!("binding {} onto itself: {e}", dir.display()));
        let guard = Self(dir.to_path_buf());
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("making {} shared: {e}", dir.display()));
        guard
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `kubectl port-forward` through CRI's PortForward and the streaming
/// server, as the kubelet serves it.
#[derive(Debug, PartialEq, Eq)]
pub struct PortForward {
    /// The status line and body of `GET /index.html` from httpd on 8080.
    pub web: (String, String),
    /// The body from an httpd that listens on 127.0.0.1:8081 only.
    pub loopback_only: String,
    /// A 229 KiB file from 8080: its length and whether it is intact.
    pub large: (usize, bool),
    /// Nothing listens on 8082: the bytes that came back, and whether the
    /// error channel said something.
    pub closed_port: (usize, bool),
    pub teardown: Teardown,
}

const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

pub fn port_forward(cri: &CriContainerd, handler: &str) -> PortForward {
    let mut pod = Pod::run(cri, handler, PodSpec::new("forward"))
        .unwrap_or_else(|e| panic!("a pod under {handler}: {e}"));
    let script = "mkdir -p /www /lo && echo forwarded > /www/index.html \
        && seq 1 40000 > /www/large && echo loopback-only > /lo/index.html \
        && httpd -p 127.0.0.1:8081 -h /lo && exec httpd -f -p 8080 -h /www";
    let web = pod.start_container(&ContainerSpec::new("web", &["sh", "-c", script]));
    let ready = "for i in $(seq 100); do wget -q -O /dev/null http://127.0.0.1:8080/ \
        && wget -q -O /dev/null http://127.0.0.1:8081/ && exit 0; sleep 0.2; done; exit 1";
    pod.exec_ok(&web, &["sh", "-c", ready]);

    let get = |port: u16, path: &str| -> (String, Vec<u8>) {
        let request = format!("GET {path} HTTP/1.0\r\n\r\n");
        let forwarded = port_forward::exchange(
            cri.client(),
            pod.id(),
            port,
            request.as_bytes(),
            FORWARD_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("port-forward {port} under {handler}: {e}"));
        let split = forwarded
            .data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "no HTTP response through port-forward {port} under {handler}: {forwarded:?}"
                )
            });
        let head = String::from_utf8_lossy(&forwarded.data[..split]).into_owned();
        let status = head.lines().next().unwrap_or_default().to_string();
        (status, forwarded.data[split + 4..].to_vec())
    };
    let (status, body) = get(8080, "/index.html");
    let (_, loopback_only) = get(8081, "/index.html");
    let (_, large) = get(8080, "/large");
    let expected: String = (1..=40000).map(|n| format!("{n}\n")).collect();
    let closed = port_forward::exchange(cri.client(), pod.id(), 8082, b"hello", FORWARD_TIMEOUT)
        .unwrap_or_else(|e| panic!("port-forward 8082 under {handler}: {e}"));
    PortForward {
        web: (status, String::from_utf8_lossy(&body).into_owned()),
        loopback_only: String::from_utf8_lossy(&loopback_only).into_owned(),
        large: (large.len(), large == expected.as_bytes()),
        closed_port: (closed.data.len(), !closed.error.is_empty()),
        teardown: teardown(pod),
    }
}

/// A privileged container under the CRI option that keeps the host's
/// devices out (`privileged_without_host_devices`): what it may do.
#[derive(Debug, PartialEq, Eq)]
pub struct PrivilegedWithoutHostDevices {
    /// The `Cap*`, `Seccomp:` and `NoNewPrivs:` lines of /proc/self/status.
    pub security: Vec<String>,
    /// `/proc` with `rw` or `ro`, and how many mounts mask paths below it.
    pub proc: Vec<String>,
    /// What the script below printed, errors included: a tmpfs mounted, a
    /// device node made in it and opened (containerd 1.6 keeps the device
    /// cgroup of an unprivileged container under this option), a sysctl of
    /// its network namespace written. (The node is made on the tmpfs: Hull's
    /// virtio-fs server may not make device nodes in the host's files.)
    pub may: Vec<String>,
    /// `ls /dev`, but `core`: runc links it to /proc/kcore where the
    /// kernel has one, which a guest kernel need not.
    pub dev: Vec<String>,
    /// `/sys` with `rw` or `ro`, and a file written under it (or the error).
    /// Under runc a pod's sysfs is its network namespace's, which the pause
    /// container mounted read-only first, so a privileged container's
    /// writable /sys is read-only in fact; in a Hull pod the network
    /// namespace is the guest's and /sys is writable as the spec asks.
    pub sysfs: Vec<String>,
    pub teardown: Teardown,
}

const PRIVILEGED_PROBE: &str = r#"
exec 2>&1
grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|Seccomp|NoNewPrivs):' /proc/self/status
echo ---
awk '$2 == "/proc" { print $2, substr($4, 1, 2) }' /proc/mounts
echo masked $(awk '$2 ~ "^/proc/" { n++ } END { print n + 0 }' /proc/mounts)
echo ---
mkdir -p /tmp/probe && mount -t tmpfs probe /tmp/probe && echo mounted-tmpfs
mknod /tmp/probe/kmsg c 1 11 && head -c 0 /tmp/probe/kmsg && echo opened-kmsg
echo 1 > /proc/sys/net/ipv4/conf/lo/forwarding && echo wrote-sysctl
echo ---
ls /dev
echo ---
awk '$2 == "/sys" { print $2, substr($4, 1, 2) }' /proc/mounts
echo 1 > /sys/class/net/lo/tx_queue_len && echo wrote-sysfs
"#;

pub fn privileged_without_host_devices(
    cri: &CriContainerd,
    handler: &str,
) -> PrivilegedWithoutHostDevices {
    let mut pod = Pod::run(cri, handler, PodSpec::new("privnodev").privileged())
        .unwrap_or_else(|e| panic!("a privileged pod under {handler}: {e}"));
    let id = pod.start_container(&ContainerSpec::new("admin", &["sleep", "100000"]).privileged());
    let (_, out, _) = pod.exec(&id, &["sh", "-c", PRIVILEGED_PROBE]);
    let mut parts = out.split("---\n");
    let mut lines = |what: &str| -> Vec<String> {
        parts
            .next()
            .unwrap_or_else(|| panic!("no {what} in the probe's output under {handler}: {out}"))
            .lines()
            .map(str::to_string)
            .collect()
    };
    PrivilegedWithoutHostDevices {
        security: lines("status"),
        proc: lines("/proc"),
        may: lines("actions"),
        dev: lines("/dev").into_iter().filter(|d| d != "core").collect(),
        sysfs: lines("/sys"),
        teardown: teardown(pod),
    }
}

/// A container that asks for a host device, as a device plugin's would:
/// how StartContainer ended (CRI's answer when a handler refuses), and the
/// pod's removal.
pub fn host_device(cri: &CriContainerd, handler: &str) -> (Result<(), CriError>, Teardown) {
    let mut pod = Pod::run(cri, handler, PodSpec::new("hostdev"))
        .unwrap_or_else(|e| panic!("a pod under {handler}: {e}"));
    let user = ContainerSpec::new("user", &["sleep", "100000"])
        .device("/dev/loop-control", "/dev/loop-control");
    let started = pod
        .create_container(&user)
        .and_then(|id| cri.client().start_container(&id));
    (started, teardown(pod))
}

/// What an exec'd process gets, next to its container's init: the seccomp
/// mode, no_new_privs and capability sets, and whether a syscall the
/// container's profile denies is denied to it. Under runc an exec gets its
/// container's profile.
#[derive(Debug, PartialEq, Eq)]
pub struct ExecSecurity {
    pub containers: Vec<ProcessSecurity>,
    pub teardown: Teardown,
}

/// One container of [`ExecSecurity`].
#[derive(Debug, PartialEq, Eq)]
pub struct ProcessSecurity {
    pub container: String,
    /// `Seccomp`, `NoNewPrivs` and the `Cap*` lines of /proc/<pid>/status.
    pub init: Vec<String>,
    pub exec: Vec<String>,
    /// How `chmod` ended in the exec'd process (`chmod status N`).
    pub chmod: String,
}

/// A seccomp profile that allows everything but changing a file's mode.
const DENY_CHMOD_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "architectures": ["SCMP_ARCH_X86_64"],
  "syscalls": [
    {"names": ["chmod", "fchmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO"}
  ]
}"#;

pub fn exec_security(cri: &CriContainerd, handler: &str) -> ExecSecurity {
    let profile = cri.containerd().dir().join("deny-chmod.json");
    write_file(&profile, DENY_CHMOD_PROFILE, 0o644);
    let mut pod = run_pod(cri, handler, PodSpec::new("execsec"));
    let sleep = ["sleep", "100000"];
    let specs = [
        ContainerSpec::new("default", &sleep).seccomp_runtime_default(),
        ContainerSpec::new("nochmod", &sleep)
            .seccomp_localhost(&profile)
            .no_new_privs(),
        ContainerSpec::new("nochmod-escalating", &sleep)
            .seccomp_localhost(&profile)
            .run_as_user(1000),
    ];
    let security = |status: String| -> Vec<String> {
        status
            .lines()
            .filter(|l| {
                [
                    "Seccomp:",
                    "NoNewPrivs:",
                    "CapInh:",
                    "CapPrm:",
                    "CapEff:",
                    "CapBnd:",
                    "CapAmb:",
                ]
                .iter()
                .any(|key| l.starts_with(key))
            })
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let mut containers = Vec::new();
    for spec in &specs {
        let id = pod.start_container(spec);
        let init = security(pod.exec_ok(&id, &["cat", "/proc/1/status"]));
        let exec = security(pod.exec_ok(&id, &["cat", "/proc/self/status"]));
        let chmod = pod.exec_ok(
            &id,
            &[
                "sh",
                "-c",
                "touch /tmp/f; chmod 600 /tmp/f 2>/dev/null; echo \"chmod status $?\"",
            ],
        );
        containers.push(ProcessSecurity {
            container: spec.name().to_string(),
            init,
            exec,
            chmod: chmod.trim().to_string(),
        });
    }
    ExecSecurity {
        containers,
        teardown: teardown(pod),
    }
}

fn run_pod<'a>(cri: &'a CriContainerd, handler: &str, spec: PodSpec) -> Pod<'a> {
    Pod::run(cri, handler, spec.clone())
        .unwrap_or_else(|e| panic!("pod {spec:?} under handler {handler}: {e}"))
}

fn create_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
}

fn write_file(path: &Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A tmpfs the test mounts on the host, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Self {
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("size=16m,mode=0777"),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", dir.display()));
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if nix::mount::umount(&self.0).is_err() {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// `GET path` over HTTP/1.0, retried until the server answers or
/// `timeout` passes; the body of a 200 answer.
fn http_get(address: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last_error;
    loop {
        match try_http_get(address, path) {
            Ok(body) => return Ok(body),
            Err(e) => last_error = e,
        }
        if Instant::now() >= deadline {
            return Err(format!("no answer within {timeout:?}: {last_error}"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn try_http_get(address: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    if !head.starts_with("HTTP/1.") || !head.lines().next().is_some_and(|l| l.contains(" 200 ")) {
        return Err(format!("answer: {head:?}"));
    }
    Ok(body.to_string())
}

/// An HTTP server on the host for one request from a pod: it answers
/// `body` and reports the request line and the peer's address.
struct OneShotHttpServer {
    address: SocketAddr,
    handle: thread::JoinHandle<Result<(String, Ipv4Addr), String>>,
}

impl OneShotHttpServer {
    fn start(ip: Ipv4Addr, body: &'static str) -> Self {
        let listener = TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("listening on {ip} (the pods' gateway): {e}"));
        let address = listener.local_addr().expect("local_addr");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let handle = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let (mut stream, peer) = loop {
                match listener.accept() {
                    Ok(accepted) => break accepted,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(format!("no connection to {address} within 30 s"));
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(format!("accept on {address}: {e}")),
                }
            };
            stream.set_nonblocking(false).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream
                    .read(&mut chunk)
                    .map_err(|e| format!("read request: {e}"))?;
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&chunk[..n]);
            }
            write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .map_err(|e| format!("answer: {e}"))?;
            let line = String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let SocketAddr::V4(peer) = peer else {
                return Err(format!("IPv6 peer {peer}"));
            };
            Ok((line, *peer.ip()))
        });
        Self { address, handle }
    }

    fn address(&self) -> SocketAddr {
        self.address
    }

    fn wait(self) -> (String, Ipv4Addr) {
        self.handle
            .join()
            .expect("HTTP server thread panicked")
            .unwrap_or_else(|e| panic!("host HTTP server: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_parse() {
        let line = LogLine::parse("2026-11-27T20:28:23.443049604Z stdout F hello world").unwrap();
        assert_eq!(
            (line.stream.as_str(), line.tag.as_str(), line.text.as_str()),
            ("stdout", "F", "hello world")
        );
        let line = LogLine::parse("2026-11-27T20:28:23.4+02:00 stderr P ").unwrap();
        assert_eq!(
            (line.stream.as_str(), line.tag.as_str(), line.text.as_str()),
            ("stderr", "P", "")
        );
    }

    #[test]
    fn malformed_log_lines_do_not_parse() {
        for line in [
            "hello",
            "2026-11-27 stdout F x",
            "2026-11-27T20:28:23.4Z stdin F x",
            "2026-11-27T20:28:23.4Z stdout X x",
            "2026-11-27T20:28:23.4 stdout F x",
        ] {
            assert!(LogLine::parse(line).is_none(), "{line}");
        }
    }
}
