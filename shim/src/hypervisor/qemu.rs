//! QEMU `-M microvm` as a Hull VMM: PVH boot of the uncompressed kernel,
//! guest RAM in a shared memfd (vhost-user devices map it), vsock and
//! virtio-fs as vhost-user devices, the serial console on stdout.
//!
//! QEMU emulates every device the guest touches, so it runs confined, as
//! hull-vmm does, by the same jail code (`hull-vmm jail`, which execs it):
//! a root of its own (a read-only tmpfs with /usr, the kernel and the
//! initrd bound read-only, and only the device nodes it needs), a non-root
//! uid/gid with no capabilities, its own mount, network, IPC and UTS
//! namespaces, no_new_privs, bounded rlimits, the sandbox's cgroups, and its
//! own seccomp filter (`-sandbox on` with obsolete calls, privilege changes,
//! spawning and resource control denied). It opens nothing by path on the
//! host: the tap, and the sockets of its two vhost-user devices (connected
//! by the shim), come in as descriptors.
//!
//! The vsock device is Hull's own, served over vhost-user by `hull-vmm
//! vsock`, a process of its own, jailed the same way and under its own
//! seccomp filter: it parses guest virtqueues and maps guest memory, so it
//! must not run in the shim, which is root and holds containerd's API. The
//! shim binds both of its sockets (vhost-user for QEMU, hybrid vsock for
//! the shim itself) and passes them, so nobody waits for a socket to appear.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::process::VmmProcess;
use super::{
    Fault, Helper, Hypervisor, HypervisorError, ResolvedAccelerator, VmExit, VmParams, VmmHost,
};

/// The descriptors QEMU finds the pod's tap and its vhost-user connections
/// at.
const TAP_FD: i32 = 3;
const VSOCK_FD: i32 = 4;
const FS_FD: i32 = 5;
/// The descriptors `hull-vmm vsock` finds its two listening sockets at.
const VHOST_LISTEN_FD: i32 = 3;
const HYBRID_LISTEN_FD: i32 = 4;
/// TCG's translation cache, in MiB (QEMU's default is up to 1 GiB): within
/// the sandbox cgroup's overhead beside QEMU's heap, virtiofsd and the vsock
/// backend. A boot fills it whatever its size, so it is most of QEMU's own
/// memory; below 32 MiB a container's start is retranslated, and slower.
const TCG_TB_MIB: u32 = 32;
/// Where the guest's kernel and initrd are in QEMU's jail.
const JAIL_KERNEL: &str = "/vm/vmlinux";
const JAIL_INITRD: &str = "/vm/initrd";

/// Where and as whom QEMU and the vsock backend are confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuJail {
    /// hull-vmm, which jails and execs QEMU, and serves vsock.
    pub jailer: PathBuf,
    /// The sandbox's state directory: QEMU's new root is a tmpfs over it
    /// (seen only by QEMU), the vsock backend's root is it.
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

pub struct Qemu {
    binary: PathBuf,
    accelerator: ResolvedAccelerator,
    jail: QemuJail,
    /// Where the vsock backend listens for QEMU (vhost-user).
    vhost_vsock_socket: PathBuf,
    vsock: VmmProcess,
    process: VmmProcess,
}

impl Qemu {
    pub fn new(
        binary: impl Into<PathBuf>,
        accelerator: ResolvedAccelerator,
        vhost_vsock_socket: impl Into<PathBuf>,
        jail: QemuJail,
    ) -> Self {
        Qemu {
            binary: binary.into(),
            accelerator,
            jail,
            vhost_vsock_socket: vhost_vsock_socket.into(),
            vsock: VmmProcess::default(),
            process: VmmProcess::default(),
        }
    }

    /// QEMU's own command line for `config`, with the paths and descriptors
    /// it has inside its jail (no side effects, so tests see it).
    pub fn args(&self, config: &VmParams) -> Vec<String> {
        let accel = match self.accelerator {
            ResolvedAccelerator::Kvm => "kvm".to_owned(),
            // TCG's translation cache is 1 GiB at most by default, filled
            // as the guest runs new code (each exec'd process, with ASLR):
            // it grew past the sandbox's memory limit in 4 minutes of a
            // loop exec'ing `date` every second, and the cgroup's OOM
            // killer ended the VM. A full cache is flushed and refilled.
            ResolvedAccelerator::Tcg => format!("tcg,tb-size={TCG_TB_MIB}"),
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
            accel,
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
            JAIL_KERNEL.into(),
            "-initrd".into(),
            JAIL_INITRD.into(),
            "-append".into(),
            config.cmdline.clone(),
            "-chardev".into(),
            format!("socket,id=vsock,fd={VSOCK_FD}"),
            "-device".into(),
            // The guest CID comes from the backend's config space.
            "vhost-user-vsock-device,chardev=vsock".into(),
            "-chardev".into(),
            format!("socket,id=fs,fd={FS_FD}"),
            "-device".into(),
            format!("vhost-user-fs-device,chardev=fs,tag={}", config.fs_tag),
            // The guest reports the memory it frees (in 4 MiB blocks), and
            // QEMU punches it out of the memfd: an idle sandbox gives back
            // what its boot used once (the initrd's image, the boot's own
            // allocations). Never inflated: the guest keeps its full size.
            "-device".into(),
            "virtio-balloon-device,free-page-reporting=on".into(),
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

    /// `hull-vmm jail ... -- qemu ...`: the jailer's arguments for `config`.
    pub fn jailed_args(&self, config: &VmParams) -> Result<Vec<String>, HypervisorError> {
        let jail = &self.jail;
        let mut args: Vec<String> = vec![
            "jail".into(),
            "--root".into(),
            jail.root.display().to_string(),
            "--uid".into(),
            jail.uid.to_string(),
            "--gid".into(),
            jail.gid.to_string(),
            "--unshare".into(),
            "net,ipc,uts".into(),
            "--ro-bind".into(),
            "/usr".into(),
        ];
        for (link, kind) in usr_merge_links() {
            match kind {
                Link::Symlink(target) => {
                    args.extend(["--symlink".into(), format!("{target}:{link}")])
                }
                Link::Directory => args.extend(["--ro-bind".into(), link.to_owned()]),
            }
        }
        for (source, dest) in [(&config.kernel, JAIL_KERNEL), (&config.initrd, JAIL_INITRD)] {
            let source = absolute(source)?;
            args.extend(["--ro-bind".into(), format!("{}:{dest}", source.display())]);
        }
        let mut devices = vec!["null", "zero", "urandom"];
        if self.accelerator == ResolvedAccelerator::Kvm {
            devices.push("kvm");
        }
        for device in devices {
            args.extend(["--dev".into(), device.into()]);
        }
        args.extend(
            ["nofile=1024", "core=0"]
                .into_iter()
                .flat_map(|limit| ["--rlimit".to_owned(), limit.to_owned()]),
        );
        let mut kept = vec![VSOCK_FD, FS_FD];
        if config.net.is_some() {
            kept.push(TAP_FD);
        }
        for fd in kept {
            args.extend(["--keep-fd".into(), fd.to_string()]);
        }
        args.push("--".into());
        // The jail has no /proc: QEMU finds its firmware next to its real
        // path, so that is what it is started as.
        args.push(self.real_binary()?.display().to_string());
        args.extend(self.args(config));
        Ok(args)
    }

    /// QEMU's binary with symlinks resolved; it must be under /usr, the
    /// only host directory its jail has.
    fn real_binary(&self) -> Result<PathBuf, HypervisorError> {
        let real = self
            .binary
            .canonicalize()
            .map_err(|source| HypervisorError::Spawn {
                program: self.binary.display().to_string(),
                source,
            })?;
        if !real.starts_with("/usr") {
            return Err(HypervisorError::Spawn {
                program: real.display().to_string(),
                source: std::io::Error::other(
                    "QEMU runs in a jail that has only /usr of the host: install it under /usr",
                ),
            });
        }
        Ok(real)
    }

    /// `hull-vmm vsock ...`: the vsock backend's arguments.
    fn vsock_args(&self, config: &VmParams) -> Result<Vec<String>, HypervisorError> {
        let name = config
            .vsock_uds
            .strip_prefix(&self.jail.root)
            .map_err(|_| HypervisorError::Spawn {
                program: "hull-vmm vsock".into(),
                source: std::io::Error::other(format!(
                    "the vsock socket {} is not in the jail directory {}",
                    config.vsock_uds.display(),
                    self.jail.root.display()
                )),
            })?;
        Ok(vec![
            "vsock".into(),
            "--vhost-user-fd".into(),
            VHOST_LISTEN_FD.to_string(),
            "--hybrid-fd".into(),
            HYBRID_LISTEN_FD.to_string(),
            "--uds".into(),
            name.display().to_string(),
            "--guest-cid".into(),
            config.guest_cid.to_string(),
            "--jail".into(),
            self.jail.root.display().to_string(),
            "--uid".into(),
            self.jail.uid.to_string(),
            "--gid".into(),
            self.jail.gid.to_string(),
        ])
    }

    async fn start_processes(
        &mut self,
        config: &VmParams,
        host: &VmmHost,
    ) -> Result<(), HypervisorError> {
        let vhost = bind(&self.vhost_vsock_socket)?;
        let hybrid = bind(&config.vsock_uds)?;
        let vsock_args = self.vsock_args(config)?;
        self.vsock.spawn(
            &self.jail.jailer,
            &vsock_args,
            host,
            vec![
                (vhost.as_raw_fd(), VHOST_LISTEN_FD),
                (hybrid.as_raw_fd(), HYBRID_LISTEN_FD),
            ],
        )?;
        // QEMU's ends of its vhost-user sessions: they wait in the backends'
        // listen queues until accepted.
        let vsock = connect(&self.vhost_vsock_socket)?;
        let fs = connect(&config.fs_socket)?;
        let mut fds = vec![(vsock.as_raw_fd(), VSOCK_FD), (fs.as_raw_fd(), FS_FD)];
        if let Some(net) = &config.net {
            fds.push((net.tap_fd, TAP_FD));
        }
        let args = self.jailed_args(config)?;
        self.process.spawn(&self.jail.jailer, &args, host, fds)?;
        self.watch_vsock_backend();
        Ok(())
    }

    /// Ends the VM when its vsock backend ends under it: the agent is then
    /// out of reach for good. (When QEMU stops, the backend follows it, and
    /// this does nothing.)
    fn watch_vsock_backend(&self) {
        let (Some(killer), mut ended) = (self.process.killer(), self.vsock.exit_watch()) else {
            return;
        };
        tokio::spawn(async move {
            let Ok(exit) = ended.wait_for(Option::is_some).await.map(|e| *e) else {
                return;
            };
            let status = match exit {
                Some(VmExit::Exited(status)) => status,
                _ => None,
            };
            killer
                .helper_ended(Fault::HelperEnded {
                    helper: Helper::VsockBackend,
                    status,
                })
                .await;
        });
    }
}

/// How the host lays out a top-level directory that usr-merged Debian makes
/// a symlink into /usr.
enum Link {
    Symlink(String),
    Directory,
}

/// /lib, /lib64, /bin and /sbin as the host has them: symlinks (to copy
/// into the jail) or directories (to bind).
fn usr_merge_links() -> Vec<(&'static str, Link)> {
    ["/lib", "/lib64", "/bin", "/sbin"]
        .into_iter()
        .filter_map(|link| match std::fs::read_link(link) {
            Ok(target) => Some((link, Link::Symlink(target.display().to_string()))),
            Err(_) if Path::new(link).is_dir() => Some((link, Link::Directory)),
            Err(_) => None,
        })
        .collect()
}

fn absolute(path: &Path) -> Result<PathBuf, HypervisorError> {
    path.canonicalize()
        .map_err(|source| HypervisorError::Spawn {
            program: format!("qemu (reading {})", path.display()),
            source,
        })
}

fn bind(path: &Path) -> Result<OwnedFd, HypervisorError> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
        .map(OwnedFd::from)
        .map_err(|source| HypervisorError::Spawn {
            program: format!("the vsock backend (binding {})", path.display()),
            source,
        })
}

fn connect(path: &Path) -> Result<OwnedFd, HypervisorError> {
    UnixStream::connect(path)
        .map(OwnedFd::from)
        .map_err(|source| HypervisorError::Spawn {
            program: format!("qemu (connecting to {})", path.display()),
            source,
        })
}

#[async_trait]
impl Hypervisor for Qemu {
    async fn start(&mut self, config: &VmParams, host: VmmHost) -> Result<(), HypervisorError> {
        let started = self.start_processes(config, &host).await;
        if started.is_err() {
            self.vsock.stop(Duration::ZERO).await;
        }
        started
    }

    async fn stop(&mut self, grace: Duration) -> Result<VmExit, HypervisorError> {
        let exit = self.process.stop(grace).await;
        // It ends by itself once QEMU, its frontend, is gone.
        self.vsock.stop(Duration::from_secs(1)).await;
        Ok(exit)
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
    use super::*;

    fn vm_config(net: Option<super::super::NetDevice>) -> VmParams {
        VmParams {
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
            net,
        }
    }

    fn qemu(accelerator: ResolvedAccelerator) -> Qemu {
        Qemu::new(
            "/usr/bin/qemu-system-x86_64",
            accelerator,
            "/run/hull/s/vhost-vsock.sock",
            QemuJail {
                jailer: "/usr/local/bin/hull-vmm".into(),
                root: "/run/hull/s".into(),
                uid: 65534,
                gid: 65534,
            },
        )
    }

    #[test]
    fn command_line_has_shared_memory_both_vhost_user_devices_and_the_sandbox() {
        let args = qemu(ResolvedAccelerator::Tcg)
            .args(&vm_config(None))
            .join(" ");
        assert!(args.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(args.contains("-accel tcg,tb-size=32 -cpu max"), "{args}");
        assert!(args.contains("-smp 2"));
        assert!(args.contains("-chardev socket,id=vsock,fd=4"), "{args}");
        assert!(args.contains("vhost-user-vsock-device,chardev=vsock"));
        assert!(args.contains("-chardev socket,id=fs,fd=5"), "{args}");
        assert!(args.contains("vhost-user-fs-device,chardev=fs,tag=hull"));
        assert!(args.contains("-chardev stdio,id=console,signal=off -serial chardev:console"));
        assert!(args.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
        assert!(args.contains("-kernel /vm/vmlinux -initrd /vm/initrd"));
        assert!(args.contains("-append console=ttyS0"));
        assert!(args.contains("-device virtio-balloon-device,free-page-reporting=on"));
        assert!(!args.contains("-netdev"));
    }

    #[test]
    fn a_pod_network_is_a_virtio_net_device_on_the_passed_tap() {
        let net = super::super::NetDevice {
            tap_fd: 17,
            mac: "02:42:ac:11:00:0a".into(),
        };
        let args = qemu(ResolvedAccelerator::Kvm)
            .args(&vm_config(Some(net)))
            .join(" ");
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

    #[test]
    fn qemu_runs_jailed_as_nobody_with_only_usr_its_assets_and_its_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = vm_config(None);
        config.kernel = dir.path().join("vmlinux");
        config.initrd = dir.path().join("initrd");
        std::fs::write(&config.kernel, "k").unwrap();
        std::fs::write(&config.initrd, "i").unwrap();
        let args = qemu(ResolvedAccelerator::Tcg)
            .jailed_args(&config)
            .unwrap()
            .join(" ");
        let (jail, command) = args.split_once(" -- ").unwrap();
        for part in [
            "jail --root /run/hull/s --uid 65534 --gid 65534 --unshare net,ipc,uts",
            "--ro-bind /usr",
            &format!("--ro-bind {}:/vm/vmlinux", config.kernel.display()),
            &format!("--ro-bind {}:/vm/initrd", config.initrd.display()),
            "--dev null --dev zero --dev urandom",
            "--rlimit nofile=1024 --rlimit core=0",
            "--keep-fd 4 --keep-fd 5",
        ] {
            assert!(jail.contains(part), "{part:?} not in {jail}");
        }
        assert!(
            !jail.contains("kvm") && !jail.contains("--keep-fd 3"),
            "{jail}"
        );
        assert!(
            command.starts_with("/usr/bin/qemu-system-x86_64 -M microvm"),
            "{command}"
        );
        let kvm = qemu(ResolvedAccelerator::Kvm);
        let mut with_net = config.clone();
        with_net.net = Some(super::super::NetDevice {
            tap_fd: 9,
            mac: "02:00:00:00:00:01".into(),
        });
        let args = kvm.jailed_args(&with_net).unwrap().join(" ");
        assert!(
            args.contains("--dev kvm") && args.contains("--keep-fd 3"),
            "{args}"
        );
    }

    #[test]
    fn the_vsock_backend_is_jailed_in_the_sandbox_dir_with_a_relative_socket() {
        let args = qemu(ResolvedAccelerator::Tcg)
            .vsock_args(&vm_config(None))
            .unwrap()
            .join(" ");
        assert_eq!(
            args,
            "vsock --vhost-user-fd 3 --hybrid-fd 4 --uds vsock.sock --guest-cid 3 \
             --jail /run/hull/s --uid 65534 --gid 65534"
        );
        let mut outside = vm_config(None);
        outside.vsock_uds = "/tmp/vsock.sock".into();
        let err = qemu(ResolvedAccelerator::Tcg)
            .vsock_args(&outside)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/tmp/vsock.sock"), "{err}");
    }
}
