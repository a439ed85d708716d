//! Pods under the runtime handler `hull`, through containerd's CRI plugin:
//! the scenarios of `hull_tests::cri::scenarios`, each run under `runc` and
//! `hull` on the same containerd in the same test, must observe the same
//! things. What differs is only what a VM changes: a pod's containers run
//! in its guest, so the host's cgroups are its VM's (the sandbox cgroup
//! holding the VMM, virtiofsd and the vsock backend), not its containers',
//! and a host-network pod is refused.

use std::sync::Arc;

use hull_tests::cri::scenarios::{self, Held, Teardown};
use hull_tests::cri::{
    ContainerSpec, CriContainerd, Pod, PodSpec, HULL_HANDLER, RUNC_HANDLER,
    RUNC_NO_HOST_DEVICES_HANDLER,
};
use hull_tests::{host_kernel_release, require_hull_shim};

fn cri() -> Arc<CriContainerd> {
    require_hull_shim();
    CriContainerd::shared_for_hull()
}

/// What a Hull pod holds on the host: its VM's processes in the sandbox's
/// cgroup, the network namespace with the veth, mounts and an IP.
const HULL_HELD: Held = Held::ALL;

/// Checks the removal of both pods, then takes the teardowns out of the
/// results so what is left can be compared whole.
fn without_teardown<T>(result: &mut T, teardown: fn(&mut T) -> &mut Teardown, held: Held) {
    let teardown = std::mem::replace(
        teardown(result),
        Teardown {
            held: Held::ALL,
            left: Default::default(),
        },
    );
    assert_eq!(teardown.held, held, "what the running pod held");
    assert_eq!(teardown.left, Default::default(), "left behind");
}

/// Runs `scenario` under runc and Hull and requires the same observations.
macro_rules! same_under_hull_as_runc {
    ($scenario:ident) => {{
        let cri = cri();
        let mut runc = scenarios::$scenario(&cri, RUNC_HANDLER);
        let mut hull = scenarios::$scenario(&cri, HULL_HANDLER);
        without_teardown(&mut runc, |r| &mut r.teardown, Held::ALL);
        without_teardown(&mut hull, |r| &mut r.teardown, HULL_HELD);
        assert_eq!(hull, runc, "Hull (left) and runc (right) differ");
        hull
    }};
}

#[test]
fn pod_network_names_and_shared_namespaces() {
    let net = same_under_hull_as_runc!(pod_networking);
    assert_eq!(net.host_to_pod, "hello-from-pod\n");
    assert_eq!(net.pod_to_host, "hello-from-host\n");
    assert!(net.shared_network_ipc_uts && net.separate_pid);
    assert_eq!(net.shm_shared, "shm-of-the-pod\n");
}

/// FUSE's `statfs` magic: a host directory reaches the guest through
/// virtio-fs, whatever file system it is on.
const VIRTIO_FS_MAGIC_HEX: &str = "65735546";

#[test]
fn volumes_bind_read_only_files_empty_dir_and_tmpfs() {
    let cri = cri();
    let mut runc = scenarios::volumes(&cri, RUNC_HANDLER);
    let mut hull = scenarios::volumes(&cri, HULL_HANDLER);
    without_teardown(&mut runc, |r| &mut r.teardown, Held::ALL);
    without_teardown(&mut hull, |r| &mut r.teardown, HULL_HELD);
    // The one VM-specific answer: the host tmpfs is seen through virtio-fs.
    assert_eq!(hull.tmpfs_type, VIRTIO_FS_MAGIC_HEX);
    hull.tmpfs_type = runc.tmpfs_type.clone();
    assert_eq!(hull, runc, "Hull (left) and runc (right) differ");
    assert_eq!(hull.rw_written_on_host, "from-container\n");
    assert_eq!(
        hull.ro_write_error,
        "sh: can't create /data/ro/new: Read-only file system\n"
    );
}

/// An emptyDir with `medium: Memory` is memory of the pod's VM: a tmpfs in
/// the guest that the pod's containers share, not the host's tmpfs.
#[test]
fn a_memory_empty_dir_lives_in_the_guest() {
    let cri = cri();
    let mut m = scenarios::memory_volume(&cri, HULL_HANDLER);
    without_teardown(&mut m, |r| &mut r.teardown, HULL_HELD);
    assert_eq!(m.fs_type, scenarios::TMPFS_MAGIC_HEX);
    assert_eq!(m.shared, "in-pod-memory\n");
    assert!(!m.on_host, "the volume's data stays in the guest");
}

#[test]
fn exec_sync_and_streaming_exec_with_terminal() {
    let exec = same_under_hull_as_runc!(exec);
    assert_eq!(exec.sync.code, 3);
    assert_eq!(exec.terminal_size, "40 100");
}

#[test]
fn container_logs_in_cri_format() {
    let logs = same_under_hull_as_runc!(logs);
    assert!(logs.every_line_well_formed);
}

#[test]
fn stats_and_memory_limit_update() {
    let r = same_under_hull_as_runc!(resources);
    assert!(r.cpu_usage_reported && r.memory_working_set_reported);
    assert_eq!(r.memory_limit_after_update, 48 << 20);
}

#[test]
fn out_of_memory_is_oom_killed_137() {
    let oom = same_under_hull_as_runc!(out_of_memory);
    assert_eq!((oom.exit_code, oom.reason.as_str()), (137, "OOMKilled"));
}

#[test]
fn share_process_namespace_puts_the_pod_in_one_pid_namespace() {
    let p = same_under_hull_as_runc!(shared_pid);
    assert_eq!(p.pid1, "pause");
    assert!(p.sees_other_container);
}

/// A read-only volume is read-only at its top only, as runc's `ro` bind:
/// a tmpfs mounted inside it on the host stays writable.
#[test]
fn a_read_only_volume_leaves_mounts_inside_it_writable() {
    let volume = same_under_hull_as_runc!(read_only_volume_with_a_mount_inside);
    assert!(volume.top.contains("Read-only file system"), "{volume:?}");
    assert_eq!(volume.below, "written");
    assert_eq!(volume.host_sees_below, "data\n");
}

/// Mount propagation between a pod's containers and from the node as under
/// runc: what the `Bidirectional` container mounts in the volume reaches
/// the `HostToContainer` one, not the `None` one, and what the node mounts
/// there later reaches the first two. A container's mount never reaches the
/// node: the VM is the boundary.
#[test]
fn mounts_propagate_between_a_pods_containers() {
    let cri = cri();
    let mut runc = scenarios::mount_propagation(&cri, RUNC_HANDLER);
    let mut hull = scenarios::mount_propagation(&cri, HULL_HANDLER);
    without_teardown(&mut runc, |r| &mut r.teardown, Held::ALL);
    without_teardown(&mut hull, |r| &mut r.teardown, HULL_HELD);
    assert_eq!(runc.host_sees, "bidirectional node");
    assert_eq!(hull.host_sees, "node");
    hull.host_sees = runc.host_sees.clone();
    assert_eq!(hull, runc, "Hull (left) and runc (right) differ");
}

/// `kubectl port-forward`: containerd dials localhost in the pod's network
/// namespace on the host; Hull carries it to the same port in the guest.
#[test]
fn port_forward_reaches_the_pods_ports() {
    let forward = same_under_hull_as_runc!(port_forward);
    assert_eq!(
        forward.web,
        ("HTTP/1.1 200 OK".to_string(), "forwarded\n".to_string())
    );
    assert_eq!(forward.loopback_only, "loopback-only\n");
    assert!(forward.large.1);
    assert_eq!(forward.closed_port, (0, true));
}

/// Under `privileged_without_host_devices` (which `hull install` sets), a
/// privileged container is privileged inside its VM: all capabilities, no
/// seccomp, writable /proc and /sys, any device of the guest; as runc's
/// under the same option.
#[test]
fn a_privileged_container_is_privileged_inside_the_vm() {
    let cri = cri();
    let mut runc = scenarios::privileged_without_host_devices(&cri, RUNC_NO_HOST_DEVICES_HANDLER);
    let mut hull = scenarios::privileged_without_host_devices(&cri, HULL_HANDLER);
    without_teardown(&mut runc, |r| &mut r.teardown, Held::ALL);
    without_teardown(&mut hull, |r| &mut r.teardown, HULL_HELD);
    // /sys is writable as the spec asks; under runc the pause container's
    // read-only sysfs is what a pod's containers get (see the scenario).
    assert_eq!(hull.sysfs, ["/sys rw", "wrote-sysfs"]);
    hull.sysfs = runc.sysfs.clone();
    // The guest enforces no device cgroup (docs/kubernetes.md): the node
    // made opens, where runc's device rules refuse it.
    assert_eq!(hull.may[1], "opened-kmsg");
    hull.may[1] = runc.may[1].clone();
    assert_eq!(hull, runc, "Hull (left) and runc (right) differ");
    assert!(
        hull.security.contains(&"Seccomp:\t0".to_string()),
        "{hull:?}"
    );
    assert_eq!(hull.may[0], "mounted-tmpfs");
}

/// A host device (a device plugin's) cannot reach a VM: refused, naming
/// it, and the pod leaves nothing behind.
#[test]
fn a_host_device_is_refused_by_name() {
    let cri = cri();
    let (started, teardown) = scenarios::host_device(&cri, HULL_HANDLER);
    let message = started
        .expect_err("Hull ran a container with a host device")
        .to_string();
    assert!(message.contains("host devices"), "{message}");
    assert!(message.contains("/dev/loop-control"), "{message}");
    assert_eq!(teardown.left, Default::default(), "left behind");
}

/// The VM is sized from the pod's resources plus the configured overhead
/// (128 MiB, no extra vCPU), or from the defaults (1 vCPU, 256 MiB).
#[test]
fn the_vm_has_the_pods_size() {
    let cri = cri();
    let mem_total_mib = |pod: &Pod, container: &str| -> u64 {
        let meminfo = pod.exec_ok(container, &["cat", "/proc/meminfo"]);
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no MemTotal in {meminfo}"));
        kib / 1024
    };
    let mut sized = Pod::run(
        &cri,
        HULL_HANDLER,
        PodSpec::new("sized").resources(2, 512 << 20),
    )
    .expect("pod");
    let c = sized.start_container(&ContainerSpec::new("c", &["sleep", "100000"]));
    let cpus = sized.exec_ok(&c, &["nproc"]);
    let memory = mem_total_mib(&sized, &c);
    assert_eq!(cpus.trim(), "2");
    assert!(
        (560..=640).contains(&memory),
        "MemTotal {memory} MiB, VM 640 MiB"
    );
    drop(sized);

    let mut plain = Pod::run(&cri, HULL_HANDLER, PodSpec::new("plain")).expect("pod");
    let c = plain.start_container(&ContainerSpec::new("c", &["sleep", "100000"]));
    assert_eq!(plain.exec_ok(&c, &["nproc"]).trim(), "1");
    let memory = mem_total_mib(&plain, &c);
    assert!(
        (200..=256).contains(&memory),
        "MemTotal {memory} MiB, VM 256 MiB"
    );
}

/// Two containers of one pod share one VM: one VMM process, one guest
/// kernel (the same boot id in both, not the host's).
#[test]
fn a_pods_containers_share_one_guest_kernel() {
    let cri = cri();
    let mut pod = Pod::run(&cri, HULL_HANDLER, PodSpec::new("onevm")).expect("pod");
    let a = pod.start_container(&ContainerSpec::new("a", &["sleep", "100000"]));
    let b = pod.start_container(&ContainerSpec::new("b", &["sleep", "100000"]));
    let boot_id =
        |container: &str| pod.exec_ok(container, &["cat", "/proc/sys/kernel/random/boot_id"]);
    let host_boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(boot_id(&a), boot_id(&b), "one guest kernel for the pod");
    assert_ne!(boot_id(&a), host_boot_id, "the pod runs in a VM");
    let release = pod.exec_ok(&a, &["uname", "-r"]);
    assert_ne!(release.trim(), host_kernel_release());
    let sandbox = hull_tests::cgroup_dirs(&format!(
        "{}/{}",
        cri.containerd().hull_cgroup_parent(),
        pod.id()
    ));
    let vmms: Vec<_> = hull_tests::processes_in(&sandbox)
        .into_iter()
        .filter(|(_, cmdline)| {
            cmdline.contains("qemu-system") || cmdline.contains("hull-vmm --config")
        })
        .collect();
    assert_eq!(vmms.len(), 1, "one VMM for the pod: {vmms:?}");
    let (before, left) = pod.teardown();
    assert!(!before.processes.is_empty());
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A pod asking for the host's network is refused with a reason, and
/// nothing of it stays.
#[test]
fn a_host_network_pod_is_refused_with_a_reason() {
    require_hull_shim();
    // A containerd of its own, so no other test's VM is counted.
    let cri = CriContainerd::start();
    let err = scenarios::host_network(&cri, HULL_HANDLER)
        .map(|_| ())
        .expect_err("Hull ran a host-network pod");
    let message = err.to_string();
    assert!(message.contains("hostNetwork"), "{message}");
    assert!(
        message.contains("runc"),
        "the error suggests what to use: {message}"
    );
    let mut left = hull_tests::processes_mentioning(
        cri.containerd().dir(),
        &[
            "qemu-system-x86_64",
            "hull-vmm",
            "virtiofsd",
            "containerd-shim-hull-v2",
        ],
    );
    left.extend(cri.containerd().sandbox_processes());
    assert!(left.is_empty(), "left behind: {left:?}");
    let cgroups = cri.containerd().sandbox_cgroups();
    assert!(cgroups.is_empty(), "left behind: {cgroups:?}");
}

/// An exec'd process has its container's seccomp profile, no_new_privs and
/// capabilities, as under runc: with the default profile, and with a
/// profile denying chmod, with and without no_new_privs.
#[test]
fn exec_gets_the_containers_seccomp_profile_and_capabilities() {
    let security = same_under_hull_as_runc!(exec_security);
    for container in &security.containers {
        assert!(
            container.exec.contains(&"Seccomp: 2".to_string()),
            "{container:?}"
        );
        assert_eq!(container.init, container.exec, "{container:?}");
    }
    let chmod: Vec<&str> = security
        .containers
        .iter()
        .map(|c| c.chmod.as_str())
        .collect();
    assert_eq!(
        chmod,
        ["chmod status 0", "chmod status 1", "chmod status 1"]
    );
}

/// Every host process of a running pod (the VMM, the vsock backend,
/// virtiofsd and its sandboxed child) is confined: not root on the host,
/// no capabilities in the host's user namespace, no_new_privs, a mount
/// namespace of its own, seccomp wherever it maps guest memory, and all of
/// them in the pod's sandbox cgroup, whose limits are the pod's VM plus
/// Hull's overheads.
#[test]
fn every_host_process_of_a_pod_is_confined_within_the_pods_limits() {
    let cri = cri();
    let mut pod = Pod::run(
        &cri,
        HULL_HANDLER,
        PodSpec::new("confined").resources(1, 256 << 20),
    )
    .expect("pod");
    pod.start_container(&ContainerSpec::new("c", &["sleep", "100000"]));
    let sandbox_cgroup = format!("{}/{}", cri.containerd().hull_cgroup_parent(), pod.id());
    let dirs = hull_tests::cgroup_dirs(&sandbox_cgroup);
    let processes = hull_tests::processes_in(&dirs);
    let own = |pid: &str, ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
    let mut mapping_guest_memory = 0;
    for (pid, cmdline) in &processes {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |key: &str| -> String {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} for {cmdline}"))
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        };
        let pid = pid.to_string();
        let what = format!("{cmdline} (pid {pid})");
        assert_ne!(field("Uid:"), "0", "{what} runs as root");
        let own_user_namespace = own(&pid, "user") != own("self", "user");
        assert!(
            field("CapEff:") == "0000000000000000" || own_user_namespace,
            "{what} has capabilities on the host: {}",
            field("CapEff:")
        );
        assert_eq!(field("NoNewPrivs:"), "1", "{what}");
        assert_ne!(
            own(&pid, "mnt"),
            own("self", "mnt"),
            "{what} shares the host's mounts"
        );
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        if maps.contains("/memfd:") {
            mapping_guest_memory += 1;
            assert_eq!(field("Seccomp:"), "2", "{what} maps guest memory");
        }
    }
    // QEMU, the vsock backend and virtiofsd's serving child.
    assert!(mapping_guest_memory >= 3, "{processes:#?}");
    // The VM: 1 vCPU and 256 + 128 MiB; the host adds 128 MiB and a quarter CPU.
    let read = |file: &str| -> Option<String> {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .map(|v| v.trim().to_string())
    };
    let memory = read("memory.limit_in_bytes").or_else(|| read("memory.max"));
    assert_eq!(memory, Some((512u64 << 20).to_string()));
    let cpu =
        read("cpu.cfs_quota_us").or_else(|| read("cpu.max").map(|m| m.replace(" 100000", "")));
    assert_eq!(cpu.as_deref(), Some("125000"));
    let (_, left) = pod.teardown();
    assert!(left.is_empty(), "left behind: {left:?}");
}
