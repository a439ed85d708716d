//! `hull`: Hull's admin command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hull_shim::admin::{check, containerd_config, install};
use hull_shim::bench;
use hull_shim::config::{Config, MAX_VCPUS};
use hull_shim::pod::VmSize;
use hull_shim::pool;
use hull_shim::run::{self, RunOptions, EXIT_HULL_ERROR};
use hull_shim::spec::ProcessOptions;

#[derive(Parser)]
#[command(name = "hull", version, about = "Hull: containers in microVMs")]
struct Cli {
    /// Show progress and timings.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Configuration file (default: $HULL_CONFIG, else /etc/hull/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a container on DIR, inside its own VM.
    Run {
        /// Directory to use as the container's root filesystem.
        #[arg(long, value_name = "DIR")]
        rootfs: PathBuf,
        /// Give the process a terminal.
        #[arg(short, long)]
        tty: bool,
        /// Set an environment variable (KEY=VALUE); may be repeated.
        #[arg(short, long, value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Working directory inside the container.
        #[arg(short = 'w', long)]
        cwd: Option<PathBuf>,
        /// Mount the rootfs read-only.
        #[arg(long)]
        read_only: bool,
        /// Guest kernel (overrides the configuration).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Guest initrd (overrides the configuration).
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Seconds to wait for the guest agent (overrides the configuration).
        #[arg(long)]
        boot_timeout: Option<u64>,
        /// Virtual CPUs of the VM (overrides the configuration).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_VCPUS)))]
        vcpus: Option<u32>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Report whether this host can run Hull, and how; fails if something
    /// required is missing.
    Check {
        /// containerd's configuration, to see whether CRI can use Hull.
        #[arg(long, value_name = "PATH", default_value = containerd_config::DEFAULT_PATH)]
        containerd_config: PathBuf,
    },
    /// Measure start-up time and host memory of Hull's sandboxes beside runc.
    Bench {
        /// Root filesystem for the containers (busybox: `make rootfs`).
        #[arg(
            long,
            value_name = "DIR",
            default_value = "target/hull-assets/busybox-rootfs"
        )]
        rootfs: PathBuf,
        /// Runs of each measurement.
        #[arg(short = 'n', long, default_value_t = 5)]
        iterations: usize,
        /// Sandboxes started at once in the burst measurement (0: none;
        /// default: four per CPU).
        #[arg(long)]
        burst: Option<usize>,
        /// Idle sandboxes whose CPU time and memory are measured side by
        /// side (0: none).
        #[arg(long, default_value_t = 20)]
        idle: usize,
        /// Megabytes (10^6 bytes) the stdout measurement writes (0: none).
        #[arg(long, value_name = "MB", default_value_t = 50)]
        stdout_mb: u64,
        /// A containerd socket: also time `ctr run --rm IMAGE ID true` under
        /// hull and runc, alternating, then under hull with `hull pool
        /// --count 1` serving that containerd, and start --pods containers
        /// at once under each (the image must be in its `hull-bench`
        /// namespace; `make bench` starts a private containerd for this).
        #[arg(long, value_name = "SOCKET")]
        containerd: Option<PathBuf>,
        /// The image `--containerd` runs.
        #[arg(long, value_name = "REF", default_value = "local/busybox:latest")]
        image: String,
        /// Containers `--containerd` starts at once, each its own sandbox
        /// under hull (0: none).
        #[arg(long, value_name = "N", default_value_t = 20)]
        pods: usize,
    },
    /// Keep VMs booted ahead for new sandboxes of one containerd, so that
    /// their start does not wait for a boot (runs until SIGTERM or SIGINT).
    Pool {
        /// VMs to keep booted ahead.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        count: u32,
        /// Virtual CPUs of the pool's VMs (default: the configuration's).
        /// Only sandboxes of the pool's size are served from it.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_VCPUS)))]
        vcpus: Option<u32>,
        /// Memory of the pool's VMs, in MiB (default: the configuration's).
        #[arg(long, value_name = "MIB")]
        memory_mib: Option<u32>,
        /// The containerd socket whose new sandboxes the pool serves.
        #[arg(
            long,
            value_name = "SOCKET",
            default_value = "/run/containerd/containerd.sock"
        )]
        containerd: String,
    },
    /// One of `hull pool`'s warm shims (started by the pool, not by hand).
    #[command(hide = true)]
    PoolMember {
        #[arg(long)]
        vcpus: u32,
        #[arg(long)]
        memory_mib: u32,
    },
    /// Install Hull from a built tree: binaries, guest assets, configuration,
    /// and the `hull` runtime handler in containerd's configuration.
    Install {
        /// Binaries go to PREFIX/bin, guest assets to PREFIX/share/hull.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// containerd's configuration, merged into (never overwritten).
        #[arg(long, value_name = "PATH", default_value = containerd_config::DEFAULT_PATH)]
        containerd_config: PathBuf,
        /// Leave containerd's configuration alone.
        #[arg(long)]
        no_containerd: bool,
        /// Guest kernel to install.
        #[arg(long, value_name = "PATH", default_value = install::BUILT_KERNEL)]
        kernel: PathBuf,
        /// Guest initrd to install.
        #[arg(long, value_name = "PATH", default_value = install::BUILT_INITRD)]
        initrd: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let level = if cli.verbose { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let status = match cli.command {
        Command::Check { containerd_config } => {
            let checks = check::run(cli.config.as_deref(), &containerd_config);
            for item in &checks {
                println!("{item}");
            }
            if check::passed(&checks) {
                println!("Hull can run on this host.");
                0
            } else {
                println!("Hull cannot run on this host: fix the FAIL lines above.");
                1
            }
        }
        Command::Bench {
            rootfs,
            iterations,
            burst,
            idle,
            stdout_mb,
            containerd,
            image,
            pods,
        } => {
            let config = Config::load(cli.config.as_deref()).unwrap_or_else(|e| fail(e));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| fail(e));
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let burst = burst.unwrap_or(4 * cpus);
            let options = bench::BenchOptions {
                rootfs,
                iterations: iterations.max(1),
                burst,
                idle_pods: idle,
                stdout_bytes: stdout_mb * 1_000_000,
                containerd: containerd.map(|address| {
                    let target = bench::containerd::Target {
                        address,
                        image,
                        hull_config: cli.config.clone(),
                    };
                    (target, pods)
                }),
            };
            let bench = bench::bench(&config, &options);
            match runtime.block_on(bench) {
                Ok(report) => {
                    print!("{}", report.markdown());
                    0
                }
                Err(err) => fail(err),
            }
        }
        Command::Install {
            prefix,
            containerd_config,
            no_containerd,
            kernel,
            initrd,
        } => {
            let binaries_from = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(PathBuf::from))
                .unwrap_or_else(|| fail("Cannot find the directory of the running hull"));
            let options = install::InstallOptions {
                prefix,
                binaries_from,
                kernel,
                initrd,
                hull_config: check::ConfigSource::resolve(
                    cli.config.as_deref(),
                    std::env::var_os("HULL_CONFIG").map(PathBuf::from),
                )
                .path,
                containerd_config: (!no_containerd).then_some(containerd_config),
            };
            match install::install(&options, &mut |action| println!("{action}")) {
                Ok(()) => 0,
                Err(err) => fail(err),
            }
        }
        Command::Pool {
            count,
            vcpus,
            memory_mib,
            containerd,
        } => {
            let config = Config::load(cli.config.as_deref()).unwrap_or_else(|e| fail(e));
            let size = VmSize {
                vcpus: vcpus.unwrap_or(config.vcpus),
                memory_mib: memory_mib.unwrap_or(config.memory_mib),
            };
            let options = pool::daemon::PoolOptions {
                count: count as usize,
                size,
                containerd_address: containerd,
                config,
                config_path: cli.config.clone(),
                verbose: cli.verbose,
            };
            // One thread: members die with the thread that started them.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| fail(e));
            match runtime.block_on(pool::daemon::serve(options)) {
                Ok(()) => 0,
                Err(err) => fail(err),
            }
        }
        Command::PoolMember { vcpus, memory_mib } => {
            let config = Config::load(cli.config.as_deref()).unwrap_or_else(|e| fail(e));
            let size = VmSize { vcpus, memory_mib };
            // One thread: the VM's helpers die with the thread that started them.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| fail(e));
            match runtime.block_on(pool::member::run(config, size)) {
                Ok(()) => 0,
                Err(err) => fail(err),
            }
        }
        Command::Run {
            rootfs,
            tty,
            env,
            cwd,
            read_only,
            kernel,
            initrd,
            boot_timeout,
            vcpus,
            command,
        } => {
            let mut config = match Config::load(cli.config.as_deref()) {
                Ok(config) => config,
                Err(err) => fail(err),
            };
            if let Some(kernel) = kernel {
                config.kernel = kernel;
            }
            if let Some(initrd) = initrd {
                config.initrd = initrd;
            }
            if let Some(secs) = boot_timeout {
                config.agent_timeout_secs = secs.max(1);
            }
            if let Some(vcpus) = vcpus {
                config.vcpus = vcpus;
            }
            let options = RunOptions {
                rootfs,
                process: ProcessOptions {
                    args: command,
                    terminal: tty,
                    env,
                    cwd,
                    read_only,
                    hostname: None,
                },
                verbose: cli.verbose,
            };
            // One thread: helper processes die with the thread that started
            // them (PR_SET_PDEATHSIG), which must be the process's only one.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| fail(e));
            match runtime.block_on(run::run(&config, options)) {
                Ok(status) => status,
                Err(err) => {
                    eprintln!("hull: {}", err.message);
                    err.status
                }
            }
        }
    };
    // Not waiting for the runtime: a blocked read of our stdin would hold it.
    std::process::exit(status);
}

fn fail(err: impl std::fmt::Display) -> ! {
    eprintln!("hull: {err}");
    std::process::exit(EXIT_HULL_ERROR);
}
