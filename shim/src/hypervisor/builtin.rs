//! hull-vmm, Hull's own KVM VMM, as a backend (`hypervisor = "builtin"`).
//!
//! The VM is described in hull-vmm's own configuration schema
//! (`hull_vmm_api::config::VmConfig`), written as TOML into the sandbox's state
//! directory, and hull-vmm runs as a child of the shim (`--config FILE`, its
//! stdout and stderr the console log's pipe, dying with the shim, in the
//! sandbox's cgroups from its first instruction). Once it holds every host
//! resource it jails itself: the sandbox's state directory becomes its
//! root, and it runs as a non-root uid/gid (see docs/vmm.md, "Jail").
//!
//! Devices:
//! - the serial console, on its stdout (the console log's pipe);
//! - virtio-vsock, served by hull-vmm in process on the sandbox's
//!   hybrid-vsock socket, the one the agent client connects to (so, unlike
//!   QEMU, no vhost-user vsock backend in the shim). It is inside the jail
//!   directory, as hull-vmm requires of the sockets it keeps using, and is
//!   bound while hull-vmm is still root, so the shim can connect to it;
//! - virtio-fs, a vhost-user frontend to the sandbox's virtiofsd, connected
//!   before the jail;
//! - virtio-net on a pod's tap, which lives in the pod's network namespace:
//!   the shim's open descriptor is passed as [`TAP_FD`] (`[[net]] fd = 3`).

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hull_vmm_api::config as vmm;
use hull_vmm_api::net::MacAddress;
use tokio::sync::watch;

use super::process::VmmProcess;
use super::{Hypervisor, HypervisorError, VmExit, VmParams, VmmHost};

/// The descriptor number hull-vmm finds the pod's tap at.
pub const TAP_FD: RawFd = 3;

/// Where and as whom hull-vmm confines itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmJail {
    /// Becomes hull-vmm's root: the sandbox's state directory, which holds
    /// the hybrid-vsock socket.
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

pub struct Builtin {
    binary: PathBuf,
    /// Where the VM's configuration is written.
    config_file: PathBuf,
    jail: VmmJail,
    process: VmmProcess,
}

impl Builtin {
    pub fn new(binary: impl Into<PathBuf>, config_file: impl Into<PathBuf>, jail: VmmJail) -> Self {
        Builtin {
            binary: binary.into(),
            config_file: config_file.into(),
            jail,
            process: VmmProcess::default(),
        }
    }

    /// hull-vmm's vCPU count for `vcpus`, or why it cannot run that many.
    pub fn check_vcpus(vcpus: u32) -> Result<u8, HypervisorError> {
        u8::try_from(vcpus)
            .ok()
            .filter(|&n| (1..=vmm::MAX_VCPUS).contains(&n))
            .ok_or(HypervisorError::TooManyVcpus {
                vcpus,
                max: vmm::MAX_VCPUS,
            })
    }

    /// hull-vmm's configuration for `config` (no side effects, so tests see it).
    pub fn vm_config(&self, config: &VmParams) -> Result<vmm::VmConfig, HypervisorError> {
        let invalid = |message: String| HypervisorError::VmmConfig {
            path: self.config_file.clone(),
            message,
        };
        let net = match &config.net {
            Some(net) => {
                let mac: MacAddress = net
                    .mac
                    .parse()
                    .map_err(|e| invalid(format!("the pod's MAC address: {e}")))?;
                vec![vmm::NetDeviceConfig::passed(TAP_FD, Some(mac))]
            }
            None => Vec::new(),
        };
        let vm = vmm::VmConfig {
            machine: vmm::MachineConfig {
                vcpus: Self::check_vcpus(config.vcpus)?,
                memory_mib: config.memory_mib,
                // Hull's guest is an ordinary Linux kernel: hull-vmm refuses
                // to start it on PVM rather than hang.
                pvm_capable: false,
            },
            boot: vmm::BootConfig {
                kernel: config.kernel.clone(),
                initrd: Some(config.initrd.clone()),
                cmdline: config.cmdline.clone(),
            },
            // hull-vmm opens it before its jail: its stdout, the log's pipe.
            serial: vmm::SerialConfig {
                log: Some(SERIAL_TO_STDOUT.into()),
            },
            vsock: Some(vmm::VsockDeviceConfig {
                guest_cid: config.guest_cid,
                uds_path: config.vsock_uds.clone(),
            }),
            block: Vec::new(),
            fs: vec![vmm::FsDeviceConfig {
                socket: config.fs_socket.clone(),
                tag: config.fs_tag.clone(),
                queue_size: vmm::DEFAULT_FS_QUEUE_SIZE,
            }],
            net,
            jail: Some(vmm::JailConfig {
                root: self.jail.root.clone(),
                uid: self.jail.uid,
                gid: self.jail.gid,
                // The shim moves hull-vmm into the sandbox's cgroups itself.
                cgroup: None,
            }),
        };
        vm.validate().map_err(|e| invalid(e.to_string()))?;
        Ok(vm)
    }

    fn write_config(&self, vm: &vmm::VmConfig) -> Result<(), HypervisorError> {
        let failed = |message: String| HypervisorError::VmmConfig {
            path: self.config_file.clone(),
            message,
        };
        let text = toml::to_string(vm).map_err(|e| failed(e.to_string()))?;
        std::fs::write(&self.config_file, text).map_err(|e| failed(e.to_string()))
    }
}

/// Where hull-vmm writes the guest's serial console: its standard output.
const SERIAL_TO_STDOUT: &str = "/dev/stdout";

#[async_trait]
impl Hypervisor for Builtin {
    async fn start(&mut self, config: &VmParams, host: VmmHost) -> Result<(), HypervisorError> {
        let vm = self.vm_config(config)?;
        self.write_config(&vm)?;
        let fds: Vec<_> = config.net.iter().map(|net| (net.tap_fd, TAP_FD)).collect();
        let args = [
            "--config".to_owned(),
            self.config_file.display().to_string(),
        ];
        self.process.spawn(&self.binary, &args, &host, fds)
    }

    async fn stop(&mut self, grace: Duration) -> Result<VmExit, HypervisorError> {
        Ok(self.process.stop(grace).await)
    }

    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.process.exit_watch()
    }

    fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    fn killer(&self) -> Option<super::VmmKiller> {
        self.process.killer()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::super::NetDevice;
    use super::*;

    fn vm_config(dir: &Path, net: Option<NetDevice>) -> VmParams {
        VmParams {
            kernel: "/usr/local/share/hull/vmlinux".into(),
            initrd: "/usr/local/share/hull/hull-initrd.img".into(),
            cmdline: "console=ttyS0 quiet panic=-1 pci=off".into(),
            vcpus: 2,
            memory_mib: 384,
            vsock_uds: dir.join("vsock.sock"),
            guest_cid: 3,
            fs_socket: dir.join("virtiofsd.sock"),
            fs_tag: "hull".into(),
            console_log: dir.join("console.log"),
            net,
        }
    }

    fn jail(dir: &Path) -> VmmJail {
        VmmJail {
            root: dir.to_owned(),
            uid: 65534,
            gid: 65533,
        }
    }

    #[test]
    fn the_vm_config_carries_every_device_and_the_jail() {
        let dir = Path::new("/run/hull/s1");
        let builtin = Builtin::new("hull-vmm", dir.join("vmm.toml"), jail(dir));
        let config = vm_config(
            dir,
            Some(NetDevice {
                tap_fd: 17,
                mac: "02:42:ac:11:00:0a".into(),
            }),
        );
        let expected = vmm::VmConfig {
            machine: vmm::MachineConfig {
                vcpus: 2,
                memory_mib: 384,
                pvm_capable: false,
            },
            boot: vmm::BootConfig {
                kernel: "/usr/local/share/hull/vmlinux".into(),
                initrd: Some("/usr/local/share/hull/hull-initrd.img".into()),
                cmdline: "console=ttyS0 quiet panic=-1 pci=off".into(),
            },
            serial: vmm::SerialConfig {
                log: Some("/dev/stdout".into()),
            },
            vsock: Some(vmm::VsockDeviceConfig {
                guest_cid: 3,
                uds_path: "/run/hull/s1/vsock.sock".into(),
            }),
            block: Vec::new(),
            fs: vec![vmm::FsDeviceConfig {
                socket: "/run/hull/s1/virtiofsd.sock".into(),
                tag: "hull".into(),
                queue_size: 512,
            }],
            // The shim's descriptor (17) reaches hull-vmm as 3.
            net: vec![vmm::NetDeviceConfig::passed(
                3,
                Some("02:42:ac:11:00:0a".parse().unwrap()),
            )],
            jail: Some(vmm::JailConfig {
                root: "/run/hull/s1".into(),
                uid: 65534,
                gid: 65533,
                cgroup: None,
            }),
        };
        let vm = builtin.vm_config(&config).unwrap();
        assert_eq!(vm, expected);
        // What is written is hull-vmm's own schema: it reads back the same.
        let text = toml::to_string(&vm).unwrap();
        assert_eq!(
            vmm::VmConfig::parse(&text, Path::new("vmm.toml")).unwrap(),
            expected,
            "{text}"
        );
        assert!(text.contains("[[net]]\nfd = 3\n"), "{text}");
    }

    #[test]
    fn without_a_pod_network_there_is_no_net_device() {
        let dir = Path::new("/run/hull/s2");
        let builtin = Builtin::new("hull-vmm", dir.join("vmm.toml"), jail(dir));
        let vm = builtin.vm_config(&vm_config(dir, None)).unwrap();
        assert!(vm.net.is_empty());
        assert_eq!(vm.jail.as_ref().unwrap().cgroup, None);
        let text = toml::to_string(&vm).unwrap();
        assert!(
            !text.contains("[[net]]") && !text.contains("cgroup"),
            "{text}"
        );
        assert_eq!(vmm::VmConfig::parse(&text, Path::new("v")).unwrap(), vm);
    }

    #[test]
    fn what_hull_vmm_cannot_take_is_refused_by_name() {
        let dir = Path::new("/run/hull/s3");
        let builtin = Builtin::new("hull-vmm", dir.join("vmm.toml"), jail(dir));
        let mut config = vm_config(dir, None);
        config.vcpus = 33;
        let err = builtin.vm_config(&config).unwrap_err().to_string();
        assert!(err.contains("at most 32") && err.contains("33"), "{err}");
        assert!(err.contains("hypervisor = \"qemu\""), "{err}");
        assert!(Builtin::check_vcpus(0).is_err());
        assert_eq!(Builtin::check_vcpus(32).unwrap(), 32);
        assert!(Builtin::check_vcpus(300).is_err());

        let config = vm_config(
            dir,
            Some(NetDevice {
                tap_fd: 9,
                mac: "01:00:5e:00:00:01".into(),
            }),
        );
        let err = builtin.vm_config(&config).unwrap_err().to_string();
        assert!(err.contains("01:00:5e:00:00:01"), "{err}");
        assert!(err.contains("/run/hull/s3/vmm.toml"), "{err}");

        let root = Builtin::new(
            "hull-vmm",
            dir.join("vmm.toml"),
            VmmJail {
                uid: 0,
                ..jail(dir)
            },
        );
        let err = root
            .vm_config(&vm_config(dir, None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("uid = 0"), "{err}");
    }

    /// A stand-in for hull-vmm that reports, on its stderr (the console log),
    /// its arguments, what its descriptors 1 and 3 are, and the file it was
    /// given.
    const FAKE_VMM: &str = "#!/bin/sh\n\
        echo \"args: $*\" >&2\n\
        echo \"fd3: $(readlink /proc/self/fd/3)\" >&2\n\
        echo \"stdout is $(readlink /proc/self/fd/1)\"\n\
        cat \"$2\" >&2\n";

    async fn console(dir: &Path) -> (VmmHost, tokio::task::JoinHandle<std::io::Result<u64>>) {
        let log = crate::sandbox::capped_log(&dir.join("console.log"), 1 << 20).unwrap();
        let host = VmmHost {
            console: log.writer,
            cgroup_procs: Vec::new(),
        };
        (host, log.copier)
    }

    #[tokio::test]
    async fn start_writes_the_config_passes_the_tap_as_fd_3_and_the_console_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("hull-vmm");
        std::fs::write(&binary, FAKE_VMM).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tap = dir.path().join("tap");
        let tap_file = std::fs::File::create(&tap).unwrap();
        let config_file = dir.path().join("vmm.toml");
        let mut builtin = Builtin::new(&binary, &config_file, jail(dir.path()));
        let config = vm_config(
            dir.path(),
            Some(NetDevice {
                tap_fd: tap_file.as_raw_fd(),
                mac: "02:00:00:00:00:07".into(),
            }),
        );
        let (host, copier) = console(dir.path()).await;
        builtin.start(&config, host).await.unwrap();
        let mut exit = builtin.exit_watch();
        let exit = *exit.wait_for(Option::is_some).await.unwrap();
        assert_eq!(exit, Some(VmExit::Exited(Some(0))));
        copier.await.unwrap().unwrap();

        let log = std::fs::read_to_string(&config.console_log).unwrap();
        assert!(
            log.contains(&format!("args: --config {}\n", config_file.display())),
            "{log}"
        );
        assert!(log.contains(&format!("fd3: {}\n", tap.display())), "{log}");
        assert!(log.contains("stdout is pipe:"), "{log}");
        let written = std::fs::read_to_string(&config_file).unwrap();
        assert!(log.contains(&written), "{log}");
        assert_eq!(
            vmm::VmConfig::parse(&written, &config_file).unwrap(),
            builtin.vm_config(&config).unwrap()
        );
        builtin.stop(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_binary_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut builtin = Builtin::new(
            dir.path().join("no-such-vmm"),
            dir.path().join("vmm.toml"),
            jail(dir.path()),
        );
        let (host, _copier) = console(dir.path()).await;
        let err = builtin
            .start(&vm_config(dir.path(), None), host)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-vmm"), "{err}");
    }
}
