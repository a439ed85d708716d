//! QEMU `-M microvm` as a Hull VMM: PVH boot of the uncompressed kernel,
//! guest RAM in a shared memfd (vhost-user devices map it), vsock and
//! virtio-fs as vhost-user devices, the serial console to a log file.
//!
//! The vsock device is Hull's own (`hull_vmm`'s), served to QEMU over
//! vhost-user by threads of this process, since these hosts have no
//! `/dev/vhost-vsock`; its hybrid-vsock side is the socket the shim reaches
//! the agent through.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hull_vmm::devices::virtio::vsock::{serve_vhost_user, VsockBackendHandle, VsockConfig};
use tokio::sync::watch;

use super::process::VmmProcess;
use super::{Error, Hypervisor, ResolvedAccelerator, VmConfig, VmExit, VmmHost};

/// The descriptor number QEMU finds the pod's tap at.
const TAP_FD: i32 = 3;

pub struct Qemu {
    binary: PathBuf,
    accelerator: ResolvedAccelerator,
    /// Where the vsock backend listens for QEMU (vhost-user).
    vhost_vsock_socket: PathBuf,
    vsock: Option<VsockBackendHandle>,
    process: VmmProcess,
}

impl Qemu {
    pub fn new(
        binary: impl Into<PathBuf>,
        accelerator: ResolvedAccelerator,
        vhost_vsock_socket: impl Into<PathBuf>,
    ) -> Self {
        Qemu {
            binary: binary.into(),
            accelerator,
            vhost_vsock_socket: vhost_vsock_socket.into(),
            vsock: None,
            process: VmmProcess::default(),
        }
    }

    /// The QEMU command line for `config` (no side effects, so tests see it).
    pub fn args(&self, config: &VmConfig) -> Vec<String> {
        let accel = match self.accelerator {
            ResolvedAccelerator::Kvm => "kvm",
            ResolvedAccelerator::Tcg => "tcg",
        };
        let cpu = match self.accelerator {
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
            // The console goes to QEMU's stdout, the capped log's pipe.
            "-chardev".into(),
            "stdio,id=console,signal=off".into(),
            "-serial".into(),
            "chardev:console".into(),
            // QEMU's own seccomp filter: no obsolete syscalls, no setuid,
            // no exec or fork, no scheduler or resource changes.
            "-sandbox".into(),
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
            "-kernel".into(),
            config.kernel.display().to_string(),
            "-initrd".into(),
            config.initrd.display().to_string(),
            "-append".into(),
            config.cmdline.clone(),
            "-chardev".into(),
            format!("socket,id=vsock,path={}", self.vhost_vsock_socket.display()),
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
    async fn start(&mut self, config: &VmConfig, host: VmmHost) -> Result<(), Error> {
        let vsock = serve_vhost_user(
            &self.vhost_vsock_socket,
            VsockConfig {
                guest_cid: config.guest_cid,
                uds_path: config.vsock_uds.clone(),
            },
        )
        .map_err(|e| Error::Vsock(e.to_string()))?;
        let fds: Vec<_> = config.net.iter().map(|net| (net.tap_fd, TAP_FD)).collect();
        let args = self.args(config);
        if let Err(err) = self.process.spawn(&self.binary, &args, host, fds) {
            stop_vsock(vsock);
            return Err(err);
        }
        self.vsock = Some(vsock);
        Ok(())
    }

    async fn stop(&mut self, grace: Duration) -> Result<VmExit, Error> {
        let exit = self.process.stop(grace).await;
        if let Some(vsock) = self.vsock.take() {
            stop_vsock(vsock);
        }
        Ok(exit)
    }

    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.process.exit_watch()
    }

    fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

fn stop_vsock(vsock: VsockBackendHandle) {
    if let Err(err) = vsock.stop() {
        tracing::warn!(%err, "stopping the vsock backend");
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
            vsock_uds: "/run/hull/s/vsock.sock".into(),
            guest_cid: 3,
            fs_socket: "/run/hull/s/virtiofsd.sock".into(),
            fs_tag: "hull".into(),
            console_log: "/run/hull/s/console.log".into(),
            net: None,
        };
        let qemu = Qemu::new(
            "qemu",
            ResolvedAccelerator::Tcg,
            "/run/hull/s/vhost-vsock.sock",
        );
        let args = qemu.args(&config).join(" ");
        assert!(args.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(args.contains("socket,id=vsock,path=/run/hull/s/vhost-vsock.sock"));
        assert!(args.contains("-accel tcg"));
        assert!(args.contains("-smp 2"));
        assert!(args.contains("vhost-user-vsock-device,chardev=vsock"));
        assert!(args.contains("vhost-user-fs-device,chardev=fs,tag=hull"));
        assert!(args.contains("-chardev stdio,id=console,signal=off -serial chardev:console"));
        assert!(args.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
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
            vsock_uds: "/v".into(),
            guest_cid: 3,
            fs_socket: "/f".into(),
            fs_tag: "hull".into(),
            console_log: "/c".into(),
            net: Some(super::super::NetDevice {
                tap_fd: 17,
                mac: "02:42:ac:11:00:0a".into(),
            }),
        };
        let qemu = Qemu::new("qemu", ResolvedAccelerator::Kvm, "/vv");
        let args = qemu.args(&config).join(" ");
        assert!(args.contains("-accel kvm -cpu host"), "{args}");
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
