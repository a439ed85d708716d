use std::io::{Error, ErrorKind};

use super::facts::first_line;
use super::*;

fn program(path: &str, version: &str) -> Program {
    Program {
        path: path.into(),
        version: Some(version.into()),
    }
}

/// A host with everything Hull needs, under TCG.
fn good_host() -> HostFacts {
    HostFacts {
        virtualization: Virtualization::Pvm,
        vhost_vsock: false,
        qemu: Some(program("/usr/bin/qemu-system-x86_64", "QEMU emulator version 7.2.22")),
        qemu_machines: Some(
            "Supported machines are:\nmicrovm              microvm (i386)\npc                   Standard PC\n"
                .into(),
        ),
        virtiofsd: Some(program("/usr/local/bin/virtiofsd", "virtiofsd 1.14.0")),
        idmapped_shares: Ok(()),
        vmm: Some(program("/usr/local/bin/hull-vmm", "hull-vmm 0.1.0")),
        kernel: FileProbe::File {
            size: 20 << 20,
            magic: b"\x7fELF".to_vec(),
        },
        initrd: FileProbe::File {
            size: 4 << 20,
            magic: vec![0x1f, 0x8b, 8, 0],
        },
        shim: Some("/usr/local/bin/containerd-shim-hull-v2".into()),
        containerd: Some(program("/usr/bin/containerd", "containerd 1.6.20")),
        containerd_config: "/etc/containerd/config.toml".into(),
        containerd_config_text: Ok(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull]\nruntime_type = \"io.containerd.hull.v2\"\nprivileged_without_host_devices = true\n"
                .into(),
        ),
    }
}

fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:?}"))
}

#[test]
fn a_complete_host_passes_and_says_why_tcg() {
    let checks = good_host().checks(&Config::default());
    assert!(passed(&checks), "{checks:#?}");
    let choice = find(&checks, "hypervisor");
    assert!(choice.detail.contains("TCG"), "{choice}");
    assert!(choice.detail.contains("PVM"), "{choice}");
    assert_eq!(find(&checks, "virtualization").status, Status::Warn);
    assert!(find(&checks, "qemu").detail.contains("7.2.22"));
    assert!(find(&checks, "containerd config").detail.contains("`hull`"));
    for check in &checks {
        assert!(!check.to_string().contains('\n'), "{check}");
    }
}

#[test]
fn missing_qemu_virtiofsd_and_assets_fail() {
    let mut host = good_host();
    host.qemu = None;
    host.qemu_machines = None;
    host.virtiofsd = None;
    host.kernel = FileProbe::Missing;
    host.initrd = FileProbe::File {
        size: 0,
        magic: vec![],
    };
    let checks = host.checks(&Config::default());
    assert!(!passed(&checks));
    let failed: Vec<_> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.name)
        .collect();
    assert_eq!(
        failed,
        ["qemu", "virtiofsd", "guest kernel", "guest initrd"]
    );
    let kernel = find(&checks, "guest kernel");
    assert!(
        kernel.detail.contains("/usr/local/share/hull/vmlinux"),
        "{kernel}"
    );
    assert!(kernel.detail.contains("run `make install`"), "{kernel}");
}

#[test]
fn a_kernel_without_id_mapped_shares_warns_unless_the_namespace_is_required() {
    let mut host = good_host();
    host.idmapped_shares = Err("id-mapping a tmpfs (needs Linux 6.3): EINVAL".into());
    let mut config = Config::default();
    let checks = host.checks(&config);
    let isolation = find(&checks, "virtiofsd isolation");
    assert_eq!(isolation.status, Status::Warn);
    assert!(isolation.detail.contains("as root"), "{isolation}");
    assert!(isolation.detail.contains("needs Linux 6.3"), "{isolation}");
    assert!(passed(&checks), "{checks:#?}");

    config.virtiofsd_user_namespace = UserNamespaceMode::On;
    let checks = host.checks(&config);
    assert_eq!(find(&checks, "virtiofsd isolation").status, Status::Fail);
    assert!(!passed(&checks));

    config.virtiofsd_user_namespace = UserNamespaceMode::Off;
    let checks = host.checks(&config);
    assert_eq!(find(&checks, "virtiofsd isolation").status, Status::Ok);
    assert_eq!(
        find(
            &good_host().checks(&Config::default()),
            "virtiofsd isolation"
        )
        .status,
        Status::Ok
    );
}

#[test]
fn qemu_without_microvm_fails() {
    let qemu = program("/opt/qemu", "QEMU emulator version 9.0.0");
    let checks = check_qemu(
        Path::new("qemu"),
        Some(&qemu),
        Some("pc   Standard PC\nq35  Q35\n"),
    );
    assert_eq!(checks[0].status, Status::Ok);
    assert_eq!(checks[1].status, Status::Fail);
    assert!(checks[1].detail.contains("/opt/qemu"));
    let checks = check_qemu(Path::new("qemu"), Some(&qemu), None);
    assert_eq!(checks[1].status, Status::Fail);
}

#[test]
fn a_kernel_that_is_not_elf_fails() {
    let bzimage = FileProbe::File {
        size: 9 << 20,
        magic: b"MZ\0\0".to_vec(),
    };
    let check = check_asset("guest kernel", Path::new("/k"), &bzimage, Some(b"\x7fELF"));
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("ELF"), "{check}");
    // The initrd has no magic to check.
    assert_eq!(
        check_asset("guest initrd", Path::new("/i"), &bzimage, None).status,
        Status::Ok
    );
}

#[test]
fn file_probe_reads_size_and_magic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmlinux");
    std::fs::write(&file, b"\x7fELF and the rest").unwrap();
    assert_eq!(
        FileProbe::of(&file),
        FileProbe::File {
            size: 17,
            magic: b"\x7fELF".to_vec()
        }
    );
    assert_eq!(FileProbe::of(dir.path()), FileProbe::NotAFile);
    assert_eq!(FileProbe::of(&dir.path().join("none")), FileProbe::Missing);
}

#[test]
fn containerd_config_states() {
    let path = Path::new("/etc/containerd/config.toml");
    let absent = check_containerd_config(path, Err(Error::from(ErrorKind::NotFound)));
    assert_eq!(absent.status, Status::Warn);
    assert!(absent.detail.contains("absent"), "{absent}");
    assert!(absent.detail.contains("ctr run --runtime"), "{absent}");
    let unregistered = check_containerd_config(path, Ok("version = 2\n"));
    assert_eq!(unregistered.status, Status::Warn);
    assert!(
        unregistered.detail.contains("hull install"),
        "{unregistered}"
    );
    let v1 = check_containerd_config(path, Ok("version = 1\n"));
    assert_eq!(v1.status, Status::Warn);
    assert!(v1.detail.contains("version 1"), "{v1}");
    let broken = check_containerd_config(path, Ok("[plugins\n"));
    assert!(broken.detail.contains("line 1"), "{broken}");

    let table = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull]";
    let without = format!("version = 2\n{table}\nruntime_type = \"io.containerd.hull.v2\"\n");
    let lacking = check_containerd_config(path, Ok(&without));
    assert_eq!(lacking.status, Status::Warn);
    assert!(
        lacking
            .detail
            .contains("`hull` lacks `privileged_without_host_devices = true`"),
        "{lacking}"
    );
    let with = format!("{without}privileged_without_host_devices = true\n");
    let ready = check_containerd_config(path, Ok(&with));
    assert_eq!(ready.status, Status::Ok, "{ready}");
}

#[test]
fn missing_containerd_is_only_a_warning() {
    let mut host = good_host();
    host.containerd = None;
    host.shim = None;
    host.containerd_config_text = Err(Error::from(ErrorKind::NotFound));
    let checks = host.checks(&Config::default());
    assert!(passed(&checks), "{checks:#?}");
    assert_eq!(find(&checks, "containerd").status, Status::Warn);
    assert_eq!(find(&checks, "shim").status, Status::Warn);
}

#[test]
fn hypervisor_choice_follows_config_and_host() {
    let mut config = Config::default();
    let check = check_choice(&config, Virtualization::Hardware);
    assert_eq!(check.status, Status::Ok);
    assert_eq!(
        check.detail,
        "built-in VMM hull-vmm (auto: KVM with VT-x/AMD-V present), jailed in the sandbox directory as a uid and gid per sandbox from 2147418112"
    );
    let check = check_choice(&config, Virtualization::Pvm);
    assert_eq!(
        check.detail,
        format!(
            "QEMU with TCG (auto: no KVM that can boot Linux); auto: {}, so not the built-in VMM",
            Virtualization::Pvm.describe()
        )
    );
    let check = check_choice(&config, Virtualization::None);
    assert!(check.detail.contains("QEMU with TCG"), "{check}");
    assert!(check.detail.contains("no usable KVM"), "{check}");

    config.hypervisor = HypervisorKind::Qemu;
    let check = check_choice(&config, Virtualization::Hardware);
    assert_eq!(
        check.detail,
        "QEMU with KVM (auto: VT-x/AMD-V present); hypervisor = \"qemu\""
    );
    config.accelerator = Accelerator::Kvm;
    let check = check_choice(&config, Virtualization::Pvm);
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("PVM"), "{check}");
    config.accelerator = Accelerator::Tcg;
    let check = check_choice(&config, Virtualization::Hardware);
    assert!(
        check
            .detail
            .starts_with("QEMU with TCG (accelerator = \"tcg\")"),
        "{check}"
    );

    config.hypervisor = HypervisorKind::Builtin;
    let check = check_choice(&config, Virtualization::Hardware);
    assert!(
        check
            .detail
            .starts_with("built-in VMM hull-vmm (hypervisor = \"builtin\")"),
        "{check}"
    );
    let check = check_choice(&config, Virtualization::Pvm);
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("hypervisor = \"qemu\""), "{check}");
}

#[test]
fn hull_vmm_is_needed_only_where_it_runs_the_vms() {
    let mut host = good_host();
    host.vmm = None;
    // PVM: QEMU runs the VMs, hull-vmm is not needed.
    let checks = host.checks(&Config::default());
    assert!(passed(&checks), "{checks:#?}");
    let vmm = find(&checks, "hull-vmm");
    assert!(vmm.detail.contains("not needed"), "{vmm}");

    host.virtualization = Virtualization::Hardware;
    let checks = host.checks(&Config::default());
    let vmm = find(&checks, "hull-vmm");
    assert_eq!(vmm.status, Status::Fail);
    assert!(vmm.detail.contains("hull install"), "{vmm}");
    assert!(find(&checks, "hypervisor").detail.contains("hull-vmm"));

    // With hull-vmm there, QEMU missing is only a warning.
    host.vmm = Some(program("/usr/local/bin/hull-vmm", "hull-vmm 0.1.0"));
    host.qemu = None;
    host.qemu_machines = None;
    let checks = host.checks(&Config::default());
    assert!(passed(&checks), "{checks:#?}");
    let qemu = find(&checks, "qemu");
    assert_eq!(qemu.status, Status::Warn);
    assert!(qemu.detail.contains("not needed"), "{qemu}");
    assert_eq!(find(&checks, "hull-vmm").status, Status::Ok);
}

#[test]
fn config_sources_and_failures() {
    assert_eq!(
        ConfigSource::resolve(None, None),
        ConfigSource {
            path: DEFAULT_CONFIG_PATH.into(),
            named: false
        }
    );
    let env = ConfigSource::resolve(None, Some("/env.toml".into()));
    assert!(env.named);
    let flag = ConfigSource::resolve(Some(Path::new("/flag.toml")), Some("/env.toml".into()));
    assert_eq!(flag.path, PathBuf::from("/flag.toml"));

    let default = ConfigSource::resolve(None, None);
    let (check, config) = check_config(&default, Err(Error::from(ErrorKind::NotFound)));
    assert_eq!(check.status, Status::Ok);
    assert_eq!(config, Config::default());
    let (check, _) = check_config(&flag, Err(Error::from(ErrorKind::NotFound)));
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("/flag.toml"), "{check}");
    let (check, _) = check_config(&default, Ok("vcpus = 0\n".into()));
    assert_eq!(check.status, Status::Fail);
    assert!(check.detail.contains("vcpus"), "{check}");
    let (check, config) = check_config(&default, Ok("memory_mib = 512\n".into()));
    assert_eq!(check.status, Status::Ok);
    assert_eq!(config.memory_mib, 512);
}

#[test]
fn first_line_skips_blank_lines() {
    assert_eq!(
        first_line("\nQEMU emulator version 7.2.22\nCopyright\n").as_deref(),
        Some("QEMU emulator version 7.2.22")
    );
    assert_eq!(first_line("  \n"), None);
}
