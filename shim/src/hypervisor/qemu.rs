//! QEMU `-M microvm` as a Hull VMM: PVH boot of the uncompressed kernel,
//! guest RAM in a shared memfd (vhost-user devices map it), vsock and
//! virtio-fs as vhost-user devices, the serial console to a log file.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::process::VmmProcess;
use super::{Error, Hypervisor, ResolvedAccelerator, VmConfig, VmExit};

/// The descriptor number QEMU finds the pod's tap at.
const TAP_FD: i32 = 3;

pub struct Qemu {
    binary: PathBuf,
    process: VmmProcess,
}

impl Qemu {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Qemu {
            binary: binary.into(),
            process: VmmProcess::default(),
        }
    }

    /// The QEMU command line for `config` (a plain function, so tests see it).
    pub fn args(config: &VmConfig) -> Vec<String> {
        let accel = match config.accelerator {
            ResolvedAccelerator::Kvm => "kvm",
            ResolvedAccelerator::Tcg => "tcg",
        };
        let cpu = match config.accelerator {
            ResolvedAccelerator::Kvm => "host",
            ResolvedAccelerator::Tcg => "max",
        };
        let memory = format!("{}M", config.memory_mib);
        let mut args: Vec<String> = vec![
            "-M".into(),
            "microvm,rtc=on,memory-backend=mem".into(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={memory},share=on"),
            "-m".into(),
            memory,
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            config.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", config.console_log.display()),
            "-kernel".into(),
            config.kernel.display().to_string(),
            "-initrd".into(),
            config.initrd.display().to_string(),
            "-append".into(),
            config.cmdline.clone(),
            "-chardev".into(),
            format!("socket,id=vsock,path={}", config.vsock_socket.display()),
            "-device".into(),
            // The guest CID comes from the backend's config space.
            "vhost-user-vsock-device,chardev=vsock".into(),
            "-chardev".into(),
            format!("socket,id=fs,path={}", config.fs_socket.display()),
            "-device".into(),
            format!("vhost-user-fs-device,chardev=fs,tag={}", config.fs_tag),
        ];
        if let Some(net) = &config.net {
            args.extend([
                "-netdev".into(),
                format!("tap,id=net0,fd={TAP_FD},vhost=off"),
                "-device".into(),
                format!("virtio-net-device,netdev=net0,mac={}", net.mac),
            ]);
        }
        args
    }
}

#[async_trait]
impl Hypervisor for Qemu {
    async fn start(&mut self, config: &VmConfig) -> Result<(), Error> {
        let fds: Vec<_> = config.net.iter().map(|net| (net.tap_fd, TAP_FD)).collect();
        self.process
            .spawn(&self.binary, &Self::args(config), &config.console_log, &fds)
    }

    async fn stop(&mut self, grace: Duration) -> Result<VmExit, Error> {
        Ok(self.process.stop(grace).await)
    }

    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.process.exit_watch()
    }

    fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_shared_memory_and_both_vhost_user_devices() {
        let config = VmConfig {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 256,
            accelerator: ResolvedAccelerator::Tcg,
            vsock_socket: "/run/hull/s/vhost-vsock.sock".into(),
            guest_cid: 3,
            fs_socket: "/run/hull/s/virtiofsd.sock".into(),
            fs_tag: "hull".into(),
            console_log: "/run/hull/s/console.log".into(),
            net: None,
        };
        let args = Qemu::args(&config).join(" ");
        assert!(args.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(args.contains("-accel tcg"));
        assert!(args.contains("-smp 2"));
        assert!(args.contains("vhost-user-vsock-device,chardev=vsock"));
        assert!(args.contains("vhost-user-fs-device,chardev=fs,tag=hull"));
        assert!(args.contains("-serial file:/run/hull/s/console.log"));
        assert!(args.contains("-append console=ttyS0"));
        assert!(!args.contains("-netdev"));
    }

    #[test]
    fn a_pod_network_is_a_virtio_net_device_on_the_passed_tap() {
        let config = VmConfig {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 256,
            accelerator: ResolvedAccelerator::Tcg,
            vsock_socket: "/v".into(),
            guest_cid: 3,
            fs_socket: "/f".into(),
            fs_tag: "hull".into(),
            console_log: "/c".into(),
            net: Some(super::super::NetDevice {
                tap_fd: 17,
                mac: "02:42:ac:11:00:0a".into(),
            }),
        };
        let args = Qemu::args(&config).join(" ");
        assert!(
            args.contains("-netdev tap,id=net0,fd=3,vhost=off"),
            "{args}"
        );
        assert!(
            args.contains("-device virtio-net-device,netdev=net0,mac=02:42:ac:11:00:0a"),
            "{args}"
        );
    }
}
