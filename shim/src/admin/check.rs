//! `hull check`: can this host run Hull, and how.
//!
//! Every item is judged by a plain function of what was observed (a path, a
//! command's output, a file's text), so tests can describe any host;
//! [`HostFacts::gather`] is the one place that looks at the real one.

use std::fmt;
use std::path::{Path, PathBuf};

mod facts;

pub use self::facts::{FileProbe, HostFacts, Program};
use super::containerd_config::{self, HullHandler};
use crate::config::{Accelerator, Config, HypervisorKind, UserNamespaceMode, DEFAULT_CONFIG_PATH};
use crate::host::Virtualization;
use crate::hypervisor::{Backend, ResolvedAccelerator};
use crate::sandbox::find_program;

/// The shim binary containerd looks for on its PATH.
pub const SHIM_BINARY: &str = "containerd-shim-hull-v2";
/// The built-in VMM's binary, installed next to the shim.
pub const VMM_BINARY: &str = "hull-vmm";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Hull runs, but not everywhere or not at its best.
    Warn,
    /// Hull cannot run a VM until this is fixed.
    Fail,
}

/// One line of `hull check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Check {
            name,
            status,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{status:<4}  {:<18} {}", self.name, self.detail)
    }
}

/// True when nothing Hull needs is missing.
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|check| check.status != Status::Fail)
}

/// Which configuration file applies: `--config`, else HULL_CONFIG, else
/// the default, which alone may be absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Named by the user, so it must exist.
    pub named: bool,
}

impl ConfigSource {
    pub fn resolve(flag: Option<&Path>, env: Option<PathBuf>) -> Self {
        match flag.map(Path::to_owned).or(env) {
            Some(path) => ConfigSource { path, named: true },
            None => ConfigSource {
                path: PathBuf::from(DEFAULT_CONFIG_PATH),
                named: false,
            },
        }
    }
}

/// Runs every check on this host.
pub fn run(config_flag: Option<&Path>, containerd_config: &Path) -> Vec<Check> {
    let source = ConfigSource::resolve(
        config_flag,
        std::env::var_os("HULL_CONFIG").map(PathBuf::from),
    );
    let (config_check, config) = check_config(&source, std::fs::read_to_string(&source.path));
    let facts = HostFacts::gather(&config, containerd_config);
    let mut checks = vec![config_check];
    checks.extend(facts.checks(&config));
    checks
}

/// The configuration in effect (defaults when it cannot be read), and what
/// to say about it.
pub fn check_config(source: &ConfigSource, text: std::io::Result<String>) -> (Check, Config) {
    let path = source.path.display();
    match text {
        Ok(text) => match Config::parse(&text, &source.path) {
            Ok(config) => (Check::new("config", Status::Ok, format!("{path}")), config),
            Err(err) => (
                Check::new(
                    "config",
                    Status::Fail,
                    format!("{err}; checking the rest with defaults"),
                ),
                Config::default(),
            ),
        },
        Err(err) if !source.named && err.kind() == std::io::ErrorKind::NotFound => (
            Check::new(
                "config",
                Status::Ok,
                format!("{path} absent: every key at its default"),
            ),
            Config::default(),
        ),
        Err(err) => (
            Check::new(
                "config",
                Status::Fail,
                format!("Cannot read {path}: {err}; checking the rest with defaults"),
            ),
            Config::default(),
        ),
    }
}

pub fn check_virtualization(virtualization: Virtualization) -> Check {
    match virtualization {
        Virtualization::Hardware => {
            Check::new("virtualization", Status::Ok, virtualization.describe())
        }
        Virtualization::Pvm => Check::new(
            "virtualization",
            Status::Warn,
            format!("{}; VMs run under TCG (slower)", virtualization.describe()),
        ),
        Virtualization::None => Check::new(
            "virtualization",
            Status::Warn,
            "No usable KVM (no /dev/kvm, or no VT-x/AMD-V); VMs run under TCG (slower)",
        ),
    }
}

pub fn check_vhost_vsock(present: bool) -> Check {
    let detail = if present {
        "/dev/vhost-vsock present; Hull serves vsock itself all the same (in hull-vmm, or as a vhost-user backend for QEMU)"
    } else {
        "/dev/vhost-vsock absent; Hull serves vsock itself (in hull-vmm, or as a vhost-user backend for QEMU)"
    };
    Check::new("vhost-vsock", Status::Ok, detail)
}

/// QEMU itself, then its `microvm` machine (only when QEMU runs).
pub fn check_qemu(configured: &Path, qemu: Option<&Program>, machines: Option<&str>) -> Vec<Check> {
    let Some(qemu) = qemu else {
        return vec![Check::new(
            "qemu",
            Status::Fail,
            format!(
                "{} not found: apt install qemu-system-x86, or set `qemu` in the config",
                configured.display()
            ),
        )];
    };
    let Some(version) = &qemu.version else {
        return vec![Check::new(
            "qemu",
            Status::Fail,
            format!(
                "{} does not run (`--version` failed): reinstall it",
                qemu.path.display()
            ),
        )];
    };
    let version_check = Check::new(
        "qemu",
        Status::Ok,
        format!("{} ({version})", qemu.path.display()),
    );
    let has_microvm = machines.is_some_and(|text| {
        text.lines()
            .any(|line| line.split_whitespace().next() == Some("microvm"))
    });
    let machine_check = if has_microvm {
        Check::new("qemu microvm", Status::Ok, "machine `microvm` available")
    } else {
        Check::new(
            "qemu microvm",
            Status::Fail,
            format!(
                "{} has no `microvm` machine: use a QEMU built with it (Debian's qemu-system-x86 is)",
                qemu.path.display()
            ),
        )
    };
    vec![version_check, machine_check]
}

/// The built-in VMM's binary; `needed` when it runs this host's VMs.
pub fn check_vmm(configured: &Path, vmm: Option<&Program>, needed: bool) -> Check {
    let missing_status = if needed { Status::Fail } else { Status::Ok };
    match vmm {
        None if needed => Check::new(
            "hull-vmm",
            missing_status,
            format!(
                "{} not found: run `hull install` (or `make install`), set `vmm` in the config, or set hypervisor = \"qemu\"",
                configured.display()
            ),
        ),
        None => Check::new(
            "hull-vmm",
            missing_status,
            format!(
                "{} not found; not needed while QEMU runs the VMs",
                configured.display()
            ),
        ),
        Some(Program {
            path,
            version: None,
        }) => Check::new(
            "hull-vmm",
            if needed { Status::Fail } else { Status::Warn },
            format!("{} does not run (`--version` failed): reinstall it", path.display()),
        ),
        Some(Program {
            path,
            version: Some(version),
        }) => Check::new(
            "hull-vmm",
            Status::Ok,
            format!("{} ({version})", path.display()),
        ),
    }
}

pub fn check_virtiofsd(configured: &Path, virtiofsd: Option<&Program>) -> Check {
    match virtiofsd {
        None => Check::new(
            "virtiofsd",
            Status::Fail,
            format!(
                "{} not found: `cargo install --root /usr/local virtiofsd`, or set `virtiofsd` in the config",
                configured.display()
            ),
        ),
        Some(Program {
            path,
            version: None,
        }) => Check::new(
            "virtiofsd",
            Status::Fail,
            format!("{} does not run (`--version` failed): reinstall it", path.display()),
        ),
        Some(Program {
            path,
            version: Some(version),
        }) => Check::new(
            "virtiofsd",
            Status::Ok,
            format!("{} ({version})", path.display()),
        ),
    }
}

/// Whether virtiofsd can run unprivileged here: the one place a host
/// that cannot id-map the share is reported, so every sandbox does not
/// repeat it.
pub fn check_share_isolation(mode: UserNamespaceMode, idmapped: &Result<(), String>) -> Check {
    const NAME: &str = "virtiofsd isolation";
    match (mode, idmapped) {
        (UserNamespaceMode::Off, _) => Check::new(
            NAME,
            Status::Ok,
            "virtiofsd runs as root (virtiofsd_user_namespace = \"off\"), in its own namespaces, under seccomp",
        ),
        (_, Ok(())) => Check::new(
            NAME,
            Status::Ok,
            "virtiofsd runs unprivileged, as root of its own user namespace, over id-mapped mounts",
        ),
        (UserNamespaceMode::Auto, Err(why)) => Check::new(
            NAME,
            Status::Warn,
            format!("this kernel cannot id-map the share ({why}), so virtiofsd runs as root, in its own namespaces, under seccomp; Linux 6.8 lifts this"),
        ),
        (UserNamespaceMode::On, Err(why)) => Check::new(
            NAME,
            Status::Fail,
            format!("virtiofsd_user_namespace = \"on\" but this kernel cannot id-map the share ({why}): sandboxes will not start"),
        ),
    }
}

/// A guest asset; `magic` is what its first bytes must be.
pub fn check_asset(
    name: &'static str,
    path: &Path,
    probe: &FileProbe,
    magic: Option<&[u8]>,
) -> Check {
    let shown = path.display();
    let fail = |detail: String| Check::new(name, Status::Fail, detail);
    match probe {
        FileProbe::Missing => fail(format!("Not found at {shown}: run `make install`")),
        FileProbe::NotAFile => fail(format!("{shown} is not a file: run `make install`")),
        FileProbe::Unreadable(err) => fail(format!("Cannot read {shown}: {err}")),
        FileProbe::File { size: 0, .. } => fail(format!("{shown} is empty: run `make install`")),
        FileProbe::File { magic: found, .. } if magic.is_some_and(|m| !found.starts_with(m)) => {
            fail(format!(
                "{shown} is not an uncompressed ELF vmlinux (Hull boots it with PVH): run `make install`"
            ))
        }
        FileProbe::File { size, .. } => Check::new(
            name,
            Status::Ok,
            format!("{shown} ({:.1} MiB)", *size as f64 / (1024.0 * 1024.0)),
        ),
    }
}

pub fn check_shim(found: Option<&Path>) -> Check {
    match found {
        Some(path) => Check::new("shim", Status::Ok, path.display().to_string()),
        None => Check::new(
            "shim",
            Status::Warn,
            format!("{SHIM_BINARY} not on PATH: containerd cannot start Hull; run `hull install`"),
        ),
    }
}

/// containerd is what the shim is for, but `hull run` needs none.
pub fn check_containerd(containerd: Option<&Program>) -> Check {
    match containerd {
        None => Check::new(
            "containerd",
            Status::Warn,
            "Not found: apt install containerd to run Hull under containerd (`hull run` works without it)",
        ),
        Some(Program { path, version }) => Check::new(
            "containerd",
            Status::Ok,
            match version {
                Some(version) => format!("{} ({version})", path.display()),
                None => format!("{} (`--version` failed)", path.display()),
            },
        ),
    }
}

/// Whether CRI (Kubernetes) can use Hull. `ctr run --runtime
/// io.containerd.hull.v2` needs no configuration, so this never fails.
pub fn check_containerd_config(path: &Path, text: std::io::Result<&str>) -> Check {
    let shown = path.display();
    let not_for_cri = "`ctr run --runtime io.containerd.hull.v2` needs no config";
    let text = match text {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Check::new(
                "containerd config",
                Status::Warn,
                format!("{shown} absent: CRI cannot use Hull; run `hull install` ({not_for_cri})"),
            )
        }
        Err(err) => {
            return Check::new(
                "containerd config",
                Status::Warn,
                format!("Cannot read {shown}: {err}"),
            )
        }
    };
    match containerd_config::hull_handlers(text) {
        Ok(handlers) if handlers.is_empty() => Check::new(
            "containerd config",
            Status::Warn,
            format!(
                "{shown} registers no {} runtime for CRI: run `hull install` ({not_for_cri})",
                containerd_config::RUNTIME_TYPE
            ),
        ),
        Ok(handlers) => {
            let names = |handlers: &[&HullHandler]| {
                handlers
                    .iter()
                    .map(|h| format!("`{}`", h.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (ready, lacking): (Vec<&HullHandler>, Vec<&HullHandler>) = handlers
                .iter()
                .partition(|h| h.privileged_without_host_devices);
            if lacking.is_empty() {
                Check::new(
                    "containerd config",
                    Status::Ok,
                    format!("{shown} registers CRI runtime handler {}", names(&ready)),
                )
            } else {
                Check::new(
                    "containerd config",
                    Status::Warn,
                    format!(
                        "{shown}: runtime handler {} lacks `{} = true`, so containerd gives privileged containers the host's devices and Hull refuses them; run `hull install` or set it",
                        names(&lacking),
                        containerd_config::PRIVILEGED_OPTION
                    ),
                )
            }
        }
        Err(err) => Check::new("containerd config", Status::Warn, format!("{shown}: {err}")),
    }
}

/// Which backend (and, for QEMU, accelerator) `auto` or the configuration
/// picks on this host, and why.
pub fn check_choice(config: &Config, virtualization: Virtualization) -> Check {
    let detail = match Backend::select(config, virtualization) {
        Ok(Backend::Builtin) => {
            let why = match config.hypervisor {
                HypervisorKind::Auto => "auto: KVM with VT-x/AMD-V present".to_owned(),
                _ => "hypervisor = \"builtin\"".to_owned(),
            };
            let ids = match (config.vmm_uid, config.vmm_gid) {
                (Some(uid), Some(gid)) => format!("uid {uid} gid {gid}"),
                _ => format!("a uid and gid per sandbox from {}", config.vmm_id_base),
            };
            format!("built-in VMM hull-vmm ({why}), jailed in the sandbox directory as {ids}")
        }
        Ok(Backend::Qemu(accelerator)) => {
            let accelerator = match (config.accelerator, accelerator) {
                (Accelerator::Auto, ResolvedAccelerator::Kvm) => "KVM (auto: VT-x/AMD-V present)",
                (Accelerator::Auto, ResolvedAccelerator::Tcg) => {
                    "TCG (auto: no KVM that can boot Linux)"
                }
                (_, ResolvedAccelerator::Kvm) => "KVM (accelerator = \"kvm\")",
                (_, ResolvedAccelerator::Tcg) => "TCG (accelerator = \"tcg\")",
            };
            let why = match config.hypervisor {
                HypervisorKind::Auto => format!(
                    "auto: {}, so not the built-in VMM",
                    virtualization.describe()
                ),
                _ => "hypervisor = \"qemu\"".to_owned(),
            };
            format!("QEMU with {accelerator}; {why}")
        }
        Err(err) => return Check::new("hypervisor", Status::Fail, err.to_string()),
    };
    Check::new("hypervisor", Status::Ok, detail)
}

#[cfg(test)]
mod tests;
