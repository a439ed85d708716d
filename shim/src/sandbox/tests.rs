use super::launch::{builtin_jail, BASE_CMDLINE};
use super::*;
use crate::hypervisor::builtin::VmmJail;
use crate::hypervisor::ResolvedAccelerator;

#[test]
fn socket_paths_fit_a_sockaddr_un_for_64_character_ids() {
    let paths = SandboxPaths::new(Path::new("/run/hull"), &"a".repeat(64));
    for socket in [&paths.vsock, &paths.vhost_vsock, &paths.virtiofsd] {
        // Guest-initiated hybrid vsock connections append `_<port>`.
        assert!(socket.as_os_str().len() + 11 <= 107, "{}", socket.display());
    }
}

fn options(vcpus: u32) -> SandboxOptions {
    SandboxOptions {
        size: VmSize {
            vcpus,
            memory_mib: 256,
        },
        netns: None,
        hostname: String::new(),
    }
}

fn prepare(config: &Config, vcpus: u32, host: Virtualization) -> Result<Backend, String> {
    let paths = SandboxPaths::new(&config.state_dir, "s1");
    Launch::prepare(config, &paths, &options(vcpus), host, (1000, 1000))
        .map(|launch| launch.backend)
        .map_err(|e| e.to_string())
}

/// A configuration whose programs all exist (`true` stands in for each).
fn with_programs() -> Config {
    let truth = find_program(Path::new("true")).expect("true is on PATH");
    Config {
        qemu: truth.clone(),
        virtiofsd: truth.clone(),
        vmm: truth,
        ..Config::default()
    }
}

#[test]
fn the_backend_and_its_programs_are_settled_before_anything_starts() {
    let mut config = with_programs();
    assert_eq!(
        prepare(&config, 1, Virtualization::Hardware),
        Ok(Backend::Builtin)
    );
    assert_eq!(
        prepare(&config, 1, Virtualization::Pvm),
        Ok(Backend::Qemu(ResolvedAccelerator::Tcg))
    );

    // On PVM, builtin is refused naming the host and the way out.
    config.hypervisor = crate::config::HypervisorKind::Builtin;
    let err = prepare(&config, 1, Virtualization::Pvm).unwrap_err();
    assert!(err.contains(Virtualization::Pvm.describe()), "{err}");
    assert!(err.contains("hypervisor = \"qemu\""), "{err}");

    let err = prepare(&config, 33, Virtualization::Hardware).unwrap_err();
    assert!(err.contains("at most 32 vCPUs"), "{err}");

    config.vmm = "/nonexistent/hull-vmm".into();
    let err = prepare(&config, 1, Virtualization::Hardware).unwrap_err();
    assert!(err.contains("/nonexistent/hull-vmm"), "{err}");
    assert!(err.contains("hull install"), "{err}");
    // QEMU's binary is not looked for when hull-vmm runs the VM; hull-vmm
    // is needed either way (it jails QEMU and virtiofsd).
    config.vmm = with_programs().vmm;
    config.qemu = "/nonexistent/qemu".into();
    assert_eq!(
        prepare(&config, 1, Virtualization::Hardware),
        Ok(Backend::Builtin)
    );
    config.hypervisor = crate::config::HypervisorKind::Qemu;
    let err = prepare(&config, 1, Virtualization::Hardware).unwrap_err();
    assert!(err.contains("/nonexistent/qemu"), "{err}");
    config.qemu = with_programs().qemu;
    config.vmm = "/nonexistent/hull-vmm".into();
    let err = prepare(&config, 1, Virtualization::Pvm).unwrap_err();
    assert!(
        err.contains("/nonexistent/hull-vmm") && err.contains("jails QEMU"),
        "{err}"
    );
    config.vmm = with_programs().vmm;

    config.virtiofsd = "/nonexistent/virtiofsd".into();
    let err = prepare(&config, 1, Virtualization::Pvm).unwrap_err();
    assert!(err.contains("/nonexistent/virtiofsd"), "{err}");
}

#[test]
fn hull_vmm_is_jailed_in_the_sandbox_dir() {
    let paths = SandboxPaths::new(Path::new("/run/hull"), "pod-1");
    assert_eq!(
        builtin_jail(&paths, (1000, 1001)),
        VmmJail {
            root: "/run/hull/pod-1".into(),
            uid: 1000,
            gid: 1001,
        }
    );
    // The sockets hull-vmm keeps using after the jail are inside it.
    assert!(paths.vsock.starts_with(&paths.dir));
    let relative = SandboxPaths::new(Path::new("state"), "pod-1");
    let root = builtin_jail(&relative, (1000, 1001)).root;
    assert!(
        root.is_absolute() && root.ends_with("state/pod-1"),
        "{root:?}"
    );
    assert!(paths.vmm_config.starts_with(&paths.dir));
}

#[test]
fn host_limits_are_the_vm_plus_the_overheads() {
    let config = Config {
        sandbox_memory_overhead_mib: 100,
        sandbox_cpu_overhead_millicpus: 250,
        ..Config::default()
    };
    let size = VmSize {
        vcpus: 2,
        memory_mib: 640,
    };
    assert_eq!(host_limits(&config, &size), CgroupLimits::new(740, 2250));
}

#[test]
fn only_qemu_under_tcg_gets_the_tsc_frequency_and_trust_and_only_hull_vmm_resets_through_the_i8042()
{
    let config = Config {
        kernel_params: "debug".into(),
        ..Config::default()
    };
    let tcg = kernel_cmdline(
        &config,
        Backend::Qemu(ResolvedAccelerator::Tcg),
        Some(2_000_000),
    );
    assert_eq!(
        tcg,
        format!("{BASE_CMDLINE} tsc_early_khz=2000000 tsc=reliable debug")
    );
    assert_eq!(
        kernel_cmdline(
            &config,
            Backend::Qemu(ResolvedAccelerator::Kvm),
            Some(2_000_000)
        ),
        format!("{BASE_CMDLINE} debug")
    );
    assert_eq!(
        kernel_cmdline(&config, Backend::Builtin, Some(2_000_000)),
        format!("{BASE_CMDLINE} reboot=k debug")
    );
}

#[test]
fn failed_start_keeps_only_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let paths = SandboxPaths::new(dir.path(), "s1");
    std::fs::create_dir_all(paths.shared.join("c/rootfs")).unwrap();
    std::os::unix::fs::symlink("/etc", paths.dir.join("planted")).unwrap();
    std::fs::write(&paths.console_log, "boot").unwrap();
    std::fs::write(&paths.vsock, "").unwrap();
    remove_state(&paths, true);
    assert!(paths.console_log.exists());
    assert!(!paths.vsock.exists());
    assert!(!paths.shared.exists());
    remove_state(&paths, false);
    assert!(!paths.dir.exists());
}

// Needs root (mounts), as the suite does.
#[test]
fn removal_detaches_the_share_and_keeps_volume_files_and_symlink_targets() {
    let dir = tempfile::tempdir().unwrap();
    let paths = SandboxPaths::new(&dir.path().join("state"), "s1");
    create_state_dir(&dir.path().join("state"), &paths.dir).unwrap();
    let volume = dir.path().join("volume");
    let victim = dir.path().join("victim");
    for d in [&volume, &victim] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("precious"), "data").unwrap();
    }
    let share = SharedDir::create(&paths.dir, SHARED_DIR_NAME, None).unwrap();
    let bind = crate::rootfs::ShareBind {
        source: volume.clone(),
        read_only: false,
        recursive: true,
        recursive_read_only: false,
        receives_host_mounts: false,
    };
    share.bind(&bind, Path::new("c/mounts/0")).unwrap();
    // What a guest can plant in the share.
    std::os::unix::fs::symlink(&victim, paths.shared.join("c/escape")).unwrap();
    std::os::unix::fs::symlink(&victim, paths.shared.join("escape")).unwrap();
    std::fs::write(&paths.console_log, "boot").unwrap();
    drop(share);

    remove_state(&paths, true);
    assert!(paths.console_log.exists());
    assert!(!paths.shared.exists());
    remove_state(&paths, false);
    assert!(!paths.dir.exists());
    for d in [&volume, &victim] {
        assert_eq!(std::fs::read_to_string(d.join("precious")).unwrap(), "data");
    }
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!table.contains(dir.path().to_str().unwrap()), "{table}");
}

#[test]
fn missing_assets_are_named_with_a_fix() {
    let config = Config {
        kernel: "/nonexistent/vmlinux".into(),
        ..Config::default()
    };
    let err = check_assets(&config).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/vmlinux"), "{err}");
    assert!(err.contains("make install"), "{err}");
}
