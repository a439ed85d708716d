//! `hull-agent runtime`: creates a container or an exec process with youki's
//! libcontainer, in a fresh single-threaded process.
//!
//! libcontainer clones, and cloning from the agent's multi-threaded async
//! process could leave the child with locks held by other threads. The agent
//! therefore has every create and exec run by a child of its single-threaded
//! forker (forker.rs), with these arguments; the container's processes
//! outlive that child and are re-parented to the agent (PID 1, or a child
//! subreaper on the host), which reaps them. `hull-agent runtime ARGS` runs
//! the same by hand.
//!
//! The process's stdio arrives as fds 3, 4 and 5 (unless it has a terminal,
//! whose master goes to the console socket); the error goes back to the
//! agent as the forker's answer.

mod exec_seccomp;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{Process, Spec};

/// The fd numbers at which the agent hands the process's stdio to us.
pub const STDIO_FDS: [i32; 3] = [3, 4, 5];

#[derive(Args)]
pub struct RuntimeArgs {
    #[command(subcommand)]
    operation: Operation,
}

#[derive(Subcommand)]
enum Operation {
    /// Create a container from a bundle; it waits for `start`.
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        bundle: PathBuf,
    },
    /// Start a process (an OCI `process` JSON file) in a running container.
    Exec {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        process: PathBuf,
    },
}

#[derive(Args)]
struct Common {
    /// libcontainer's state directory.
    #[arg(long)]
    root: PathBuf,
    #[arg(long)]
    id: String,
    /// Where to write the pid of the new process.
    #[arg(long)]
    pid_file: PathBuf,
    /// Unix socket that receives the pty master of a terminal process.
    #[arg(long)]
    console_socket: Option<PathBuf>,
}

pub fn main(args: RuntimeArgs) -> Result<()> {
    // Rust ignores SIGPIPE in every program it starts, and an ignored signal
    // stays ignored across exec: without this, `yes | head` in a container
    // would never end. Containers start with default dispositions, as
    // under runc.
    // SAFETY: resetting a signal to its default action has no preconditions.
    unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    }
    .context("resetting SIGPIPE")?;
    match args.operation {
        Operation::Create { common, bundle } => {
            let builder = builder(&common)?;
            builder
                .as_init(&bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .with_context(|| format!("creating container {}", common.id))?;
        }
        Operation::Exec { common, process } => {
            exec(&common, &process)
                .with_context(|| format!("starting a process in container {}", common.id))?;
        }
    }
    Ok(())
}

/// Starts the process of the file `process_file` in the container, with
/// the container's seccomp profile, which libcontainer's exec leaves out.
fn exec(common: &Common, process_file: &Path) -> Result<()> {
    let process: Process =
        serde_json::from_slice(&std::fs::read(process_file).context("reading the process file")?)
            .context("parsing the process file")?;
    let Some(seccomp) = exec_seccomp::plan(&container_spec(common)?, &process)? else {
        builder(common)?
            .as_tenant()
            .with_process(Some(process_file))
            .with_detach(true)
            .build()?;
        return Ok(());
    };
    // Beside the agent's `exec-<id>.json`, under a name no exec id makes.
    let file_name = process_file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let seccomp_process_file = process_file.with_file_name(format!("seccomp-{file_name}"));
    std::fs::write(
        &seccomp_process_file,
        serde_json::to_vec(&seccomp.process).expect("a parsed process serializes"),
    )
    .context("writing the process file for libcontainer")?;
    let result = builder(common)?
        .with_executor(seccomp.executor)
        .as_tenant()
        .with_process(Some(&seccomp_process_file))
        .with_detach(true)
        .build();
    let _ = std::fs::remove_file(&seccomp_process_file);
    result?;
    Ok(())
}

/// The spec of a created container: the config.json of its bundle.
fn container_spec(common: &Common) -> Result<Spec> {
    let container = libcontainer::container::Container::load(common.root.join(&common.id))
        .context("loading the container's state")?;
    let config = container.bundle().join("config.json");
    Spec::load(&config).with_context(|| format!("reading {}", config.display()))
}

fn builder(common: &Common) -> Result<ContainerBuilder> {
    let mut builder = ContainerBuilder::new(common.id.clone(), SyscallType::default())
        .with_root_path(&common.root)?
        .with_pid_file(Some(&common.pid_file))?
        .with_console_socket(common.console_socket.as_ref());
    if common.console_socket.is_none() {
        // SAFETY: the agent passes these fds open and to nobody else; we
        // take ownership of each once.
        let [stdin, stdout, stderr] = STDIO_FDS.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        builder = builder
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr);
    }
    Ok(builder)
}
