//! hull-vmm: one microVM per process on KVM; also the jail Hull's shim starts QEMU and
//! virtiofsd through, and the vsock device served to QEMU in a confined process.
//!
//! ```text
//! hull-vmm --kernel PATH [--initrd PATH] [--cmdline STR] [--vcpus N] [--memory-mib N]
//!          [--serial-log PATH] [--vsock-cid N --vsock-uds PATH] [--pvm-capable]
//!          [--block PATH[,ro]]... [--fs SOCKET,tag=TAG[,queue_size=N]]...
//!          [--net TAP[,mac=MAC]]... [--api-sock PATH] [--no-seccomp]
//!          [--jail DIR --uid N --gid N [--cgroup PATH]]
//! hull-vmm --config FILE [--api-sock PATH [--wait-for-start]] [--no-seccomp]
//! hull-vmm jail [OPTIONS] -- PROGRAM [ARGS...]                        (jail.rs)
//! hull-vmm vsock --vhost-user-fd N --hybrid-fd M --uds NAME --guest-cid CID
//!                [--jail DIR --uid U --gid G] [--no-seccomp]         (vsock.rs)
//! ```
//!
//! At start hull-vmm closes every inherited descriptor but 0-2 and the taps its
//! configuration names, bounds its open files and turns core dumps off. Once the VM is
//! built and before any thread starts, it enters its jail if it has one
//! (`hull_vmm::jail`); then every thread drops its capabilities and installs its own
//! seccomp filter (`hull_vmm::seccomp`).
//!
//! Exit status: 0 when the guest halted or asked to power off/reset, 1 when
//! the VM failed, 2 for bad configuration or a host that cannot run it,
//! 3 when stopped through the API socket.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use clap::{Parser, Subcommand};
use hull_vmm::builder::{self, VmOutcome};
use hull_vmm::config::{
    default_cmdline, BlockDeviceConfig, BootConfig, FsDeviceConfig, JailConfig, MachineConfig,
    NetDeviceConfig, SerialConfig, VmConfig, VsockDeviceConfig, DEFAULT_FS_QUEUE_SIZE,
};
use hull_vmm::jail::{process, Jail, JailError};
use hull_vmm::seccomp::{self, ThreadFilters, ThreadKind};
use seccompiler::BpfProgram;

/// The flags that describe the VM, which `--config` replaces (clap's argument ids).
const QUICK_FLAGS: [&str; 16] = [
    "kernel",
    "initrd",
    "cmdline",
    "vcpus",
    "memory_mib",
    "serial_log",
    "vsock_cid",
    "vsock_uds",
    "pvm_capable",
    "block",
    "fs",
    "net",
    "jail",
    "uid",
    "gid",
    "cgroup",
];

mod jail;
mod vsock;

#[derive(Parser)]
#[command(
    name = "hull-vmm",
    version,
    about = "Hull's built-in microVM monitor",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// A TOML file describing the whole VM (see docs/vmm.md), in place of the flags that
    /// describe it (all but --api-sock and --no-seccomp).
    #[arg(long, conflicts_with_all = QUICK_FLAGS)]
    config: Option<PathBuf>,
    /// ELF vmlinux (PVH entry if it has the note) or bzImage.
    #[arg(long, required_unless_present = "config")]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    #[arg(long)]
    cmdline: Option<String>,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    /// File that receives the guest's serial console.
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Guest CID of a virtio-vsock device (hybrid vsock on --vsock-uds).
    #[arg(long, requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    #[arg(long, requires = "vsock_cid")]
    vsock_uds: Option<PathBuf>,
    /// A raw disk image for a virtio-blk device; `,ro` makes it read-only. Repeatable.
    #[arg(long = "block", value_name = "PATH[,ro]", value_parser = parse_block)]
    block: Vec<BlockDeviceConfig>,
    /// A virtio-fs device served by the virtiofsd listening on SOCKET, mounted in the guest
    /// by TAG (1 to 36 bytes). Repeatable.
    #[arg(long = "fs", value_name = "SOCKET,tag=TAG[,queue_size=N]", value_parser = parse_fs)]
    fs: Vec<FsDeviceConfig>,
    /// A host tap for a virtio-net device (created if missing), with the guest's MAC address
    /// (default 02:00:00:00:00:N for the N-th device). Repeatable.
    #[arg(long = "net", value_name = "TAP[,mac=MAC]", value_parser = parse_net)]
    net: Vec<NetDeviceConfig>,
    /// The guest runs under PVM (a PVM-aware kernel or a test payload).
    #[arg(long)]
    pvm_capable: bool,
    /// Unix socket taking `status`, `start` and `stop`, one per line.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Build the VM (and enter the jail), then wait for `start` on the API
    /// socket before the guest runs.
    #[arg(long, requires = "api_sock")]
    wait_for_start: bool,
    /// Run without seccomp filters (for debugging; capabilities are still dropped).
    #[arg(long)]
    no_seccomp: bool,
    /// Once the VM is built, make DIR the root and run as --uid/--gid (see
    /// docs/vmm.md, "Jail"). The vsock and API sockets must be inside DIR.
    #[arg(long, value_name = "DIR", requires_all = ["uid", "gid"])]
    jail: Option<PathBuf>,
    /// The non-root user the jailed VMM runs as.
    #[arg(long, value_name = "N", requires = "jail")]
    uid: Option<u32>,
    /// The non-root group the jailed VMM runs as.
    #[arg(long, value_name = "N", requires = "jail")]
    gid: Option<u32>,
    /// A cgroup v2 directory the jailed VMM moves into; the caller creates and removes it.
    #[arg(long, value_name = "PATH", requires = "jail")]
    cgroup: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    Jail(jail::JailArgs),
    Vsock(vsock::VsockArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Jail(args)) => jail::run(args),
        Some(Command::Vsock(args)) => vsock::run(args),
        None => run_vm(&cli),
    }
}

/// Builds the VM, enters the jail, runs the guest.
fn run_vm(cli: &Cli) -> ! {
    let mut config = match vm_config(cli) {
        Ok(config) => config,
        Err(err) => exit(2, err),
    };
    // Before anything is opened: nothing the caller left open by mistake may reach a VMM
    // a guest could take over, only the taps the configuration names.
    let passed_taps: Vec<RawFd> = config.net.iter().filter_map(|net| net.fd).collect();
    if let Err(err) = process::close_inherited_fds(&passed_taps) {
        exit(2, err);
    }
    if let Err(err) = process::apply_confined_limits() {
        exit(2, err);
    }
    // The path the VMM uses for the API socket: relative to the jail
    // directory when it has one.
    let mut api_sock = cli.api_sock.clone();
    let jail = config.jail.clone().map(|jail| {
        prepare_jail(&jail, &mut config, &mut api_sock).unwrap_or_else(|err| exit(2, err))
    });
    let filters = match cli.no_seccomp {
        true => None,
        false => Some(ThreadFilters::new().unwrap_or_else(|err| exit(2, err))),
    };
    let main_filter = filters.as_ref().map(|f| f.get(ThreadKind::Main));
    let vm = match builder::build(&config) {
        Ok(vm) => vm,
        Err(err) => exit(2, err),
    };
    let api_listener = api_sock.as_ref().map(|path| {
        bind_api(path).unwrap_or_else(|err| {
            let shown = cli.api_sock.as_ref().unwrap_or(path);
            exit(2, format!("API socket {}: {err}", shown.display()))
        })
    });
    // Every host resource is open and no thread has started yet.
    if let Some(jail) = &jail {
        if let Err(err) = jail.enter() {
            exit(2, err);
        }
    }
    if cli.wait_for_start {
        let listener = api_listener.as_ref().expect("clap requires --api-sock");
        if !wait_for_start(listener) {
            if let Some(path) = &api_sock {
                let _ = std::fs::remove_file(path);
            }
            std::process::exit(3);
        }
    }
    let vm = match vm.start(filters.as_ref()) {
        Ok(vm) => vm,
        Err(err) => exit(2, err),
    };
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<VmOutcome>();
    if let Some(listener) = api_listener {
        let filter = filters.as_ref().map(|f| f.get(ThreadKind::Api));
        if let Err(err) = serve_api(listener, stop_tx, filter) {
            exit(2, format!("API thread: {err}"));
        }
    }
    // The VM runs until the guest ends it or the API stops it.
    let runner_filter = main_filter.clone();
    let runner = std::thread::spawn(move || {
        seccomp::confine_current_thread(ThreadKind::Main, runner_filter.as_deref());
        let _ = done_tx.send(vm.wait_or(stop_rx));
    });
    // The last thread is started: from here on the main thread only waits.
    seccomp::confine_current_thread(ThreadKind::Main, main_filter.as_deref());
    seccomp::run_selftest_if_asked();
    let outcome = done_rx
        .recv()
        .unwrap_or(VmOutcome::Failed("VM thread ended".into()));
    let _ = runner.join();
    if let Some(path) = &api_sock {
        let _ = std::fs::remove_file(path);
    }
    match outcome {
        VmOutcome::GuestStopped(stop) => {
            eprintln!("hull-vmm: guest stopped ({stop:?})");
            std::process::exit(0)
        }
        VmOutcome::Stopped => std::process::exit(3),
        VmOutcome::Failed(why) => exit(1, why),
    }
}

fn vm_config(cli: &Cli) -> Result<VmConfig, String> {
    if let Some(path) = &cli.config {
        return VmConfig::load(path).map_err(|e| e.to_string());
    }
    let config = VmConfig {
        machine: MachineConfig {
            vcpus: cli.vcpus,
            memory_mib: cli.memory_mib,
            pvm_capable: cli.pvm_capable,
        },
        boot: BootConfig {
            kernel: cli.kernel.clone().expect("clap requires --kernel"),
            initrd: cli.initrd.clone(),
            cmdline: cli.cmdline.clone().unwrap_or_else(default_cmdline),
        },
        serial: SerialConfig {
            log: cli.serial_log.clone(),
        },
        vsock: cli
            .vsock_cid
            .zip(cli.vsock_uds.clone())
            .map(|(guest_cid, uds_path)| VsockDeviceConfig {
                guest_cid,
                uds_path,
            }),
        block: cli.block.clone(),
        fs: cli.fs.clone(),
        net: cli.net.clone(),
        jail: cli.jail.clone().map(|root| JailConfig {
            root,
            uid: cli.uid.expect("clap requires --uid with --jail"),
            gid: cli.gid.expect("clap requires --gid with --jail"),
            cgroup: cli.cgroup.clone(),
        }),
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Checks the jail against the host, points the sockets the VMM keeps
/// using into it, moves the VMM into the jail's cgroup (before the VM is
/// built, so its memory is charged there) and makes the jail directory the
/// working directory.
fn prepare_jail(
    jail: &JailConfig,
    config: &mut VmConfig,
    api_sock: &mut Option<PathBuf>,
) -> Result<Jail, JailError> {
    let jail = Jail::new(jail)?;
    jail.relocate(config)?;
    if let Some(path) = api_sock {
        *path = jail.inside("API socket", path)?;
    }
    jail.join_cgroup()?;
    jail.work_from_root()?;
    Ok(jail)
}

/// `PATH` or `PATH,ro`.
fn parse_block(arg: &str) -> Result<BlockDeviceConfig, String> {
    let (path, read_only) = match arg.strip_suffix(",ro") {
        Some(path) => (path, true),
        None => (arg, false),
    };
    if path.is_empty() {
        return Err("expected PATH or PATH,ro".into());
    }
    Ok(BlockDeviceConfig {
        path: path.into(),
        read_only,
    })
}

/// `SOCKET,tag=TAG[,queue_size=N]`: the options are the trailing `key=value` parts, so a
/// socket path may itself contain commas.
fn parse_fs(arg: &str) -> Result<FsDeviceConfig, String> {
    let mut parts: Vec<&str> = arg.split(',').collect();
    let mut tag = None;
    let mut queue_size = DEFAULT_FS_QUEUE_SIZE;
    while let Some(last) = parts.last() {
        if let Some(value) = last.strip_prefix("tag=") {
            tag.get_or_insert_with(|| value.to_owned());
        } else if let Some(value) = last.strip_prefix("queue_size=") {
            queue_size = value
                .parse()
                .map_err(|_| format!("queue_size={value} is not a number up to 32768"))?;
        } else {
            break;
        }
        parts.pop();
    }
    let socket = parts.join(",");
    if socket.is_empty() {
        return Err("expected SOCKET,tag=TAG[,queue_size=N]".into());
    }
    let tag = tag.ok_or_else(|| format!("no tag=TAG after the socket {socket}"))?;
    Ok(FsDeviceConfig {
        socket: socket.into(),
        tag,
        queue_size,
    })
}

/// Binds the API socket, replacing a stale one.
fn bind_api(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}

/// `TAP` or `TAP,mac=MAC`; the tap name is checked with the rest of the configuration.
fn parse_net(arg: &str) -> Result<NetDeviceConfig, String> {
    let usage = || format!("{arg:?}: expected TAP or TAP,mac=MAC");
    let (tap, mac) = match arg.split_once(',') {
        None => (arg, None),
        Some((tap, option)) => {
            let mac = option.strip_prefix("mac=").ok_or_else(usage)?;
            (tap, Some(mac.parse().map_err(|e| format!("{e}"))?))
        }
    };
    if tap.is_empty() {
        return Err(usage());
    }
    Ok(NetDeviceConfig::named(tap, mac))
}

/// `status` answers `running`; `stop` answers `stopping` and stops the VM.
fn serve_api(
    listener: UnixListener,
    stop: mpsc::Sender<()>,
    filter: Option<Arc<BpfProgram>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("vmm-api".into())
        .spawn(move || {
            seccomp::confine_current_thread(ThreadKind::Api, filter.as_deref());
            for stream in listener.incoming().flatten() {
                let mut writer = match stream.try_clone() {
                    Ok(writer) => writer,
                    Err(_) => continue,
                };
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let reply = match line.trim() {
                        "status" => "running",
                        "start" => "error: already running",
                        "stop" => {
                            let _ = stop.send(());
                            "stopping"
                        }
                        _ => "error: unknown command (status, start, stop)",
                    };
                    let _ = writeln!(writer, "{reply}");
                }
            }
        })?;
    Ok(())
}

/// Serves the API on the main thread before any other thread exists, until
/// `start` (true) or `stop` (false). The guest has not run yet: `status`
/// answers `created`.
fn wait_for_start(listener: &UnixListener) -> bool {
    for stream in listener.incoming().flatten() {
        let Ok(mut writer) = stream.try_clone() else {
            continue;
        };
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let (reply, decided) = match line.trim() {
                "status" => ("created", None),
                "start" => ("starting", Some(true)),
                "stop" => ("stopping", Some(false)),
                _ => ("error: unknown command (status, start, stop)", None),
            };
            let _ = writeln!(writer, "{reply}");
            if let Some(start) = decided {
                return start;
            }
        }
    }
    false
}

fn exit(code: i32, err: impl std::fmt::Display) -> ! {
    eprintln!("hull-vmm: {err}");
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_flags_repeat_and_take_ro() {
        let cli = Cli::try_parse_from([
            "hull-vmm",
            "--kernel",
            "/k",
            "--block",
            "/a.img",
            "--block",
            "/b,c.img,ro",
        ])
        .unwrap();
        let config = vm_config(&cli).unwrap();
        assert_eq!(
            config.block,
            vec![
                BlockDeviceConfig {
                    path: "/a.img".into(),
                    read_only: false,
                },
                BlockDeviceConfig {
                    path: "/b,c.img".into(),
                    read_only: true,
                },
            ]
        );
        assert!(Cli::try_parse_from(["hull-vmm", "--kernel", "/k", "--block", ",ro"]).is_err());
    }

    #[test]
    fn fs_flags_repeat_and_take_a_tag_and_queue_size() {
        let cli = Cli::try_parse_from([
            "hull-vmm",
            "--kernel",
            "/k",
            "--fs",
            "/run/v.sock,tag=hullfs",
            "--fs",
            "/run/a,b.sock,queue_size=1024,tag=data",
        ])
        .unwrap();
        let config = vm_config(&cli).unwrap();
        assert_eq!(
            config.fs,
            vec![
                FsDeviceConfig {
                    socket: "/run/v.sock".into(),
                    tag: "hullfs".into(),
                    queue_size: 512,
                },
                FsDeviceConfig {
                    socket: "/run/a,b.sock".into(),
                    tag: "data".into(),
                    queue_size: 1024,
                },
            ]
        );
        let parse = |arg: &str| Cli::try_parse_from(["hull-vmm", "--kernel", "/k", "--fs", arg]);
        let err = parse("/run/v.sock").err().unwrap().to_string();
        assert!(
            err.contains("tag=TAG") && err.contains("/run/v.sock"),
            "{err}"
        );
        assert!(parse("tag=x").is_err());
        assert!(parse("/v.sock,tag=x,queue_size=big").is_err());
        // Values are checked like the configuration file's.
        let long = "t".repeat(37);
        let cli = parse(&format!("/v.sock,tag={long}")).unwrap();
        let err = vm_config(&cli).unwrap_err();
        assert!(err.contains(&long), "{err}");
        let cli = parse("/v.sock,tag=x,queue_size=100").unwrap();
        assert!(vm_config(&cli).unwrap_err().contains("100"));
        assert!(
            Cli::try_parse_from(["hull-vmm", "--config", "/vm.toml", "--fs", "/v.sock,tag=x"])
                .is_err()
        );
    }

    #[test]
    fn jail_flags_make_the_jail_section_and_come_together() {
        let args = |extra: &[&str]| {
            let base = ["hull-vmm", "--kernel", "/k"];
            Cli::try_parse_from(base.iter().chain(extra))
        };
        let cli = args(&["--jail", "/j", "--uid", "5", "--gid", "6", "--cgroup", "/c"]).unwrap();
        assert_eq!(
            vm_config(&cli).unwrap().jail,
            Some(JailConfig {
                root: "/j".into(),
                uid: 5,
                gid: 6,
                cgroup: Some("/c".into()),
            })
        );
        assert_eq!(vm_config(&args(&[]).unwrap()).unwrap().jail, None);
        for incomplete in [
            &["--jail", "/j", "--uid", "5"][..],
            &["--jail", "/j", "--gid", "6"],
            &["--uid", "5", "--gid", "6"],
            &["--cgroup", "/c"],
        ] {
            let err = args(incomplete).err().expect("refused").to_string();
            assert!(err.contains("--"), "{incomplete:?}: {err}");
        }
        let with_file = Cli::try_parse_from([
            "hull-vmm", "--config", "/vm.toml", "--jail", "/j", "--uid", "5", "--gid", "6",
        ]);
        assert!(with_file.is_err(), "[jail] belongs in the file");
    }

    #[test]
    fn net_flags_repeat_and_take_a_mac() {
        let cli = Cli::try_parse_from([
            "hull-vmm",
            "--kernel",
            "/k",
            "--net",
            "tap0",
            "--net",
            "tap1,mac=02:ab:00:00:00:09",
        ])
        .unwrap();
        let config = vm_config(&cli).unwrap();
        let nets: Vec<String> = config
            .net
            .iter()
            .enumerate()
            .map(|(index, net)| format!("{} {}", net.source().unwrap(), net.guest_mac(index)))
            .collect();
        assert_eq!(
            nets,
            [
                "tap = \"tap0\" 02:00:00:00:00:01",
                "tap = \"tap1\" 02:ab:00:00:00:09"
            ]
        );

        let error =
            |arg: &str| match Cli::try_parse_from(["hull-vmm", "--kernel", "/k", "--net", arg]) {
                Ok(cli) => vm_config(&cli).unwrap_err(),
                Err(e) => e.to_string(),
            };
        for (arg, named) in [
            ("", "\"\""),
            (",mac=02:00:00:00:00:01", "mac=02"),
            ("tap0,mtu=9000", "mtu=9000"),
            ("tap0,mac=02:00:00:00:00", "02:00:00:00:00"),
            ("tap0,mac=01:00:00:00:00:01", "multicast"),
            ("tap/0", "tap/0"),
        ] {
            let err = error(arg);
            assert!(err.contains(named), "{arg}: {err}");
        }
        assert!(Cli::try_parse_from(["hull-vmm", "--config", "/c", "--net", "tap0"]).is_err());
    }

    #[test]
    fn subcommands_parse_and_do_not_mix_with_the_vm_flags() {
        let cli = Cli::try_parse_from([
            "hull-vmm",
            "jail",
            "--root",
            "/r",
            "--ro-bind",
            "/usr",
            "--uid",
            "5",
            "--gid",
            "6",
            "--rlimit",
            "core=0",
            "--keep-fd",
            "3",
            "--",
            "/bin/prog",
            "-x",
            "--y",
        ])
        .unwrap();
        let Some(Command::Jail(args)) = cli.command else {
            panic!("not the jail subcommand");
        };
        assert_eq!((args.uid, args.gid), (Some(5), Some(6)));
        assert_eq!(args.command, ["/bin/prog", "-x", "--y"]);
        assert_eq!(args.keep_fd, [3]);
        let cli = Cli::try_parse_from([
            "hull-vmm",
            "vsock",
            "--vhost-user-fd",
            "3",
            "--hybrid-fd",
            "4",
            "--uds",
            "vsock.sock",
            "--guest-cid",
            "3",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Vsock(_))));
        for mixed in [
            &["hull-vmm", "--kernel", "/k", "jail", "--", "/bin/prog"][..],
            &[
                "hull-vmm",
                "--no-seccomp",
                "vsock",
                "--vhost-user-fd",
                "3",
                "--hybrid-fd",
                "4",
                "--uds",
                "v",
                "--guest-cid",
                "3",
            ],
            // The program comes after `--`, so the jail's options cannot be taken for its.
            &["hull-vmm", "jail", "/bin/prog"],
            &[
                "hull-vmm",
                "jail",
                "--uid",
                "5",
                "--userns-fd",
                "3",
                "--",
                "/bin/p",
            ],
            &[
                "hull-vmm",
                "vsock",
                "--hybrid-fd",
                "4",
                "--uds",
                "v",
                "--guest-cid",
                "3",
            ],
        ] {
            assert!(Cli::try_parse_from(mixed).is_err(), "{mixed:?}");
        }
    }

    #[test]
    fn config_file_conflicts_with_every_flag_that_describes_the_vm() {
        let values = [
            ("--kernel", "/k"),
            ("--initrd", "/i"),
            ("--cmdline", "console=ttyS0"),
            ("--vcpus", "2"),
            ("--memory-mib", "256"),
            ("--serial-log", "/s.log"),
            ("--vsock-cid", "3"),
            ("--vsock-uds", "/v.sock"),
            ("--block", "/d.raw"),
            ("--fs", "/f.sock,tag=t"),
            ("--net", "tap0"),
            ("--jail", "/j"),
            ("--uid", "5"),
            ("--gid", "6"),
            ("--cgroup", "/c"),
        ];
        assert_eq!(values.len() + 1, QUICK_FLAGS.len(), "a quick flag left out");
        let with_file = |extra: &[&str]| {
            let base = ["hull-vmm", "--config", "/vm.toml"];
            Cli::try_parse_from(base.iter().chain(extra))
        };
        for (flag, value) in values {
            let err = with_file(&[flag, value]).err().expect(flag).to_string();
            assert!(err.contains("cannot be used with"), "{flag}: {err}");
        }
        assert!(with_file(&["--pvm-capable"]).is_err());
        assert!(with_file(&["--api-sock", "/a.sock", "--no-seccomp"]).is_ok());
    }
}
