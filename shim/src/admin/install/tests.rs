use super::*;

/// A built tree and an empty root to install into.
struct Fixture {
    dir: tempfile::TempDir,
    options: InstallOptions,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let build = root.join("build");
        fs::create_dir_all(&build).unwrap();
        fs::write(build.join("hull"), "hull binary").unwrap();
        fs::write(build.join(SHIM_BINARY), "shim binary").unwrap();
        fs::write(build.join(VMM_BINARY), "vmm binary").unwrap();
        // The kernel is a symlink into a cache, as `make kernel` leaves it.
        let cache = root.join("cache");
        fs::create_dir_all(&cache).unwrap();
        fs::write(cache.join("vmlinux"), b"\x7fELF kernel").unwrap();
        let assets = root.join("assets");
        fs::create_dir_all(&assets).unwrap();
        std::os::unix::fs::symlink(cache.join("vmlinux"), assets.join("vmlinux")).unwrap();
        fs::write(assets.join("hull-initrd.img"), "initrd").unwrap();
        let options = InstallOptions {
            prefix: root.join("usr/local"),
            binaries_from: build,
            kernel: assets.join("vmlinux"),
            initrd: assets.join("hull-initrd.img"),
            hull_config: root.join("etc/hull/config.toml"),
            containerd_config: Some(root.join("etc/containerd/config.toml")),
        };
        Fixture { dir, options }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn install(&self) -> Result<Vec<Action>, InstallError> {
        let mut actions = Vec::new();
        install(&self.options, &mut |a| actions.push(a.clone()))?;
        Ok(actions)
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn installs_everything_into_a_fresh_prefix() {
    let fx = Fixture::new();
    let actions = fx.install().unwrap();

    let hull = fx.path("usr/local/bin/hull");
    assert_eq!(fs::read_to_string(&hull).unwrap(), "hull binary");
    assert_eq!(mode(&hull), 0o755);
    let shim = fx.path("usr/local/bin/containerd-shim-hull-v2");
    assert_eq!(fs::read_to_string(&shim).unwrap(), "shim binary");
    let vmm = fx.path("usr/local/bin/hull-vmm");
    assert_eq!(fs::read_to_string(&vmm).unwrap(), "vmm binary");
    assert_eq!(mode(&vmm), 0o755);
    let kernel = fx.path("usr/local/share/hull/vmlinux");
    assert!(!fs::symlink_metadata(&kernel)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&kernel).unwrap(), b"\x7fELF kernel");
    assert_eq!(mode(&kernel), 0o644);
    assert_eq!(
        fs::read_to_string(fx.path("usr/local/share/hull/hull-initrd.img")).unwrap(),
        "initrd"
    );
    let class = fs::read_to_string(fx.path("usr/local/share/hull/runtimeclass.yaml")).unwrap();
    assert!(class.contains("kind: RuntimeClass\n"));
    assert!(class.contains("handler: hull\n"));

    // The prefix is not /usr/local, so the new config points at it.
    let config_path = fx.path("etc/hull/config.toml");
    let config = Config::parse(&fs::read_to_string(&config_path).unwrap(), &config_path).unwrap();
    assert_eq!(config.kernel, kernel);
    assert_eq!(config.vmm, vmm, "the shim finds hull-vmm outside its PATH");
    assert!(fs::read_to_string(&config_path)
        .unwrap()
        .starts_with(CONFIG_EXAMPLE));

    let containerd = fs::read_to_string(fx.path("etc/containerd/config.toml")).unwrap();
    assert_eq!(
        containerd_config::hull_handlers(&containerd).unwrap(),
        [containerd_config::HullHandler {
            name: "hull".into(),
            privileged_without_host_devices: true
        }]
    );
    assert!(!fx.path("etc/containerd/config.toml.hull-backup").exists());

    let lines: Vec<String> = actions.iter().map(ToString::to_string).collect();
    assert_eq!(lines[0], format!("installed {}", hull.display()));
    assert!(lines.contains(&format!("wrote {}", config_path.display())));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("registered runtime handler `hull`")));
    // No temporary files are left behind.
    for dir in [
        "usr/local/bin",
        "usr/local/share/hull",
        "etc/hull",
        "etc/containerd",
    ] {
        for entry in fs::read_dir(fx.path(dir)).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(!name.to_string_lossy().contains("hull-tmp"), "{name:?}");
        }
    }
}

#[test]
fn a_second_install_changes_nothing() {
    let fx = Fixture::new();
    fx.install().unwrap();
    let containerd = fs::read_to_string(fx.path("etc/containerd/config.toml")).unwrap();
    let actions = fx.install().unwrap();
    for action in &actions {
        assert!(
            matches!(
                action,
                Action::UpToDate(_) | Action::KeptConfig(_) | Action::AlreadyRegistered(_)
            ),
            "{action}"
        );
    }
    assert_eq!(actions.len(), 8, "{actions:?}");
    assert_eq!(
        fs::read_to_string(fx.path("etc/containerd/config.toml")).unwrap(),
        containerd
    );
}

#[test]
fn a_newer_build_replaces_the_installed_binary() {
    let fx = Fixture::new();
    fx.install().unwrap();
    fs::write(fx.options.binaries_from.join("hull"), "hull v2").unwrap();
    let actions = fx.install().unwrap();
    let hull = fx.path("usr/local/bin/hull");
    assert_eq!(fs::read_to_string(&hull).unwrap(), "hull v2");
    assert_eq!(
        actions[0],
        Action::Installed {
            path: hull,
            from: None
        }
    );
}

#[test]
fn an_existing_hull_config_is_kept_and_a_mismatch_noted() {
    let fx = Fixture::new();
    let config = fx.path("etc/hull/config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(&config, "vcpus = 2\n").unwrap();
    let actions = fx.install().unwrap();
    assert_eq!(fs::read_to_string(&config).unwrap(), "vcpus = 2\n");
    assert!(actions.contains(&Action::KeptConfig(config.clone())));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::ConfigMismatch { key: "kernel", .. })));
}

#[test]
fn existing_containerd_config_is_merged_with_a_backup() {
    let fx = Fixture::new();
    let path = fx.path("etc/containerd/config.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let original = "# mine\nversion = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n";
    fs::write(&path, original).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    fx.install().unwrap();
    let merged = fs::read_to_string(&path).unwrap();
    assert!(merged.starts_with(original), "{merged}");
    assert!(merged.contains("runtimes.hull]"), "{merged}");
    assert_eq!(mode(&path), 0o600);
    let backup = fx.path("etc/containerd/config.toml.hull-backup");
    assert_eq!(fs::read_to_string(backup).unwrap(), original);
}

#[test]
fn a_refused_containerd_config_stops_before_anything_is_written() {
    let fx = Fixture::new();
    let path = fx.path("etc/containerd/config.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, "version = 1\n").unwrap();
    let err = fx.install().unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("version 1"), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "version = 1\n");
    assert!(!fx.path("usr/local/bin/hull").exists());
    assert!(!fx.path("etc/containerd/config.toml.hull-backup").exists());
}

#[test]
fn a_symlinked_containerd_config_is_edited_where_it_lives() {
    let fx = Fixture::new();
    let real = fx.path("real-containerd.toml");
    fs::write(&real, "version = 2\n").unwrap();
    let link = fx.path("etc/containerd/config.toml");
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    fx.install().unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::read_to_string(&real)
        .unwrap()
        .contains("runtimes.hull]"));
}

#[test]
fn no_containerd_leaves_containerd_alone() {
    let mut fx = Fixture::new();
    fx.options.containerd_config = None;
    let actions = fx.install().unwrap();
    assert!(!fx.path("etc/containerd").exists());
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::Registered { .. } | Action::AlreadyRegistered(_))));
}

#[test]
fn missing_sources_are_named() {
    let fx = Fixture::new();
    fs::remove_file(fx.options.binaries_from.join(SHIM_BINARY)).unwrap();
    let err = fx.install().unwrap_err().to_string();
    assert!(err.contains(SHIM_BINARY), "{err}");
    assert!(!fx.path("usr/local/bin/hull").exists());

    let fx = Fixture::new();
    fs::remove_file(fx.options.binaries_from.join(VMM_BINARY)).unwrap();
    let err = fx.install().unwrap_err().to_string();
    assert!(err.starts_with("hull-vmm not found in"), "{err}");
    assert!(err.contains("-p hull-vmm"), "{err}");
    assert!(!fx.path("usr/local/bin/hull").exists());

    let mut fx = Fixture::new();
    fx.options.kernel = fx.path("assets/none");
    let err = fx.install().unwrap_err().to_string();
    assert!(err.starts_with("Guest kernel not found at"), "{err}");
    assert!(err.contains("--kernel"), "{err}");
}

#[test]
fn same_content_compares_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    fs::write(&a, &big).unwrap();
    assert!(!same_content(&a, &b).unwrap());
    fs::write(&b, &big).unwrap();
    assert!(same_content(&a, &b).unwrap());
    let mut changed = big.clone();
    changed[150_000] ^= 1;
    fs::write(&b, &changed).unwrap();
    assert!(!same_content(&a, &b).unwrap());
}
