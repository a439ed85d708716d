//! The VM a `hull-vmm` process runs: from quick flags or a TOML file.
//! Every key has a default where one makes sense; an unknown key is an error
//! that names it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::devices::virtio::net::{check_tap_name, MacAddress};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid VM configuration in {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("Invalid VM configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default)]
    pub machine: MachineConfig,
    pub boot: BootConfig,
    #[serde(default)]
    pub serial: SerialConfig,
    #[serde(default)]
    pub vsock: Option<VsockDeviceConfig>,
    /// virtio-blk devices, in order (`[[block]]`).
    #[serde(default)]
    pub block: Vec<BlockDeviceConfig>,
    /// Where hull-vmm confines itself once the VM is built (`crate::jail`).
    #[serde(default)]
    pub jail: Option<JailConfig>,
    /// virtio-net devices, in order (`[[net]]`).
    #[serde(default)]
    pub net: Vec<NetDeviceConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The guest is known to run under PVM (a PVM-aware kernel, or one of
    /// Hull's test payloads). Without it, hull-vmm refuses to boot on a PVM
    /// host instead of hanging in KVM's instruction emulator.
    pub pvm_capable: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpus: 1,
            memory_mib: 128,
            pvm_capable: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// An ELF vmlinux (PVH entry if it has the note) or a bzImage.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
}

pub fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=1".into()
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SerialConfig {
    /// Where the guest's serial output goes; none: discarded.
    pub log: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceConfig {
    pub guest_cid: u64,
    /// The hybrid-vsock Unix socket (`CONNECT <port>`).
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceConfig {
    /// A raw image file; its size in whole 512-byte sectors is the capacity.
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// The jail hull-vmm enters once it holds every host resource it needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The directory that becomes the VMM's root (the sandbox's directory).
    /// The sockets hull-vmm keeps using (vsock, API) must be inside it.
    pub root: PathBuf,
    /// The non-root user and group the VMM runs as from then on.
    pub uid: u32,
    pub gid: u32,
    /// A cgroup v2 directory the VMM moves itself into. The caller creates
    /// it (with its limits) and removes it.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetDeviceConfig {
    /// The host tap the device sends and receives on; created if it does not exist.
    pub tap: String,
    /// The guest's MAC address; see [`NetDeviceConfig::guest_mac`] for the default.
    #[serde(default, deserialize_with = "deserialize_mac")]
    pub mac: Option<MacAddress>,
}

impl NetDeviceConfig {
    /// The MAC address of the `index`-th net device (counting from 0): the configured one, or
    /// 02:00:00:00:00:01 for the first, ...:02 for the second, and so on.
    pub fn guest_mac(&self, index: usize) -> MacAddress {
        self.mac
            .unwrap_or_else(|| MacAddress::for_device_index(index))
    }
}

fn deserialize_mac<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<MacAddress>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

impl VmConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: VmConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.machine.vcpus == 0 || self.machine.vcpus > 32 {
            return Err(ConfigError::Invalid(format!(
                "vcpus = {} is outside 1..=32",
                self.machine.vcpus
            )));
        }
        if self.machine.memory_mib < 2 {
            return Err(ConfigError::Invalid(format!(
                "memory_mib = {} is too small",
                self.machine.memory_mib
            )));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 || vsock.guest_cid >= u32::MAX as u64 {
                return Err(ConfigError::Invalid(format!(
                    "vsock guest_cid = {} is reserved (use 3 or more)",
                    vsock.guest_cid
                )));
            }
        }
        let mut taps = HashSet::new();
        let mut macs = HashSet::new();
        for (index, net) in self.net.iter().enumerate() {
            check_tap_name(&net.tap).map_err(|e| ConfigError::Invalid(format!("net: {e}")))?;
            if !taps.insert(net.tap.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "net tap = {:?} is given twice: each net device needs a tap of its own",
                    net.tap
                )));
            }
            let mac = net.guest_mac(index);
            if !macs.insert(mac) {
                return Err(ConfigError::Invalid(format!(
                    "net tap = {:?}: MAC address {mac} is already another net device's",
                    net.tap
                )));
            }
        }
        if let Some(jail) = &self.jail {
            jail.validate()?;
        }
        Ok(())
    }
}

impl JailConfig {
    /// What can be checked without looking at the host; `crate::jail`
    /// checks the directories themselves.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.root.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "jail root = {} is not an absolute path",
                self.root.display()
            )));
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(ConfigError::Invalid(format!(
                "jail uid = {}, gid = {}: the jail drops root, give a non-root uid and gid",
                self.uid, self.gid
            )));
        }
        if let Some(cgroup) = self.cgroup.as_ref().filter(|c| !c.is_absolute()) {
            return Err(ConfigError::Invalid(format!(
                "jail cgroup = {} is not an absolute path",
                cgroup.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses() {
        let config = VmConfig::parse(
            r#"
            [machine]
            vcpus = 2
            memory_mib = 256
            pvm_capable = true
            [boot]
            kernel = "/k"
            initrd = "/i"
            cmdline = "console=ttyS0"
            [serial]
            log = "/tmp/console.log"
            [vsock]
            guest_cid = 3
            uds_path = "/run/v.sock"
            [[block]]
            path = "/img/root.raw"
            read_only = true
            [[block]]
            path = "/img/data.raw"
            [jail]
            root = "/run/hull/s1"
            uid = 1000
            gid = 1001
            cgroup = "/sys/fs/cgroup/hull/s1"
            [[net]]
            tap = "tap0"
            mac = "02:aa:bb:cc:dd:ee"
            [[net]]
            tap = "tap1"
            "#,
            Path::new("vm.toml"),
        )
        .unwrap();
        assert_eq!(config.machine.vcpus, 2);
        assert!(config.machine.pvm_capable);
        assert_eq!(config.boot.initrd, Some(PathBuf::from("/i")));
        assert_eq!(config.vsock.unwrap().guest_cid, 3);
        assert_eq!(
            config.block,
            vec![
                BlockDeviceConfig {
                    path: "/img/root.raw".into(),
                    read_only: true,
                },
                BlockDeviceConfig {
                    path: "/img/data.raw".into(),
                    read_only: false,
                },
            ]
        );
        let macs: Vec<String> = config
            .net
            .iter()
            .enumerate()
            .map(|(index, net)| format!("{} {}", net.tap, net.guest_mac(index)))
            .collect();
        assert_eq!(macs, ["tap0 02:aa:bb:cc:dd:ee", "tap1 02:00:00:00:00:02"]);
        assert_eq!(
            config.jail,
            Some(JailConfig {
                root: "/run/hull/s1".into(),
                uid: 1000,
                gid: 1001,
                cgroup: Some("/sys/fs/cgroup/hull/s1".into()),
            })
        );
    }

    #[test]
    fn jail_needs_an_absolute_root_and_a_non_root_user() {
        let parse = |jail: &str| {
            VmConfig::parse(
                &format!("[boot]\nkernel = \"/k\"\n[jail]\n{jail}"),
                Path::new("vm.toml"),
            )
        };
        let config = parse("root = \"/j\"\nuid = 1\ngid = 2\n").unwrap();
        assert_eq!(config.jail.unwrap().cgroup, None);
        for (jail, named) in [
            ("root = \"j\"\nuid = 1\ngid = 2\n", "root = j"),
            ("root = \"/j\"\nuid = 0\ngid = 2\n", "uid = 0"),
            ("root = \"/j\"\nuid = 1\ngid = 0\n", "gid = 0"),
            (
                "root = \"/j\"\nuid = 1\ngid = 2\ncgroup = \"c\"\n",
                "cgroup = c",
            ),
            ("root = \"/j\"\ngid = 2\n", "uid"),
            ("root = \"/j\"\nuid = 1\ngid = 2\nuser = 3\n", "user"),
        ] {
            let err = parse(jail).unwrap_err().to_string();
            assert!(err.contains(named), "{jail}: {err}");
        }
    }

    #[test]
    fn defaults_fill_the_rest() {
        let config = VmConfig::parse("[boot]\nkernel = \"/k\"\n", Path::new("vm.toml")).unwrap();
        assert_eq!(config.machine, MachineConfig::default());
        assert_eq!(config.boot.cmdline, default_cmdline());
        assert!(config.serial.log.is_none());
        assert!(config.block.is_empty());
        assert!(config.jail.is_none());
        assert!(config.net.is_empty());
    }

    #[test]
    fn net_entries_are_checked_and_errors_name_the_bad_value() {
        let parse = |net: &str| {
            VmConfig::parse(
                &format!("[boot]\nkernel = \"/k\"\n{net}"),
                Path::new("vm.toml"),
            )
            .map_err(|e| e.to_string())
        };
        let err = parse("[[net]]\nmac = \"02:00:00:00:00:01\"\n").unwrap_err();
        assert!(err.contains("tap"), "{err}");
        let err = parse("[[net]]\ntap = \"t0\"\nmac = \"02:00:00:00:00\"\n").unwrap_err();
        assert!(
            err.contains("\"02:00:00:00:00\"") && err.contains("MAC"),
            "{err}"
        );
        let err = parse("[[net]]\ntap = \"t0\"\nmac = \"03:00:00:00:00:01\"\n").unwrap_err();
        assert!(
            err.contains("03:00:00:00:00:01") && err.contains("multicast"),
            "{err}"
        );
        let err = parse("[[net]]\ntap = \"t0\"\nmtu = 9000\n").unwrap_err();
        assert!(err.contains("mtu"), "{err}");
        let err = parse("[[net]]\ntap = \"a/b\"\n").unwrap_err();
        assert!(err.contains("\"a/b\""), "{err}");
        let err = parse("[[net]]\ntap = \"sixteen-chars-xx\"\n").unwrap_err();
        assert!(err.contains("sixteen-chars-xx"), "{err}");
        let err = parse("[[net]]\ntap = \"t0\"\n[[net]]\ntap = \"t0\"\n").unwrap_err();
        assert!(err.contains("\"t0\" is given twice"), "{err}");
        // The second device's default MAC is the one the first was given.
        let err =
            parse("[[net]]\ntap = \"t0\"\nmac = \"02:00:00:00:00:02\"\n[[net]]\ntap = \"t1\"\n")
                .unwrap_err();
        assert!(
            err.contains("\"t1\"") && err.contains("02:00:00:00:00:02"),
            "{err}"
        );
        assert!(parse("[[net]]\ntap = \"t0\"\n[[net]]\ntap = \"t1\"\n").is_ok());
    }

    #[test]
    fn block_entries_need_a_path_and_know_their_keys() {
        let parse = |block: &str| {
            VmConfig::parse(
                &format!("[boot]\nkernel = \"/k\"\n[[block]]\n{block}"),
                Path::new("vm.toml"),
            )
        };
        let err = parse("read_only = true\n").unwrap_err().to_string();
        assert!(err.contains("path"), "{err}");
        let err = parse("path = \"/d\"\nreadonly = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("readonly"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = VmConfig::parse(
            "[boot]\nkernel = \"/k\"\nkernal = 1\n",
            Path::new("vm.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("kernal"), "{err}");
        let err = VmConfig::parse(
            "[machine]\nvcpus = 0\n[boot]\nkernel = \"/k\"\n",
            Path::new("vm.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("vcpus"), "{err}");
        let err = VmConfig::parse(
            "[boot]\nkernel = \"/k\"\n[vsock]\nguest_cid = 2\nuds_path = \"/v\"\n",
            Path::new("vm.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("guest_cid"), "{err}");
        assert!(VmConfig::parse("[machine]\nvcpus = 1\n", Path::new("vm.toml")).is_err());
    }
}
