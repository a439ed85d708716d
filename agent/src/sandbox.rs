//! The sandbox: every container of the VM, and the operations of the agent
//! API on them. Transport-free, so host-mode tests drive the same code.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_protocols::agent::Stdio;
use hull_protocols::stdio::{valid_id, StreamHeader};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};
use tokio::sync::mpsc;

use crate::cgroup;
use crate::container::{run_runtime, Container, Process, RuntimeError};
use crate::executable::{self, ExecutableError};
use crate::forker::Forker;
use crate::process_io::{AttachError, FdStream, ProcessIo};
use crate::propagation::PropagationSources;
use crate::reaper::{Exit, Reaper};

/// Errors of the agent API, each mapped to one ttrpc status code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("process {exec_id} not found in container {container_id}")]
    ProcessNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Executable(#[from] ExecutableError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {message}")]
    Container { context: String, message: String },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let context = context.into();
    move |source| AgentError::Io { context, source }
}

fn libcontainer_error(context: impl Into<String>) -> impl FnOnce(String) -> AgentError {
    let context = context.into();
    move |message| AgentError::Container { context, message }
}

pub type Result<T> = std::result::Result<T, AgentError>;

/// Where the agent keeps its container state.
pub struct Paths {
    /// libcontainer's state root.
    pub runtime_root: PathBuf,
    /// One bundle (config.json, exec process files) per container.
    pub bundles: PathBuf,
    /// Console sockets for terminal processes.
    pub consoles: PathBuf,
}

impl Paths {
    pub fn under(dir: &Path) -> Self {
        Paths {
            runtime_root: dir.join("runtime"),
            bundles: dir.join("bundles"),
            consoles: dir.join("consoles"),
        }
    }

    pub fn create(&self) -> std::io::Result<()> {
        for dir in [&self.runtime_root, &self.bundles, &self.consoles] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }
}

pub struct Sandbox {
    paths: Paths,
    reaper: Arc<Reaper>,
    /// Runs `hull-agent runtime` calls.
    forker: Forker,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// Numbers the console sockets: ids (CRI's are 64 characters each) would
    /// not fit a socket path.
    consoles_made: std::sync::atomic::AtomicU64,
    propagation: PropagationSources,
}

/// Where the shim puts a pod's memory-backed volumes (emptyDir with
/// `medium: Memory`): directories on the guest's /run tmpfs, shared by the
/// pod's containers, made on first use.
const POD_VOLUMES_DIR: &str = "/run/hull/pod-volumes";

fn make_pod_volumes(spec: &Spec) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    for mount in spec.mounts().iter().flatten() {
        let Some(source) = mount.source().as_deref() else {
            continue;
        };
        let Ok(name) = source.strip_prefix(POD_VOLUMES_DIR) else {
            continue;
        };
        if name.components().count() != 1 {
            return Err(AgentError::InvalidArgument {
                what: "OCI spec",
                reason: format!("pod volume {} is not one directory name", source.display()),
            });
        }
        if !source.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o777)
                .create(source)
                .map_err(io_error("creating a pod volume"))?;
            // As the kubelet's emptyDir: writable by any user of the pod.
            std::fs::set_permissions(source, std::fs::Permissions::from_mode(0o777))
                .map_err(io_error("creating a pod volume"))?;
        }
    }
    Ok(())
}

fn check_id(what: &'static str, id: &str) -> Result<()> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument {
            what,
            reason: format!("{id:?} is empty or has characters outside [A-Za-z0-9_.-]"),
        })
    }
}

impl Sandbox {
    pub fn new(paths: Paths, reaper: Arc<Reaper>, forker: Forker) -> Self {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Sandbox {
            paths,
            reaper,
            forker,
            containers: Mutex::new(HashMap::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
            consoles_made: Default::default(),
            propagation: PropagationSources::default(),
        }
    }

    /// A new path for a console socket, short whatever the ids.
    fn console_socket(&self) -> PathBuf {
        let n = self
            .consoles_made
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.paths.consoles.join(format!("{n}.sock"))
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .expect("containers lock")
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::ContainerNotFound(id.to_owned()))
    }

    pub fn process(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.container(container_id)?
            .process(exec_id)
            .ok_or_else(|| AgentError::ProcessNotFound {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
    }

    pub async fn create_container(&self, id: &str, spec_json: &[u8], stdio: &Stdio) -> Result<u32> {
        check_id("container id", id)?;
        if self
            .containers
            .lock()
            .expect("containers lock")
            .contains_key(id)
        {
            return Err(AgentError::AlreadyExists(format!("container {id}")));
        }
        let mut spec: Spec =
            serde_json::from_slice(spec_json).map_err(|e| AgentError::InvalidArgument {
                what: "OCI spec",
                reason: e.to_string(),
            })?;
        let rootfs = spec
            .root()
            .as_ref()
            .map(|root| root.path().clone())
            .filter(|path| path.is_absolute())
            .ok_or_else(|| AgentError::InvalidArgument {
                what: "OCI spec",
                reason: "root.path must be an absolute path in the guest".into(),
            })?;
        if !rootfs.is_dir() {
            return Err(AgentError::InvalidArgument {
                what: "OCI spec",
                reason: format!("rootfs {} is not a directory", rootfs.display()),
            });
        }
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| AgentError::InvalidArgument {
                what: "OCI spec",
                reason: "the spec has no process".into(),
            })?;
        check_executable(&rootfs, process)?;
        make_pod_volumes(&spec)?;
        if process.terminal().unwrap_or(false) != stdio.terminal {
            return Err(AgentError::InvalidArgument {
                what: "stdio",
                reason: "terminal must match the spec's process.terminal".into(),
            });
        }
        // libcontainer 0.7 loads the init's seccomp filter before dropping
        // capabilities only when noNewPrivileges is absent; when it is false
        // it loads it after, without CAP_SYS_ADMIN, and fails. Both mean the
        // same (containerd leaves a false one out), so false becomes absent.
        if let Some(process) = spec.process_mut() {
            if process.no_new_privileges() == Some(false) {
                process.set_no_new_privileges(None);
            }
        }

        // Every container gets a cgroup, so stats, pause and kill-all work.
        let mut linux = spec.linux().clone().unwrap_or_default();
        // runc takes rootfsPropagation as `rshared` as well as `shared` (and
        // containerd writes the former); libcontainer 0.7 knows only the
        // latter and applies it recursively anyway.
        if let Some(propagation) = linux.rootfs_propagation().clone() {
            if let Some(plain) = propagation
                .strip_prefix('r')
                .filter(|p| matches!(*p, "shared" | "slave" | "private" | "unbindable"))
            {
                linux.set_rootfs_propagation(Some(plain.to_owned()));
            }
        }
        let cgroups_path = linux
            .cgroups_path()
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/hull/{id}")));
        // The agent makes the cgroup's parents: they must be under the root.
        if cgroups_path
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(AgentError::InvalidArgument {
                what: "OCI spec",
                reason: format!(
                    "linux.cgroupsPath {} has . or .. in it",
                    cgroups_path.display()
                ),
            });
        }
        linux.set_cgroups_path(Some(cgroups_path.clone()));
        spec.set_linux(Some(linux));

        let bundle = self.paths.bundles.join(id);
        std::fs::create_dir_all(&bundle).map_err(io_error("creating the bundle"))?;
        let result = match self.propagation.acquire(id, &spec) {
            Ok(()) => {
                self.spawn_init(id, &bundle, &spec, stdio, rootfs, cgroups_path)
                    .await
            }
            Err(err) => Err(io_error("preparing a mount that propagates")(err)),
        };
        if result.is_err() {
            self.propagation.release(id);
            let _ = std::fs::remove_dir_all(&bundle);
            let _ = delete_runtime_state(&self.paths.runtime_root, id);
        }
        result
    }

    async fn spawn_init(
        &self,
        id: &str,
        bundle: &Path,
        spec: &Spec,
        stdio: &Stdio,
        rootfs: PathBuf,
        cgroups_path: PathBuf,
    ) -> Result<u32> {
        let config = serde_json::to_vec_pretty(spec).expect("a parsed spec serializes");
        std::fs::write(bundle.join("config.json"), config)
            .map_err(io_error("writing config.json"))?;
        let cgroup = cgroup::cgroup_dir(&cgroups_path);
        cgroup::create_parents(&cgroup).map_err(io_error(format!(
            "creating the parents of cgroup {}",
            cgroup.display()
        )))?;
        let (io, child_stdio) = ProcessIo::new(stdio).map_err(io_error("creating stdio"))?;
        let pid_file = bundle.join("init.pid");
        let console = stdio.terminal.then(|| self.console_socket());
        let args = vec![
            "create".into(),
            "--root".into(),
            path_arg(&self.paths.runtime_root),
            "--id".into(),
            id.into(),
            "--pid-file".into(),
            path_arg(&pid_file),
            "--bundle".into(),
            path_arg(bundle),
        ];
        let spawned = run_runtime(
            &self.forker,
            &self.reaper,
            args,
            &pid_file,
            child_stdio,
            console.as_deref(),
        )
        .await?;
        if let Some(master) = spawned.terminal {
            io.set_terminal(master);
        }
        let oom_watch = tokio::spawn(crate::oom::watch(
            id.to_owned(),
            cgroup.clone(),
            self.oom_tx.clone(),
        ))
        .abort_handle();
        let container = Arc::new(Container {
            bundle: bundle.to_owned(),
            rootfs,
            cgroup,
            cgroups_path,
            init: Process::new(spawned.pid, io, spawned.exited),
            execs: Mutex::new(HashMap::new()),
            oom_watch,
        });
        self.containers
            .lock()
            .expect("containers lock")
            .insert(id.to_owned(), container);
        tracing::info!(container = id, pid = spawned.pid, "container created");
        Ok(spawned.pid as u32)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let container = self.container(id)?;
        self.with_runtime_container(id, "starting the container", |c| c.start())
            .await?;
        tracing::info!(
            container = id,
            pid = container.init.pid,
            "container started"
        );
        Ok(())
    }

    pub async fn exec_process(
        &self,
        container_id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: &Stdio,
    ) -> Result<u32> {
        check_id("exec id", exec_id)?;
        let container = self.container(container_id)?;
        if container.init.exited().is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {container_id} is not running"
            )));
        }
        if container.process(exec_id).is_some() {
            return Err(AgentError::AlreadyExists(format!(
                "process {exec_id} in container {container_id}"
            )));
        }
        let process: OciProcess =
            serde_json::from_slice(process_json).map_err(|e| AgentError::InvalidArgument {
                what: "OCI process",
                reason: e.to_string(),
            })?;
        check_executable(&container.rootfs, &process)?;
        if process.terminal().unwrap_or(false) != stdio.terminal {
            return Err(AgentError::InvalidArgument {
                what: "stdio",
                reason: "terminal must match the process's terminal".into(),
            });
        }
        let process_file = container.bundle.join(format!("exec-{exec_id}.json"));
        std::fs::write(&process_file, process_json)
            .map_err(io_error("writing the exec process"))?;
        let (io, child_stdio) = ProcessIo::new(stdio).map_err(io_error("creating stdio"))?;
        let pid_file = container.bundle.join(format!("exec-{exec_id}.pid"));
        let console = stdio.terminal.then(|| self.console_socket());
        let args = vec![
            "exec".into(),
            "--root".into(),
            path_arg(&self.paths.runtime_root),
            "--id".into(),
            container_id.into(),
            "--pid-file".into(),
            path_arg(&pid_file),
            "--process".into(),
            path_arg(&process_file),
        ];
        let result = run_runtime(
            &self.forker,
            &self.reaper,
            args,
            &pid_file,
            child_stdio,
            console.as_deref(),
        )
        .await;
        let _ = std::fs::remove_file(&process_file);
        let spawned = result?;
        if let Some(master) = spawned.terminal {
            io.set_terminal(master);
        }
        let process = Process::new(spawned.pid, io, spawned.exited);
        container
            .execs
            .lock()
            .expect("execs lock")
            .insert(exec_id.to_owned(), process);
        tracing::info!(
            container = container_id,
            exec = exec_id,
            pid = spawned.pid,
            "process started"
        );
        Ok(spawned.pid as u32)
    }

    pub fn signal(&self, container_id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let signal = Signal::try_from(signal as i32).map_err(|_| AgentError::InvalidArgument {
            what: "signal",
            reason: format!("{signal} is not a signal"),
        })?;
        let container = self.container(container_id)?;
        if all {
            for pid in cgroup::pids(&container.cgroup) {
                let _ = kill(Pid::from_raw(pid as i32), signal);
            }
            return Ok(());
        }
        let process = self.process(container_id, exec_id)?;
        if process.exited().is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "process {} of container {container_id} has already exited",
                display_exec(exec_id)
            )));
        }
        kill(Pid::from_raw(process.pid), signal).map_err(|errno| AgentError::Io {
            context: format!("signalling pid {}", process.pid),
            source: errno.into(),
        })
    }

    pub async fn wait(&self, container_id: &str, exec_id: &str) -> Result<Exit> {
        let process = self.process(container_id, exec_id)?;
        process
            .wait()
            .await
            .ok_or_else(|| AgentError::FailedPrecondition("the agent lost the process".into()))
    }

    pub fn resize(&self, container_id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<()> {
        let process = self.process(container_id, exec_id)?;
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        process
            .io
            .resize(clamp(rows), clamp(columns))
            .map_err(io_error("resizing the terminal"))
    }

    pub fn attach(&self, header: &StreamHeader) -> Result<FdStream> {
        let process = self.process(&header.container_id, &header.exec_id)?;
        Ok(process.io.attach(header.kind)?)
    }

    /// Removes a stopped container. With `force`, kills its processes first.
    pub async fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let container = self.container(id)?;
        if container.init.exited().is_none() {
            if !force {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {id} is still running; kill it first"
                )));
            }
            for pid in cgroup::pids(&container.cgroup) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(container.init.pid), Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(10), container.init.wait()).await;
        }
        let root = self.paths.runtime_root.clone();
        let id_owned = id.to_owned();
        tokio::task::spawn_blocking(move || delete_runtime_state(&root, &id_owned))
            .await
            .expect("delete task")
            .map_err(libcontainer_error(format!("deleting container {id}")))?;
        container.oom_watch.abort();
        self.propagation.release(id);
        let _ = std::fs::remove_dir_all(&container.bundle);
        self.containers.lock().expect("containers lock").remove(id);
        tracing::info!(container = id, "container removed");
        Ok(())
    }

    /// Removes every container, killing what still runs.
    pub async fn remove_all(&self) -> Result<()> {
        let ids: Vec<String> = self
            .containers
            .lock()
            .expect("containers lock")
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.remove_container(&id, true).await?;
        }
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.container(id)?;
        self.with_runtime_container(id, "pausing the container", |c| c.pause())
            .await
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.container(id)?;
        self.with_runtime_container(id, "resuming the container", |c| c.resume())
            .await
    }

    pub fn stats(&self, id: &str) -> Result<hull_protocols::agent::StatsContainerResponse> {
        Ok(cgroup::stats(&self.container(id)?.cgroup))
    }

    pub fn list_processes(&self, id: &str) -> Result<Vec<u32>> {
        Ok(cgroup::pids(&self.container(id)?.cgroup))
    }

    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
        let container = self.container(id)?;
        let resources: LinuxResources =
            serde_json::from_slice(resources_json).map_err(|e| AgentError::InvalidArgument {
                what: "OCI linux.resources",
                reason: e.to_string(),
            })?;
        let config = CgroupConfig {
            cgroup_path: container.cgroups_path.clone(),
            systemd_cgroup: false,
            container_name: id.to_owned(),
        };
        tokio::task::spawn_blocking(move || {
            let manager =
                libcgroups::common::create_cgroup_manager(config).map_err(|e| e.to_string())?;
            manager
                .apply(&ControllerOpt {
                    resources: &resources,
                    disable_oom_killer: false,
                    oom_score_adj: None,
                    freezer_state: None,
                })
                .map_err(|e| e.to_string())
        })
        .await
        .expect("update task")
        .map_err(libcontainer_error(format!(
            "updating the resources of {id}"
        )))
    }

    /// Waits for the next OOM kill in any container and names the container.
    pub async fn next_oom(&self) -> Option<String> {
        self.oom_rx.lock().await.recv().await
    }

    async fn with_runtime_container(
        &self,
        id: &str,
        context: &str,
        operation: impl FnOnce(
                &mut libcontainer::container::Container,
            ) -> std::result::Result<(), libcontainer::error::LibcontainerError>
            + Send
            + 'static,
    ) -> Result<()> {
        let state_dir = self.paths.runtime_root.join(id);
        tokio::task::spawn_blocking(move || {
            let mut container =
                libcontainer::container::Container::load(state_dir).map_err(|e| e.to_string())?;
            operation(&mut container).map_err(|e| e.to_string())
        })
        .await
        .expect("libcontainer task")
        .map_err(libcontainer_error(format!("{context} {id}")))
    }
}

fn check_executable(rootfs: &Path, process: &OciProcess) -> Result<()> {
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    executable::resolve(rootfs, process.cwd(), &args, &env)?;
    Ok(())
}

/// Removes libcontainer's state (and cgroup) of a container, if it has any.
fn delete_runtime_state(root: &Path, id: &str) -> std::result::Result<(), String> {
    let dir = root.join(id);
    if !dir.exists() {
        return Ok(());
    }
    let mut container =
        libcontainer::container::Container::load(dir.clone()).map_err(|e| e.to_string())?;
    container.delete(true).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn display_exec(exec_id: &str) -> &str {
    if exec_id.is_empty() {
        "init"
    } else {
        exec_id
    }
}
