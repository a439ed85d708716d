//! The CRI harness proven against runc: the pod scenarios of
//! `hull_tests::cri::scenarios` under the runtime handler `runc`, with the
//! answers a Kubernetes node gives written out. Hull runs the same
//! scenarios under the handler `hull`; if one of these fails, the harness
//! (or the host) is wrong, not Hull.
//!
//! The tests share one private containerd with the CRI plugin while any of
//! them runs (see `CriContainerd::shared_for_runc`).

use std::sync::Arc;

use hull_tests::cgroup_dirs;
use hull_tests::cri::scenarios::{
    self, ExecResult, Held, HostNetwork, OutOfMemory, Teardown, DNS_OPTIONS, DNS_SEARCHES,
    LOG_LINE_LIMIT, MIB, POD_HOSTNAME,
};
use hull_tests::cri::{
    ContainerSpec, CriContainerd, Pod, PodFootprint, PodNetwork, PodSpec, RUNC_HANDLER,
    RUNC_NO_HOST_DEVICES_HANDLER,
};

fn cri() -> Arc<CriContainerd> {
    CriContainerd::shared_for_runc()
}

/// Removal left nothing, and the pod had what the check looks for.
fn clean(teardown: &Teardown, held: Held) {
    assert_eq!(teardown.held, held, "what the running pod held");
    assert_eq!(teardown.left, PodFootprint::default(), "left behind");
}

#[test]
fn pod_network_names_and_shared_namespaces() {
    let cri = cri();
    let net = scenarios::pod_networking(&cri, RUNC_HANDLER);
    assert!(net.ip_in_pod_subnet);
    assert_eq!(net.host_to_pod, "hello-from-pod\n");
    assert_eq!(net.container_to_container, "hello-from-pod\n");
    assert_eq!(net.pod_to_host, "hello-from-host\n");
    assert_eq!(net.host_got_request, "GET /from-pod HTTP/1.1");
    assert!(net.host_saw_pod_ip);
    assert_eq!(
        net.hostnames,
        [format!("{POD_HOSTNAME}\n"), format!("{POD_HOSTNAME}\n")]
    );
    assert_eq!(net.etc_hostname, format!("{POD_HOSTNAME}\n"));
    assert_eq!(net.shm_shared, "shm-of-the-pod\n");
    assert_eq!(
        net.resolv_conf,
        format!(
            "search {}\nnameserver {}\noptions {}\n",
            DNS_SEARCHES.join(" "),
            scenarios::dns_server(&cri),
            DNS_OPTIONS.join(" ")
        )
    );
    assert!(net.etc_hosts_is_hosts_copy);
    assert!(net.shared_network_ipc_uts);
    assert!(net.separate_pid);
    assert!(net.network_isolated_from_host);
    clean(&net.teardown, Held::ALL);
}

#[test]
fn volumes_bind_read_only_files_empty_dir_and_tmpfs() {
    let cri = cri();
    let v = scenarios::volumes(&cri, RUNC_HANDLER);
    assert_eq!(v.rw_reads_host_file, "rw-host-data\n");
    assert_eq!(v.rw_written_on_host, "from-container\n");
    assert_eq!(v.rw_written_mode, 0o644);
    assert_eq!(v.ro_reads_host_file, "ro-host-data\n");
    assert_eq!(v.ro_write_code, 1);
    assert_eq!(
        v.ro_write_error,
        "sh: can't create /data/ro/new: Read-only file system\n"
    );
    assert_eq!(v.secret_file, ("400".to_string(), "s3cret\n".to_string()));
    assert_eq!(
        v.config_file,
        ("644".to_string(), "key=value\n".to_string())
    );
    assert_eq!(v.empty_dir_mode, "777");
    assert_eq!(v.empty_dir_shared, "shared-by-writer\n");
    assert_eq!(v.tmpfs_type, scenarios::TMPFS_MAGIC_HEX);
    assert_eq!(v.tmpfs_written_on_host, "in-memory\n");
    clean(&v.teardown, Held::ALL);
}

#[test]
fn a_memory_empty_dir_is_the_hosts_tmpfs() {
    let cri = cri();
    let m = scenarios::memory_volume(&cri, RUNC_HANDLER);
    assert_eq!(m.fs_type, scenarios::TMPFS_MAGIC_HEX);
    assert_eq!(m.shared, "in-pod-memory\n");
    assert!(m.on_host);
    clean(&m.teardown, Held::ALL);
}

#[test]
fn share_process_namespace_puts_the_pod_in_one_pid_namespace() {
    let cri = cri();
    let p = scenarios::shared_pid(&cri, RUNC_HANDLER);
    assert_eq!(p.pid1, "pause");
    assert!(p.sees_other_container);
    clean(&p.teardown, Held::ALL);
}

#[test]
fn an_exec_gets_the_containers_seccomp_profile() {
    let cri = cri();
    let security = scenarios::exec_security(&cri, RUNC_HANDLER);
    for container in &security.containers {
        assert!(
            container.exec.contains(&"Seccomp: 2".to_string()),
            "{container:?}"
        );
        assert_eq!(container.init, container.exec, "{container:?}");
    }
    let nnp: Vec<bool> = security
        .containers
        .iter()
        .map(|c| c.exec.contains(&"NoNewPrivs: 1".to_string()))
        .collect();
    assert_eq!(nnp, [false, true, false]);
    let chmod: Vec<&str> = security
        .containers
        .iter()
        .map(|c| c.chmod.as_str())
        .collect();
    assert_eq!(
        chmod,
        ["chmod status 0", "chmod status 1", "chmod status 1"]
    );
    clean(&security.teardown, Held::ALL);
}

#[test]
fn a_privileged_container_sees_the_host_devices() {
    let cri = cri();
    let p = scenarios::privileged(&cri, RUNC_HANDLER)
        .unwrap_or_else(|e| panic!("runc refused a privileged container: {e}"));
    assert!(p.sees_host_devices);
    clean(&p.teardown, Held::ALL);
}

#[test]
fn a_read_only_volume_leaves_mounts_inside_it_writable() {
    let cri = cri();
    let volume = scenarios::read_only_volume_with_a_mount_inside(&cri, RUNC_HANDLER);
    assert_eq!(
        volume.top,
        "sh: can't create /data/new: Read-only file system"
    );
    assert_eq!(volume.below, "written");
    assert_eq!(volume.host_sees_below, "data\n");
    clean(&volume.teardown, Held::ALL);
}

#[test]
fn mounts_propagate_between_a_pods_containers() {
    let cri = cri();
    let p = scenarios::mount_propagation(&cri, RUNC_HANDLER);
    let seen: Vec<(&str, &str)> = p
        .seen
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("bidirectional", "bidirectional node"),
            ("host-to-container", "bidirectional host-to-container node"),
            ("private", "private"),
        ]
    );
    assert_eq!(p.host_sees, "bidirectional node");
    clean(&p.teardown, Held::ALL);
}

#[test]
fn port_forward_reaches_the_pods_ports() {
    let cri = cri();
    let forward = scenarios::port_forward(&cri, RUNC_HANDLER);
    assert_eq!(
        forward.web,
        ("HTTP/1.1 200 OK".to_string(), "forwarded\n".to_string())
    );
    assert_eq!(forward.loopback_only, "loopback-only\n");
    assert_eq!(forward.large, (228_894, true));
    assert_eq!(forward.closed_port, (0, true));
    clean(&forward.teardown, Held::ALL);
}

/// What Hull's privileged containers are compared with: runc under the CRI
/// option that leaves the host's devices out.
#[test]
fn a_privileged_container_without_host_devices() {
    let cri = cri();
    let p = scenarios::privileged_without_host_devices(&cri, RUNC_NO_HOST_DEVICES_HANDLER);
    assert!(p.security.contains(&"Seccomp:\t0".to_string()), "{p:?}");
    assert_eq!(p.proc, ["/proc rw", "masked 0"]);
    assert_eq!(
        p.may,
        [
            "mounted-tmpfs",
            "head: /tmp/probe/kmsg: Operation not permitted",
            "wrote-sysctl"
        ]
    );
    assert!(!p.dev.iter().any(|d| d.starts_with("loop")), "{p:?}");
    // The pause container's read-only sysfs is the pod's (see the scenario),
    // though the spec asks for a writable one.
    assert_eq!(p.sysfs[0], "/sys ro");
    assert!(p.sysfs[1].contains("Read-only file system"), "{p:?}");
    clean(&p.teardown, Held::ALL);
    // The same container asking for a device gets it.
    let (started, teardown) = scenarios::host_device(&cri, RUNC_HANDLER);
    started.unwrap_or_else(|e| panic!("runc refused a host device: {e}"));
    clean(&teardown, Held::ALL);
}

#[test]
fn exec_sync_and_streaming_exec_with_terminal() {
    let cri = cri();
    let exec = scenarios::exec(&cri, RUNC_HANDLER);
    assert_eq!(
        exec.sync,
        ExecResult {
            code: 3,
            stdout: "out\n".into(),
            stderr: "err\n".into()
        }
    );
    assert_eq!(
        exec.streams,
        ExecResult {
            code: 7,
            stdout: "got-hello\n".into(),
            stderr: "err-hello\n".into()
        }
    );
    assert_eq!(exec.terminal_size, "40 100");
    assert!(exec.terminal_is_tty);
    assert_eq!(exec.terminal_exit_code, 5);
    clean(&exec.teardown, Held::ALL);
}

#[test]
fn container_logs_in_cri_format() {
    let cri = cri();
    let logs = scenarios::logs(&cri, RUNC_HANDLER);
    assert_eq!((logs.exit_code, logs.reason.as_str()), (0, "Completed"));
    assert!(logs.log_path_in_log_directory);
    assert!(logs.every_line_well_formed);
    assert_eq!(
        logs.stdout,
        vec![
            "F to-stdout".to_string(),
            format!("P <{LOG_LINE_LIMIT} bytes>"),
            format!("F <{} bytes>", 20_000 - LOG_LINE_LIMIT),
            "F last".to_string(),
        ]
    );
    assert_eq!(logs.stderr, vec!["F to-stderr".to_string()]);
    clean(&logs.teardown, Held::ALL);
}

#[test]
fn stats_and_memory_limit_update() {
    let cri = cri();
    let r = scenarios::resources(&cri, RUNC_HANDLER);
    assert!(r.cpu_usage_reported);
    assert!(r.memory_working_set_reported);
    assert!(r.listed_in_pod_stats);
    assert_eq!(r.memory_limit, 64 * MIB as u64);
    assert_eq!(r.memory_limit_after_update, 48 * MIB as u64);
    clean(&r.teardown, Held::ALL);
}

#[test]
fn out_of_memory_is_oom_killed_137() {
    let cri = cri();
    let oom = scenarios::out_of_memory(&cri, RUNC_HANDLER);
    assert_eq!(
        (oom.exit_code, oom.reason.as_str()),
        (137, "OOMKilled"),
        "{oom:?}"
    );
    let OutOfMemory { teardown, .. } = oom;
    clean(&teardown, Held::ALL);
}

/// runc runs host-network pods; Hull's version of this test asserts that
/// it refuses them.
#[test]
fn host_network_pod_runs_under_runc() {
    let cri = cri();
    let HostNetwork {
        shares_host_netns,
        sees_host_bridge,
        teardown,
    } = scenarios::host_network(&cri, RUNC_HANDLER)
        .unwrap_or_else(|e| panic!("runc refused a host-network pod: {e}"));
    assert!(shares_host_netns);
    assert!(sees_host_bridge);
    // No network namespace, veth or IP of its own.
    clean(
        &teardown,
        Held {
            netns: false,
            veth: false,
            ip_allocation: false,
            ..Held::ALL
        },
    );
}

/// A pod's processes, the containerd directory, the bridge and the pods'
/// cgroups are gone.
fn assert_all_gone(dir: &std::path::Path, network: &PodNetwork, footprint: &PodFootprint) {
    for (pid, cmdline) in &footprint.processes {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} ({cmdline}) survived"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
    let bridge = std::path::Path::new("/sys/class/net").join(&network.bridge);
    assert!(
        !bridge.exists(),
        "bridge {} was not removed",
        network.bridge
    );
    for veth in &footprint.interfaces {
        assert!(
            !std::path::Path::new("/sys/class/net").join(veth).exists(),
            "veth {veth} was not removed"
        );
    }
    let cgroups = cgroup_dirs(&format!("/{}", network.cgroup_root));
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    let mounts = hull_tests::mounts_under(dir);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}

/// The harness itself: dropping a CriContainerd with a running pod removes
/// the pod through CRI, then containerd, its network and cgroups.
#[test]
fn drop_cleans_up_running_pods() {
    let cri = CriContainerd::start_for_runc();
    let mut pod = Pod::run(&cri, RUNC_HANDLER, PodSpec::new("left")).expect("pod");
    pod.start_container(&ContainerSpec::new("sleeper", &["sleep", "100000"]));
    let footprint = pod.footprint();
    // The shim, pause and sleep.
    assert_eq!(footprint.processes.len(), 3, "{footprint:?}");
    assert_eq!(footprint.interfaces.len(), 1, "{footprint:?}");
    // As if the test had panicked before its teardown.
    std::mem::forget(pod);
    let dir = cri.containerd().dir().to_path_buf();
    let network = cri.network().clone();
    drop(cri);
    assert_all_gone(&dir, &network, &footprint);
}

/// `private-containerd.sh stop` on its own (no CRI clean-up first) still
/// removes running pods, their network namespaces, veths and cgroups.
#[test]
fn script_stop_removes_pods_without_cri() {
    let cri = CriContainerd::start_for_runc();
    let mut pod = Pod::run(&cri, RUNC_HANDLER, PodSpec::new("forced")).expect("pod");
    pod.start_container(&ContainerSpec::new("sleeper", &["sleep", "100000"]));
    let footprint = pod.footprint();
    std::mem::forget(pod);
    cri.containerd().stop();
    let network = cri.network().clone();
    for (pid, cmdline) in &footprint.processes {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} ({cmdline}) survived the script's stop"
        );
    }
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&network.bridge)
            .exists(),
        "the script's stop left bridge {}",
        network.bridge
    );
    let mounts = hull_tests::mounts_under(cri.containerd().dir());
    assert!(
        mounts.is_empty(),
        "the script's stop left mounts: {mounts:?}"
    );
    let dir = cri.containerd().dir().to_path_buf();
    drop(cri);
    assert_all_gone(&dir, &network, &footprint);
}
