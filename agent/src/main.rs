//! hull-agent: PID 1 of a Hull microVM.
//!
//! In the guest it sets up the system, serves the agent API on vsock, gives
//! the guest the pod's network (its NIC, addresses and routes, over
//! rtnetlink) and runs the sandbox's OCI containers. On the host
//! (`hull-agent serve`) the same code listens on Unix sockets instead, so its
//! behaviour is tested without a VM. `hull-agent runtime ...` is the agent calling itself: container
//! creation forks, and forking from a multi-threaded async process is not
//! safe, so creation runs in a fresh single-threaded child.

mod cgroup;
mod container;
mod executable;
mod forker;
mod forward;
mod init;
mod network;
mod oom;
mod process_io;
mod propagation;
mod reaper;
mod runtime;
mod sandbox;
mod server;
mod service;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hull-agent", version, about = "Hull's in-guest agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the agent API on Unix sockets on the host (for tests).
    Serve {
        /// Directory for the sockets (`agent.sock`, `stdio.sock`) and the
        /// agent's container state.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Internal: create a container or exec process with libcontainer.
    #[command(hide = true)]
    Runtime(runtime::RuntimeArgs),
    /// Internal: fork a child for each runtime call the agent sends on
    /// stdin (see forker.rs).
    #[command(hide = true, name = forker::SUBCOMMAND)]
    RuntimeForker,
}

fn main() {
    // The guest's PID 1, started without arguments, does not build the
    // command line parser: clap's set-up took 7-12 ms of every boot under
    // emulation.
    let result = if std::process::id() == 1 && std::env::args_os().len() == 1 {
        init::main()
    } else {
        match Cli::parse().command {
            Some(Command::Runtime(args)) => runtime::main(args),
            Some(Command::RuntimeForker) => forker::serve(),
            Some(Command::Serve { dir }) => serve(server::Mode::Host { dir }),
            None => Err(anyhow::anyhow!(
                "hull-agent runs as PID 1 of a Hull VM; on a host use `hull-agent serve --dir DIR`"
            )),
        }
    };
    if let Err(err) = result {
        eprintln!("hull-agent: {err:#}");
        std::process::exit(1);
    }
}

/// Runs the agent until the sandbox is destroyed.
fn serve(mode: server::Mode) -> Result<()> {
    // Before any thread exists, so that the forker is a plain fork, and
    // before logging is set up: libcontainer would log through it into
    // the container's stderr.
    let forker = forker::Forker::fork_now().context("starting the runtime forker")?;
    init_logging();
    if !mode.is_guest() {
        // Orphaned container processes must come back to us, as they would
        // to PID 1 in the guest, so that their exit statuses are ours.
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integers.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            bail!(
                "cannot become a child subreaper: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(server::run(mode, forker))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HULL_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
