//! `/etc/hull/config.toml`: every key has a default, and an unknown key is an
//! error that names it. See docs/configuration.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the configuration is read from unless HULL_CONFIG says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hull/config.toml";
/// Install prefix of the guest assets.
pub const DEFAULT_ASSET_DIR: &str = "/usr/local/share/hull";
/// The most vCPUs a Hull VM gets.
pub const MAX_VCPUS: u32 = 64;
/// How many uids and gids virtiofsd's user namespace maps (guest ids
/// `0..SHARE_ID_COUNT`).
pub const SHARE_ID_COUNT: u32 = (1 << 30) - (1 << 16);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid configuration in {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorKind {
    /// The built-in VMM on hosts with hardware virtualization, else QEMU.
    #[default]
    Auto,
    Qemu,
    /// hull-vmm, Hull's own KVM VMM; needs VT-x/AMD-V.
    Builtin,
}

/// Whether virtiofsd runs unprivileged, as the root of a user namespace
/// that maps the share's ids (which needs id-mapped mounts: Linux 6.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UserNamespaceMode {
    /// Where the kernel can id-map the share's mounts.
    #[default]
    Auto,
    /// Always; a sandbox fails to start where the kernel cannot.
    On,
    /// Never: virtiofsd runs as root, still in its own namespaces, under
    /// seccomp and with fewer capabilities.
    Off,
}

/// QEMU's accelerator; the built-in VMM always runs on KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// KVM where it can boot an ordinary Linux guest, else TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub hypervisor: HypervisorKind,
    pub accelerator: Accelerator,
    /// Uncompressed guest kernel (vmlinux, PVH entry).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Size of a VM whose pod (or container) states no limits.
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Added to a pod's memory limit (sum of its containers') for the guest
    /// kernel, the agent and the page cache.
    pub pod_memory_overhead_mib: u32,
    /// Added to a pod's CPU limit, rounded up to whole vCPUs.
    pub pod_vcpus_overhead: u32,
    /// Appended to Hull's own kernel command line.
    pub kernel_params: String,
    /// How long to wait for the guest agent to answer after the VM starts
    /// (one deadline for the whole boot; waiting for a boot slot is not
    /// counted).
    pub agent_timeout_secs: u64,
    /// How often a running sandbox's agent is asked whether it is alive; 0:
    /// never (a hung guest then goes unnoticed).
    pub health_check_interval_secs: u64,
    /// How long the agent has to answer one health check before the
    /// sandbox is stopped as hung.
    pub health_check_timeout_secs: u64,
    /// How many VMs may boot at once on this host, across all sandboxes; 0:
    /// one per CPU.
    pub max_parallel_boots: u32,
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    /// The built-in VMM's binary (`hypervisor = "builtin"`).
    pub vmm: PathBuf,
    /// The non-root user and group every sandbox's VMM (hull-vmm or QEMU)
    /// and vsock backend run as once jailed. Unset (the default): a uid and
    /// gid per sandbox, leased from `vmm_id_base`.
    pub vmm_uid: Option<u32>,
    pub vmm_gid: Option<u32>,
    /// The first of the host ids leased to sandboxes' VMMs, one per live
    /// sandbox (`sandbox::vmm_ids`); the next 65536 ids must not belong to
    /// anyone on the host.
    pub vmm_id_base: u32,
    /// The cgroup, in each cgroup hierarchy of the host, under which every
    /// sandbox gets one of its own (`<hierarchy>/<cgroup_parent>/<sandbox-id>`)
    /// holding its VMM, virtiofsd and vsock backend.
    pub cgroup_parent: String,
    /// Host memory a sandbox's processes may use beyond the VM's RAM (the
    /// VMM's own memory, virtiofsd, the vsock backend).
    pub sandbox_memory_overhead_mib: u32,
    /// Host CPU a sandbox's processes may use beyond one CPU per vCPU, in
    /// thousandths of a CPU.
    pub sandbox_cpu_overhead_millicpus: u32,
    /// The size at which a sandbox's console and virtiofsd logs are rotated
    /// (each keeps at most twice this).
    pub log_max_kib: u64,
    /// Whether virtiofsd runs as an unprivileged user (see
    /// `UserNamespaceMode`).
    pub virtiofsd_user_namespace: UserNamespaceMode,
    /// The host uid and gid that uid and gid 0 of virtiofsd's user namespace
    /// map to; `SHARE_ID_COUNT` ids from there must not be used on the host.
    pub virtiofsd_id_base: u32,
    /// Where per-sandbox state lives (`<state_dir>/<sandbox-id>/`).
    pub state_dir: PathBuf,
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hypervisor: HypervisorKind::Auto,
            accelerator: Accelerator::Auto,
            kernel: Path::new(DEFAULT_ASSET_DIR).join("vmlinux"),
            initrd: Path::new(DEFAULT_ASSET_DIR).join("hull-initrd.img"),
            vcpus: 1,
            memory_mib: 256,
            pod_memory_overhead_mib: 128,
            pod_vcpus_overhead: 0,
            kernel_params: String::new(),
            agent_timeout_secs: 30,
            health_check_interval_secs: 10,
            health_check_timeout_secs: 30,
            max_parallel_boots: 0,
            qemu: PathBuf::from("qemu-system-x86_64"),
            virtiofsd: PathBuf::from("virtiofsd"),
            vmm: PathBuf::from("hull-vmm"),
            vmm_uid: None,
            vmm_gid: None,
            // The 65536 ids below 2^31: above it, tools print negative uids.
            vmm_id_base: (1 << 31) - (1 << 16),
            cgroup_parent: "hull".into(),
            sandbox_memory_overhead_mib: 128,
            sandbox_cpu_overhead_millicpus: 250,
            log_max_kib: 2048,
            virtiofsd_user_namespace: UserNamespaceMode::Auto,
            virtiofsd_id_base: 1 << 30,
            state_dir: PathBuf::from("/run/hull"),
            log_level: "info".into(),
        }
    }
}

impl Config {
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: match e.span() {
                // Where it went wrong, as an editor counts lines.
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {}", e.message().trim().replace('\n', "; "))
                }
                None => e.message().to_owned(),
            },
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(invalid(format!(
                "vcpus = {} is outside 1..={MAX_VCPUS}",
                self.vcpus
            )));
        }
        if self.pod_vcpus_overhead > MAX_VCPUS {
            return Err(invalid(format!(
                "pod_vcpus_overhead = {} is above {MAX_VCPUS}",
                self.pod_vcpus_overhead
            )));
        }
        if self.memory_mib < 64 {
            return Err(invalid(format!(
                "memory_mib = {} is below the 64 MiB a guest needs",
                self.memory_mib
            )));
        }
        if self.agent_timeout_secs == 0 {
            return Err(invalid("agent_timeout_secs must be at least 1".into()));
        }
        if self.health_check_timeout_secs == 0 {
            return Err(invalid(
                "health_check_timeout_secs must be at least 1".into(),
            ));
        }
        for (key, id) in [("vmm_uid", self.vmm_uid), ("vmm_gid", self.vmm_gid)] {
            if id == Some(0) {
                return Err(invalid(format!(
                    "{key} = 0: the VMM drops root in its jail, give a non-root id (or leave it unset: an id per sandbox)"
                )));
            }
        }
        if self.vmm_uid.is_some() != self.vmm_gid.is_some() {
            return Err(invalid(
                "vmm_uid and vmm_gid go together: set both, or neither (an id per sandbox)".into(),
            ));
        }
        let id_ranges = [
            (
                "vmm_id_base",
                self.vmm_id_base,
                crate::sandbox::VMM_ID_COUNT,
            ),
            ("virtiofsd_id_base", self.virtiofsd_id_base, SHARE_ID_COUNT),
        ];
        if self.vmm_id_base == 0
            || self
                .vmm_id_base
                .checked_add(crate::sandbox::VMM_ID_COUNT)
                .is_none()
        {
            return Err(invalid(format!(
                "vmm_id_base = {} must be above 0 and leave {} ids below 2^32",
                self.vmm_id_base,
                crate::sandbox::VMM_ID_COUNT
            )));
        }
        let [(_, a, a_count), (_, b, b_count)] = id_ranges;
        if a < b.saturating_add(b_count) && b < a.saturating_add(a_count) {
            return Err(invalid(format!(
                "vmm_id_base = {a} and virtiofsd_id_base = {b}: their id ranges ({a_count} and {b_count} ids) overlap"
            )));
        }
        if crate::ids::validate("cgroup_parent", &self.cgroup_parent).is_err() {
            return Err(invalid(format!(
                "cgroup_parent = {:?} must be one cgroup name (letters, digits, '.', '_', '-')",
                self.cgroup_parent
            )));
        }
        if self.virtiofsd_id_base == 0
            || self.virtiofsd_id_base.checked_add(SHARE_ID_COUNT).is_none()
        {
            return Err(invalid(format!(
                "virtiofsd_id_base = {} must be above 0 and leave {SHARE_ID_COUNT} ids below 2^32",
                self.virtiofsd_id_base
            )));
        }
        if self.log_max_kib == 0 {
            return Err(invalid("log_max_kib must be at least 1".into()));
        }
        Ok(())
    }

    /// Loads the configuration from `path`, or from HULL_CONFIG, or from
    /// /etc/hull/config.toml; a missing default file means all defaults, a
    /// missing file that was asked for is an error.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let from_env = std::env::var_os("HULL_CONFIG").map(PathBuf::from);
        let (path, required) = match path.map(Path::to_owned).or(from_env) {
            Some(path) => (path, true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path),
            Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.agent_timeout_secs)
    }

    /// How often, and with what deadline, a running sandbox's agent is
    /// checked; `None`: never.
    pub fn health_check(&self) -> Option<(Duration, Duration)> {
        (self.health_check_interval_secs > 0).then(|| {
            (
                Duration::from_secs(self.health_check_interval_secs),
                Duration::from_secs(self.health_check_timeout_secs),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(
            Config::parse("", Path::new("c")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn keys_override_defaults() {
        let config = Config::parse(
            "accelerator = \"tcg\"\nmemory_mib = 512\nkernel = \"/k\"\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(config.accelerator, Accelerator::Tcg);
        assert_eq!(config.memory_mib, 512);
        assert_eq!(config.kernel, PathBuf::from("/k"));
        assert_eq!(config.vcpus, 1);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("memroy_mib = 512\n", Path::new("/etc/hull/config.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("memroy_mib"), "{err}");
        assert!(err.contains("/etc/hull/config.toml"), "{err}");
    }

    #[test]
    fn a_corrupt_file_names_the_line() {
        let err = Config::parse(
            "vcpus = 2\nmemory_mib = ]\nkernel = \"/k\"\n",
            Path::new("/etc/hull/config.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/hull/config.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        for text in ["vcpus = 0", "memory_mib = 16", "accelerator = \"hvf\""] {
            assert!(Config::parse(text, Path::new("c")).is_err(), "{text}");
        }
    }

    #[test]
    fn builtin_vmm_keys() {
        let config = Config::parse("", Path::new("c")).unwrap();
        assert_eq!(config.hypervisor, HypervisorKind::Auto);
        assert_eq!(config.vmm, PathBuf::from("hull-vmm"));
        assert_eq!((config.vmm_uid, config.vmm_gid), (None, None));
        assert_eq!(config.cgroup_parent, "hull");
        let config = Config::parse(
            "hypervisor = \"builtin\"\nvmm = \"/opt/hull/bin/hull-vmm\"\nvmm_uid = 1000\nvmm_gid = 1001\ncgroup_parent = \"pods.hull\"\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(config.hypervisor, HypervisorKind::Builtin);
        assert_eq!(config.vmm, PathBuf::from("/opt/hull/bin/hull-vmm"));
        assert_eq!((config.vmm_uid, config.vmm_gid), (Some(1000), Some(1001)));
        assert_eq!(config.cgroup_parent, "pods.hull");
        for (text, named) in [
            ("vmm_uid = 0", "vmm_uid = 0"),
            ("vmm_gid = 0", "vmm_gid = 0"),
            ("vmm_uid = 5", "go together"),
            ("vmm_id_base = 1073741824", "overlap"),
            ("cgroup_parent = \"../x\"", "cgroup_parent = \"../x\""),
            ("log_max_kib = 0", "log_max_kib"),
            ("hypervisor = \"firecracker\"", "firecracker"),
            ("vmm_user = 5", "vmm_user"),
        ] {
            let err = Config::parse(text, Path::new("c")).unwrap_err().to_string();
            assert!(err.contains(named), "{text}: {err}");
        }
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/hull.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/hull.toml"));
    }
}
