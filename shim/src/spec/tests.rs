//! Tests of the guest spec rewrite.

use super::*;

const SHARE: &str = "/run/hull/shared";

fn with_mounts(annotations: serde_json::Value, mounts: serde_json::Value) -> Spec {
    let mut spec = container_spec(Path::new("rootfs"), &ProcessOptions::default());
    let added = serde_json::from_value::<Vec<Mount>>(mounts).unwrap();
    let mut all = spec.mounts().clone().unwrap();
    all.retain(|m| added.iter().all(|a| a.destination() != m.destination()));
    all.extend(added);
    spec.set_mounts(Some(all));
    spec.set_annotations(Some(serde_json::from_value(annotations).unwrap()));
    spec
}

/// guest_spec outside a pod context, with no memory volumes.
fn plain_guest_spec(spec: Spec, id: &str) -> Result<GuestSpec, SpecError> {
    guest_spec(
        spec,
        id,
        Path::new(SHARE),
        &PodContext::default(),
        &FakeHost::default(),
    )
}

/// A host with the memory volumes and mounts a test gives it.
#[derive(Default)]
struct FakeHost {
    memory_volume: Option<PathBuf>,
    /// (source, submounts of it)
    submounts: Vec<(PathBuf, Vec<Submount>)>,
}

impl HostMounts for FakeHost {
    fn is_memory_volume(&self, source: &Path) -> bool {
        self.memory_volume.as_deref() == Some(source)
    }

    fn submounts(&self, source: &Path) -> Vec<Submount> {
        self.submounts
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, subs)| subs.clone())
            .unwrap_or_default()
    }
}

fn without_namespace(spec: &mut Spec, kind: LinuxNamespaceType) {
    let mut linux = spec.linux().clone().unwrap();
    let mut namespaces = linux.namespaces().clone().unwrap();
    namespaces.retain(|ns| ns.typ() != kind);
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

fn mount<'a>(spec: &'a Spec, destination: &str) -> &'a Mount {
    spec.mounts()
        .iter()
        .flatten()
        .find(|m| m.destination() == Path::new(destination))
        .unwrap_or_else(|| panic!("no mount at {destination}"))
}

#[test]
fn guest_spec_moves_the_rootfs_and_drops_hooks_and_host_labels() {
    let mut spec = container_spec(Path::new("rootfs"), &ProcessOptions::default());
    spec.set_hooks(Some(Default::default()));
    let mut process = spec.process().clone().unwrap();
    process.set_apparmor_profile(Some("cri-containerd.apparmor.d".into()));
    spec.set_process(Some(process));
    // As containerd writes specs on a cgroup v1 host.
    without_namespace(&mut spec, LinuxNamespaceType::Cgroup);
    let guest = plain_guest_spec(spec, "c1").unwrap();
    assert_eq!(
        guest.spec.root().as_ref().unwrap().path(),
        Path::new("/run/hull/shared/c1/rootfs")
    );
    assert!(guest.spec.hooks().is_none());
    assert!(
        guest.shares.is_empty(),
        "runc's default mounts need no share"
    );
}

#[test]
fn host_binds_come_from_the_share_with_their_modes() {
    let spec = with_mounts(
        serde_json::json!({}),
        serde_json::json!([
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "rw"]},
            {"destination": "/etc/config", "type": "bind", "source": "/srv/cfg", "options": ["bind", "ro"]},
        ]),
    );
    let guest = plain_guest_spec(spec, "c1").unwrap();
    assert_eq!(
        guest.shares,
        vec![
            HostShare {
                source: "/srv/data".into(),
                share_path: "c1/mounts/0".into(),
                read_only: false,
                recursive: true,
                recursive_read_only: false,
                pod_volume: None,
            },
            HostShare {
                source: "/srv/cfg".into(),
                share_path: "c1/mounts/1".into(),
                read_only: true,
                recursive: false,
                recursive_read_only: false,
                pod_volume: None,
            },
        ]
    );
    let data = mount(&guest.spec, "/data");
    assert_eq!(
        data.source().as_deref(),
        Some(Path::new("/run/hull/shared/c1/mounts/0"))
    );
    let config = mount(&guest.spec, "/etc/config");
    assert!(config.options().as_ref().unwrap().contains(&"ro".into()));
}

#[test]
fn a_bundle_spec_error_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut spec = serde_json::to_value(container_spec(
        Path::new("rootfs"),
        &ProcessOptions::default(),
    ))
    .unwrap();
    spec["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]);
    std::fs::write(&path, spec.to_string()).unwrap();
    let err = read_bundle_spec(&path).unwrap_err();
    assert!(
        err.contains("RLIMIT_BOGUS") && err.contains("config.json"),
        "{err}"
    );
    let err = read_bundle_spec(&dir.path().join("none.json")).unwrap_err();
    assert!(err.contains("none.json"), "{err}");
}

#[test]
fn dotdot_in_a_destination_stays_inside_the_root() {
    let spec = with_mounts(
        serde_json::json!({}),
        serde_json::json!([
            {"destination": "/mnt/../data", "type": "bind", "source": "/srv/data", "options": ["rbind"]},
            {"destination": "/../../x/./y", "type": "tmpfs", "source": "tmpfs"},
        ]),
    );
    let guest = plain_guest_spec(spec, "c1").unwrap();
    mount(&guest.spec, "/data");
    mount(&guest.spec, "/x/y");
    assert_eq!(
        lexically_inside_root(Path::new("rel/../x")),
        Path::new("rel/../x")
    );
}

#[test]
fn relative_bind_sources_are_refused_by_name() {
    let spec = with_mounts(
        serde_json::json!({}),
        serde_json::json!([{"destination": "/data", "type": "bind", "source": "srv", "options": ["rbind"]}]),
    );
    let err = plain_guest_spec(spec, "c1").unwrap_err().to_string();
    assert!(err.contains("/data") && err.contains("srv"), "{err}");
}

fn pod_namespaces(spec: &mut Spec, network: &str) {
    let mut linux = spec.linux().clone().unwrap();
    let namespaces = serde_json::json!([
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
        {"type": "network", "path": network},
    ]);
    linux.set_namespaces(Some(serde_json::from_value(namespaces).unwrap()));
    spec.set_linux(Some(linux));
}

fn network_path(spec: &Spec) -> Option<Option<PathBuf>> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)
        .map(|ns| ns.path().clone())
}

#[test]
fn the_pause_container_uses_the_guest_network_and_a_shm_tmpfs() {
    let shm = serde_json::json!([{"destination": "/dev/shm", "type": "bind",
        "source": "/run/containerd/sandboxes/p1/shm", "options": ["rbind", "ro"]}]);
    let mut spec = with_mounts(
        serde_json::json!({crate::pod::CONTAINER_TYPE_ANNOTATION: "sandbox"}),
        shm,
    );
    pod_namespaces(&mut spec, "/var/run/netns/cni-1");
    assert_eq!(
        shm_source(&spec),
        Some(PathBuf::from("/run/containerd/sandboxes/p1/shm"))
    );
    let guest = plain_guest_spec(spec, "p1").unwrap();
    assert_eq!(
        network_path(&guest.spec),
        None,
        "no network namespace entry"
    );
    let shm = mount(&guest.spec, "/dev/shm");
    assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
    assert!(shm.options().as_ref().unwrap().contains(&"ro".into()));
    assert!(guest.shares.is_empty());
}

#[test]
fn pod_containers_join_the_pause_container_in_the_guest() {
    let shm = serde_json::json!([{"destination": "/dev/shm", "type": "bind",
        "source": "/run/containerd/sandboxes/p1/shm", "options": ["rbind", "rw"]}]);
    let mut spec = with_mounts(
        serde_json::json!({crate::pod::CONTAINER_TYPE_ANNOTATION: "container"}),
        shm,
    );
    pod_namespaces(&mut spec, "/proc/42/ns/net");
    let pod = PodContext {
        sandbox_pid: Some(42),
        sandbox_shm: Some("/run/containerd/sandboxes/p1/shm".into()),
    };
    let guest = guest_spec(
        spec.clone(),
        "c1",
        Path::new(SHARE),
        &pod,
        &FakeHost::default(),
    )
    .unwrap();
    assert_eq!(
        network_path(&guest.spec),
        Some(Some(PathBuf::from("/proc/42/ns/net")))
    );
    assert_eq!(
        mount(&guest.spec, "/dev/shm").source().as_deref(),
        Some(Path::new("/proc/42/root/dev/shm"))
    );

    // A host netns path is replaced by the pause container's.
    pod_namespaces(&mut spec, "/var/run/netns/cni-1");
    let guest = guest_spec(spec, "c1", Path::new(SHARE), &pod, &FakeHost::default()).unwrap();
    assert_eq!(
        network_path(&guest.spec),
        Some(Some(PathBuf::from("/proc/42/ns/net")))
    );
}

#[test]
fn memory_volumes_of_a_pod_live_in_the_guest() {
    let volume = "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache";
    let mounts = serde_json::json!([
        {"destination": "/cache", "type": "bind", "source": volume, "options": ["rbind", "rw"]},
        {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]},
    ]);
    let spec = with_mounts(
        serde_json::json!({crate::pod::CONTAINER_TYPE_ANNOTATION: "container"}),
        mounts.clone(),
    );
    let memory = FakeHost {
        memory_volume: Some(volume.into()),
        ..Default::default()
    };
    let guest = guest_spec(
        spec,
        "c1",
        Path::new(SHARE),
        &PodContext::default(),
        &memory,
    )
    .unwrap();
    assert_eq!(
        mount(&guest.spec, "/cache").source().as_deref(),
        Some(Path::new(
            "/run/hull/pod-volumes/var_lib_kubelet_pods_u1_volumes_kubernetes.io~empty-dir_cache"
        ))
    );
    assert_eq!(guest.shares.len(), 1, "only /data comes from the host");
    // Outside a pod the same mount is a host share like any other.
    let plain = with_mounts(serde_json::json!({}), mounts);
    let guest = guest_spec(
        plain,
        "c1",
        Path::new(SHARE),
        &PodContext::default(),
        &memory,
    )
    .unwrap();
    assert_eq!(guest.shares.len(), 2);
}

// Needs root (mounts a tmpfs), as the suite does.
#[test]
fn a_memory_volume_is_a_tmpfs_in_the_kubelets_empty_dir_directory() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("kubernetes.io~empty-dir/cache");
    let on_disk = dir.path().join("kubernetes.io~empty-dir/disk");
    let elsewhere = dir.path().join("other/cache");
    for d in [&volume, &on_disk, &elsewhere] {
        std::fs::create_dir_all(d).unwrap();
    }
    for d in [&volume, &elsewhere] {
        nix::mount::mount(
            Some("tmpfs"),
            d.as_path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
    }
    let answers = [
        is_memory_volume(&volume),
        is_memory_volume(&on_disk),
        is_memory_volume(&elsewhere),
    ];
    for d in [&volume, &elsewhere] {
        nix::mount::umount2(d.as_path(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    assert_eq!(answers, [true, false, false]);
}

#[test]
fn a_host_network_pod_is_refused() {
    let mut spec = with_mounts(
        serde_json::json!({crate::pod::CONTAINER_TYPE_ANNOTATION: "sandbox"}),
        serde_json::json!([]),
    );
    without_namespace(&mut spec, LinuxNamespaceType::Network);
    let err = plain_guest_spec(spec, "p1").unwrap_err().to_string();
    assert!(err.contains("hostNetwork"), "{err}");
}

#[test]
fn sandbox_id_comes_from_the_cri_annotation() {
    let mut spec = Spec::default();
    assert_eq!(sandbox_id(&spec, "c1"), "c1");
    spec.set_annotations(Some(
        [(SANDBOX_ID_ANNOTATION.to_string(), "pod1".to_string())].into(),
    ));
    assert_eq!(sandbox_id(&spec, "c1"), "pod1");
}

#[test]
fn sets_rootfs_args_and_overrides_env() {
    let spec = container_spec(
        Path::new("/run/hull/shared/c/rootfs"),
        &ProcessOptions {
            args: vec!["sh".into()],
            terminal: true,
            env: vec!["PATH=/bin".into(), "A=1".into()],
            cwd: Some("/tmp".into()),
            ..Default::default()
        },
    );
    assert_eq!(
        spec.root().as_ref().unwrap().path(),
        Path::new("/run/hull/shared/c/rootfs")
    );
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.args().as_ref().unwrap(), &["sh".to_string()]);
    assert_eq!(process.terminal(), Some(true));
    assert_eq!(process.cwd(), Path::new("/tmp"));
    let env = process.env().as_ref().unwrap();
    assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
    assert!(env.contains(&"PATH=/bin".to_string()));
    assert!(env.contains(&"A=1".to_string()));
    let namespaces = spec
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap();
    assert!(namespaces.len() >= 4, "runc's default namespaces");
}

/// A read-only volume with mounts below it: under runc those keep their
/// own `rw` (a plain `ro` bind is not recursive); in the guest the volume
/// is one filesystem, so each gets a bind of its own after the volume's.
/// `rro` (recursive) makes everything read-only.
#[test]
fn mounts_below_a_read_only_volume_keep_their_own_mode() {
    let spec = with_mounts(
        serde_json::json!({}),
        serde_json::json!([
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro", "rprivate"]},
            {"destination": "/all-ro", "type": "bind", "source": "/srv/data", "options": ["rbind", "rro"]},
            {"destination": "/after", "type": "bind", "source": "/srv/other", "options": ["rbind", "rw"]},
        ]),
    );
    let host = FakeHost {
        submounts: vec![(
            "/srv/data".into(),
            vec![
                Submount {
                    relative: "cache".into(),
                    read_only: false,
                },
                Submount {
                    relative: "cache/frozen".into(),
                    read_only: true,
                },
            ],
        )],
        ..Default::default()
    };
    let guest = guest_spec(spec, "c1", Path::new(SHARE), &PodContext::default(), &host).unwrap();
    let mounts = guest.spec.mounts().clone().unwrap();
    let at = mounts
        .iter()
        .position(|m| m.destination() == Path::new("/data"))
        .unwrap();
    let shown: Vec<(String, String, Vec<String>)> = mounts[at..]
        .iter()
        .map(|m| {
            (
                m.destination().display().to_string(),
                m.source().clone().unwrap().display().to_string(),
                m.options().clone().unwrap(),
            )
        })
        .collect();
    let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        shown,
        vec![
            (
                "/data".into(),
                format!("{SHARE}/c1/mounts/0"),
                opts(&["rbind", "ro", "rprivate"])
            ),
            (
                "/data/cache".into(),
                format!("{SHARE}/c1/mounts/0/cache"),
                opts(&["rbind", "rw", "rprivate"])
            ),
            (
                "/data/cache/frozen".into(),
                format!("{SHARE}/c1/mounts/0/cache/frozen"),
                opts(&["rbind", "ro", "rprivate"])
            ),
            (
                "/all-ro".into(),
                format!("{SHARE}/c1/mounts/1"),
                opts(&["rbind", "ro"])
            ),
            (
                "/after".into(),
                format!("{SHARE}/c1/mounts/2"),
                opts(&["rbind", "rw"])
            ),
        ]
    );
    let modes: Vec<(bool, bool)> = guest
        .shares
        .iter()
        .map(|s| (s.read_only, s.recursive_read_only))
        .collect();
    assert_eq!(modes, [(true, false), (true, true), (false, false)]);
}
