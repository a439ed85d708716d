//! The VM a `hull-vmm` process runs: from quick flags or a TOML file.
//! Every key has a default where one makes sense; an unknown key is an error
//! that names it.

use std::collections::HashSet;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fs::{self, FsSettingError};
use crate::net::{check_tap_name, MacAddress};

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

/// The most vCPUs a VM gets.
pub const MAX_VCPUS: u8 = 32;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// virtio-fs devices, in order (`[[fs]]`), after the block devices.
    #[serde(default)]
    pub fs: Vec<FsDeviceConfig>,
    /// virtio-net devices, in order (`[[net]]`), after the fs devices.
    #[serde(default)]
    pub net: Vec<NetDeviceConfig>,
    /// Where hull-vmm confines itself once the VM is built (hull-vmm's `jail`).
    #[serde(default)]
    pub jail: Option<JailConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SerialConfig {
    /// Where the guest's serial output goes; none: discarded.
    pub log: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceConfig {
    pub guest_cid: u64,
    /// The hybrid-vsock Unix socket (`CONNECT <port>`).
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BlockDeviceConfig {
    /// A raw image file; its size in whole 512-byte sectors is the capacity.
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// The default size of each virtio-fs virtqueue. FUSE requests go up to 256 pages (1 MiB)
/// plus a few header descriptors, and Linux keeps a request's pages within the queue size
/// (`max_pages_limit` = queue size - 4): 512 is the smallest power of two that lets a whole
/// 1 MiB request fit, even as a plain descriptor chain. It costs the guest 13 KiB of ring per
/// queue. virtiofsd accepts up to 32768.
pub const DEFAULT_FS_QUEUE_SIZE: u16 = 512;

fn default_fs_queue_size() -> u16 {
    DEFAULT_FS_QUEUE_SIZE
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FsDeviceConfig {
    /// virtiofsd's vhost-user socket (`virtiofsd --socket-path`); virtiofsd must be
    /// listening on it when the VM starts.
    pub socket: PathBuf,
    /// The name the guest mounts the share by (`mount -t virtiofs TAG DIR`), 1 to 36 bytes.
    pub tag: String,
    /// The size of each virtqueue, a power of two from 2 to 32768.
    #[serde(default = "default_fs_queue_size")]
    pub queue_size: u16,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetDeviceConfig {
    /// The host tap the device sends and receives on, by name; created if it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Or a tap the caller opened, as the descriptor number hull-vmm inherited it under
    /// (3 or more). It must have been attached with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<RawFd>,
    /// The guest's MAC address; see [`NetDeviceConfig::guest_mac`] for the default.
    #[serde(
        default,
        deserialize_with = "deserialize_mac",
        serialize_with = "serialize_mac",
        skip_serializing_if = "Option::is_none"
    )]
    pub mac: Option<MacAddress>,
}

/// Where a net device's tap comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapSource<'a> {
    /// Opened (or created) by name.
    Name(&'a str),
    /// Already open, inherited as this descriptor.
    Fd(RawFd),
}

impl std::fmt::Display for TapSource<'_> {
    /// As the configuration file says it: `tap = "NAME"` or `fd = N`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TapSource::Name(name) => write!(f, "tap = {name:?}"),
            TapSource::Fd(fd) => write!(f, "fd = {fd}"),
        }
    }
}

impl NetDeviceConfig {
    /// A device on the tap called `name`.
    pub fn named(name: impl Into<String>, mac: Option<MacAddress>) -> Self {
        NetDeviceConfig {
            tap: Some(name.into()),
            fd: None,
            mac,
        }
    }

    /// A device on the open tap `fd`.
    pub fn passed(fd: RawFd, mac: Option<MacAddress>) -> Self {
        NetDeviceConfig {
            tap: None,
            fd: Some(fd),
            mac,
        }
    }

    /// The tap: by name or by descriptor, exactly one of them.
    pub fn source(&self) -> Result<TapSource<'_>, ConfigError> {
        match (&self.tap, self.fd) {
            (Some(name), None) => Ok(TapSource::Name(name)),
            (None, Some(fd)) => Ok(TapSource::Fd(fd)),
            (Some(name), Some(fd)) => Err(ConfigError::Invalid(format!(
                "net tap = {name:?} and fd = {fd}: give one of them, not both"
            ))),
            (None, None) => Err(ConfigError::Invalid(
                "net: a device needs its tap, by name (tap = \"NAME\") or as an open descriptor (fd = N)".into(),
            )),
        }
    }

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

fn serialize_mac<S: Serializer>(
    mac: &Option<MacAddress>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match mac {
        Some(mac) => serializer.serialize_str(&mac.to_string()),
        None => serializer.serialize_none(),
    }
}

/// The jail hull-vmm enters once it holds every host resource it needs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

impl VmConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: VmConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_error_message(text, &e),
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
        if self.machine.vcpus == 0 || self.machine.vcpus > MAX_VCPUS {
            return Err(ConfigError::Invalid(format!(
                "vcpus = {} is outside 1..={MAX_VCPUS}",
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
            let source = net.source()?;
            match source {
                TapSource::Name(name) => {
                    check_tap_name(name).map_err(|e| ConfigError::Invalid(format!("net: {e}")))?
                }
                TapSource::Fd(fd) if fd < 3 => {
                    return Err(ConfigError::Invalid(format!(
                        "net fd = {fd}: descriptors 0, 1 and 2 are hull-vmm's standard input, output and error; pass the tap as 3 or above"
                    )))
                }
                TapSource::Fd(_) => {}
            }
            if !taps.insert(source) {
                return Err(ConfigError::Invalid(format!(
                    "net {source} is given twice: each net device needs a tap of its own"
                )));
            }
            let mac = net.guest_mac(index);
            if !macs.insert(mac) {
                return Err(ConfigError::Invalid(format!(
                    "net {source}: MAC address {mac} is already another net device's"
                )));
            }
        }
        if let Some(jail) = &self.jail {
            jail.validate()?;
        }
        self.validate_fs()
    }

    fn validate_fs(&self) -> Result<(), ConfigError> {
        for (index, device) in self.fs.iter().enumerate() {
            let invalid = |e: FsSettingError| {
                ConfigError::Invalid(format!("fs socket {}: {e}", device.socket.display()))
            };
            fs::validate_tag(&device.tag).map_err(invalid)?;
            fs::validate_queue_size(device.queue_size).map_err(invalid)?;
            for earlier in &self.fs[..index] {
                if earlier.tag == device.tag {
                    return Err(ConfigError::Invalid(format!(
                        "fs tag {:?} is used twice: the guest could mount only one of them",
                        device.tag
                    )));
                }
                if earlier.socket == device.socket {
                    return Err(ConfigError::Invalid(format!(
                        "fs socket {} is used twice: a virtiofsd serves one device",
                        device.socket.display()
                    )));
                }
            }
        }
        Ok(())
    }
}

impl JailConfig {
    /// What can be checked without looking at the host; hull-vmm's `jail`
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

/// The parser's message, after the line it points at: a bad value's message names only the
/// type it expected, the line shows which key it was.
fn parse_error_message(text: &str, error: &toml::de::Error) -> String {
    let Some(before) = error.span().and_then(|span| text.get(..span.start)) else {
        return error.message().to_owned();
    };
    let number = before.matches('\n').count() + 1;
    let line = text.lines().nth(number - 1).unwrap_or_default().trim();
    format!("line {number} (`{line}`): {}", error.message())
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
            [[fs]]
            socket = "/run/hull/s1/virtiofsd.sock"
            tag = "hullfs"
            [[fs]]
            socket = "/run/hull/s1/data.sock"
            tag = "data"
            queue_size = 1024
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
            [[net]]
            fd = 3
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
        assert_eq!(
            config.fs,
            vec![
                FsDeviceConfig {
                    socket: "/run/hull/s1/virtiofsd.sock".into(),
                    tag: "hullfs".into(),
                    queue_size: DEFAULT_FS_QUEUE_SIZE,
                },
                FsDeviceConfig {
                    socket: "/run/hull/s1/data.sock".into(),
                    tag: "data".into(),
                    queue_size: 1024,
                },
            ]
        );
        assert_eq!(DEFAULT_FS_QUEUE_SIZE, 512);
        let macs: Vec<String> = config
            .net
            .iter()
            .enumerate()
            .map(|(index, net)| format!("{} {}", net.source().unwrap(), net.guest_mac(index)))
            .collect();
        assert_eq!(
            macs,
            [
                "tap = \"tap0\" 02:aa:bb:cc:dd:ee",
                "tap = \"tap1\" 02:00:00:00:00:02",
                "fd = 3 02:00:00:00:00:03"
            ]
        );
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
        assert!(config.fs.is_empty());
        assert!(config.jail.is_none());
        assert!(config.net.is_empty());
    }

    #[test]
    fn fs_entries_are_checked_and_bad_values_named() {
        let parse = |fs: &str| {
            VmConfig::parse(
                &format!("[boot]\nkernel = \"/k\"\n{fs}"),
                Path::new("vm.toml"),
            )
        };
        let entry =
            |socket: &str, tag: &str| format!("[[fs]]\nsocket = \"{socket}\"\ntag = \"{tag}\"\n");
        assert!(parse(&entry("/a.sock", &"t".repeat(36))).is_ok());

        let long = "t".repeat(37);
        let err = parse(&entry("/a.sock", &long)).unwrap_err().to_string();
        assert!(err.contains(&long) && err.contains("/a.sock"), "{err}");
        let err = parse(&entry("/a.sock", "")).unwrap_err().to_string();
        assert!(err.contains("tag \"\"") && err.contains("1 to 36"), "{err}");

        let err = parse(&format!("{}queue_size = 500\n", entry("/a.sock", "a")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("500"), "{err}");
        let err = parse(&format!("{}queue_size = 70000\n", entry("/a.sock", "a")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 6 (`queue_size = 70000`)") && err.contains("u16"),
            "{err}"
        );

        let err = parse("[[fs]]\ntag = \"a\"\n").unwrap_err().to_string();
        assert!(err.contains("socket"), "{err}");
        let err = parse("[[fs]]\nsocket = \"/a.sock\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tag"), "{err}");
        let err = parse(&format!("{}cache = \"never\"\n", entry("/a.sock", "a")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache"), "{err}");

        let twice = format!("{}{}", entry("/a.sock", "same"), entry("/b.sock", "same"));
        let err = parse(&twice).unwrap_err().to_string();
        assert!(err.contains("\"same\"") && err.contains("twice"), "{err}");
        let twice = format!("{}{}", entry("/a.sock", "one"), entry("/a.sock", "two"));
        let err = parse(&twice).unwrap_err().to_string();
        assert!(err.contains("/a.sock") && err.contains("twice"), "{err}");
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
    fn a_net_device_takes_a_tap_by_name_or_an_open_descriptor_never_both() {
        let parse = |net: &str| {
            VmConfig::parse(
                &format!("[boot]\nkernel = \"/k\"\n{net}"),
                Path::new("vm.toml"),
            )
            .map_err(|e| e.to_string())
        };
        let config =
            parse("[[net]]\nfd = 3\nmac = \"02:00:00:00:00:09\"\n[[net]]\nfd = 4\n").unwrap();
        assert_eq!(
            config.net,
            vec![
                NetDeviceConfig::passed(3, Some("02:00:00:00:00:09".parse().unwrap())),
                NetDeviceConfig::passed(4, None),
            ]
        );
        assert_eq!(config.net[1].source().unwrap(), TapSource::Fd(4));
        let err = parse("[[net]]\ntap = \"t0\"\nfd = 3\n").unwrap_err();
        assert!(
            err.contains("tap = \"t0\" and fd = 3") && err.contains("not both"),
            "{err}"
        );
        let err = parse("[[net]]\n").unwrap_err();
        assert!(
            err.contains("tap = \"NAME\"") && err.contains("fd = N"),
            "{err}"
        );
        for stdio in 0..3 {
            let err = parse(&format!("[[net]]\nfd = {stdio}\n")).unwrap_err();
            assert!(err.contains(&format!("fd = {stdio}")), "{err}");
            assert!(err.contains("3 or above"), "{err}");
        }
        let err = parse("[[net]]\nfd = -1\n").unwrap_err();
        assert!(err.contains("fd = -1"), "{err}");
        let err = parse("[[net]]\nfd = 3\n[[net]]\nfd = 3\n").unwrap_err();
        assert!(err.contains("fd = 3 is given twice"), "{err}");
        let err = parse("[[net]]\nfd = \"3\"\n").unwrap_err();
        assert!(err.contains("fd = \"3\""), "{err}");
    }

    /// Every field set, and every optional one left out: what the shim writes for hull-vmm
    /// must read back as the same configuration.
    #[test]
    fn a_serialized_config_parses_back_to_itself() {
        let full = VmConfig {
            machine: MachineConfig {
                vcpus: 4,
                memory_mib: 512,
                pvm_capable: true,
            },
            boot: BootConfig {
                kernel: "/usr/local/share/hull/vmlinux".into(),
                initrd: Some("/usr/local/share/hull/hull-initrd.img".into()),
                cmdline: "console=ttyS0 quiet \"quoted\" panic=-1".into(),
            },
            serial: SerialConfig {
                log: Some("/run/hull/s1/console.log".into()),
            },
            vsock: Some(VsockDeviceConfig {
                guest_cid: 3,
                uds_path: "/run/hull/s1/vsock.sock".into(),
            }),
            block: vec![BlockDeviceConfig {
                path: "/img/a.raw".into(),
                read_only: true,
            }],
            fs: vec![FsDeviceConfig {
                socket: "/run/hull/s1/virtiofsd.sock".into(),
                tag: "hull".into(),
                queue_size: 1024,
            }],
            net: vec![
                NetDeviceConfig::passed(3, Some("02:42:ac:11:00:0a".parse().unwrap())),
                NetDeviceConfig::named("tap1", None),
            ],
            jail: Some(JailConfig {
                root: "/run/hull/s1".into(),
                uid: 65534,
                gid: 65533,
                cgroup: Some("/sys/fs/cgroup/hull/s1".into()),
            }),
        };
        let minimal = VmConfig {
            machine: MachineConfig::default(),
            boot: BootConfig {
                kernel: "/k".into(),
                initrd: None,
                cmdline: default_cmdline(),
            },
            serial: SerialConfig::default(),
            vsock: None,
            block: Vec::new(),
            fs: Vec::new(),
            net: Vec::new(),
            jail: None,
        };
        for config in [full, minimal] {
            let text = toml::to_string(&config).unwrap();
            assert_eq!(
                VmConfig::parse(&text, Path::new("vm.toml")).unwrap(),
                config,
                "{text}"
            );
        }
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
