//! The containers of one sandbox and their lifecycle, whoever asks: the
//! containerd adapter (`task`) translates the Task API into these calls.
//!
//! - The sandbox's VM is a [`Phase`] others can see and wait on: the first
//!   container starts the boot and returns; containers created while it
//!   boots wait for it in the background; Start waits for their creation.
//!   State, Pids, Kill and Wait answer at once whatever the VM is doing.
//! - Each container has its own record and its own lock (`container`);
//!   nothing is held across a boot, and one container's slow call never
//!   holds up another's.
//! - What happens is sent, in order, as [`Event`]s.
//!
//! `agent` is the trait in front of the guest agent and `vm` the one in
//! front of the VM, so the state machine is tested without either
//! (`tests`).

mod agent;
mod calls;
mod container;
mod error;
mod events;
mod process;
mod stdio;
#[cfg(test)]
mod tests;
mod vm;
mod vm_bound;
mod watchers;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use oci_spec::runtime::Spec;
use tokio::sync::{mpsc, oneshot, watch};

pub use self::agent::{Agent, AgentResult, GuestExit, AGENT_CALL};
use self::container::{Creation, GuestCreate, ManagedContainer};
use self::error::agent_failed;
pub use self::error::LifecycleError;
pub use self::events::Event;
pub use self::process::{ProcessExit, ProcessStatus, UNKNOWN_EXIT};
pub use self::stdio::{CallerStreams, IoError, StdioPaths, StdioWiring};
pub use self::vm::{
    AheadLauncher, BootRequest, BootedVm, Cancel, ContainerShareError, Launcher, VmLauncher,
};
use crate::config::Config;
use crate::hypervisor::VmExit;
use crate::pod::{network_namespace, vm_size, Role};
use crate::rootfs::RootfsMountSpec;
use crate::sandbox::{self, Progress, SandboxOptions, GUEST_SHARE_DIR};
use crate::spec::{guest_spec, sandbox_id, shm_source, GuestSpec, Host, PodContext};

/// A container to create.
pub struct ContainerRequest {
    pub id: String,
    pub bundle: String,
    pub spec: Spec,
    pub rootfs: Vec<RootfsMountSpec>,
    pub stdio: StdioWiring,
    /// Hull's configuration for this container's sandbox, should it boot one.
    pub config: Config,
}

/// What State reports of a process.
#[derive(Debug, Clone)]
pub struct ProcessState {
    pub bundle: String,
    pub pid: u32,
    pub status: ProcessStatus,
    pub stdio: StdioPaths,
    pub exit: Option<ProcessExit>,
}

/// Where the sandbox's VM is.
#[derive(Clone)]
enum Phase {
    /// No container has asked for it yet.
    Empty,
    Booting {
        id: String,
    },
    Up {
        id: String,
        vm: Arc<Booted>,
    },
    Failed {
        id: String,
        error: Arc<sandbox::SandboxError>,
    },
    /// Shut down; a shim serves one sandbox once.
    Stopped,
}

/// A running VM as the manager shares it between calls.
struct Booted {
    agent: Arc<dyn Agent>,
    exit: watch::Receiver<Option<VmExit>>,
    /// Taken by the shutdown.
    vm: Mutex<Option<Box<dyn BootedVm>>>,
}

impl Booted {
    fn alive(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// Whether the VM ends within `grace`: an agent call that failed on
    /// its transport (the VMM killed under it) comes back a moment before
    /// the VM's exit does.
    async fn ends_within(&self, grace: std::time::Duration) -> bool {
        let mut exit = self.exit.clone();
        tokio::time::timeout(grace, exit.wait_for(Option::is_some))
            .await
            .is_ok_and(|ended| ended.is_ok())
    }

    fn with_vm<T>(&self, f: impl FnOnce(&dyn BootedVm) -> T) -> Option<T> {
        let vm = self.vm.lock().expect("vm lock");
        vm.as_deref().map(f)
    }
}

/// The sandbox and its containers. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    launcher: Arc<dyn Launcher>,
    progress: Arc<Progress>,
    events: mpsc::UnboundedSender<Event>,
    phase: watch::Sender<Phase>,
    /// Ends a boot in progress early.
    cancel_boot: Mutex<Option<oneshot::Sender<String>>>,
    /// The boot task, awaited by a shutdown that cancelled it.
    boot_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    containers: Mutex<HashMap<String, Arc<ManagedContainer>>>,
    pod: Mutex<PodContext>,
}

impl Manager {
    /// A manager whose events arrive on the returned receiver.
    pub fn new(
        launcher: Arc<dyn Launcher>,
        progress: Arc<Progress>,
    ) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let inner = Inner {
            launcher,
            progress,
            events,
            phase: watch::channel(Phase::Empty).0,
            cancel_boot: Mutex::new(None),
            boot_task: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            pod: Mutex::new(PodContext::default()),
        };
        (
            Manager {
                inner: Arc::new(inner),
            },
            receiver,
        )
    }

    fn send(&self, event: Event) {
        // Nobody listening (the adapter is gone) is not an error here.
        let _ = self.inner.events.send(event);
    }

    fn container(&self, id: &str) -> Result<Arc<ManagedContainer>, LifecycleError> {
        self.inner
            .containers
            .lock()
            .expect("containers lock")
            .get(id)
            .cloned()
            .ok_or_else(|| LifecycleError::ContainerNotFound(id.to_owned()))
    }

    fn container_ids(&self) -> Vec<String> {
        let containers = self.inner.containers.lock().expect("containers lock");
        containers.keys().cloned().collect()
    }

    fn has_containers(&self) -> bool {
        !self
            .inner
            .containers
            .lock()
            .expect("containers lock")
            .is_empty()
    }

    /// The running VM, if it runs.
    fn booted(&self) -> Option<Arc<Booted>> {
        match &*self.inner.phase.borrow() {
            Phase::Up { vm, .. } => Some(vm.clone()),
            _ => None,
        }
    }

    fn agent(&self) -> Result<Arc<dyn Agent>, LifecycleError> {
        self.booted()
            .map(|vm| vm.agent.clone())
            .ok_or(LifecycleError::VmNotRunning)
    }

    /// The sandbox's id, once a container has named it.
    pub fn sandbox_id(&self) -> Option<String> {
        match &*self.inner.phase.borrow() {
            Phase::Booting { id } | Phase::Up { id, .. } | Phase::Failed { id, .. } => {
                Some(id.clone())
            }
            Phase::Empty | Phase::Stopped => None,
        }
    }

    /// Whether the sandbox's VM is booting (for tests and `hull run -v`).
    pub fn booting(&self) -> bool {
        matches!(*self.inner.phase.borrow(), Phase::Booting { .. })
    }

    /// Creates a container. Everything the guest cannot do is refused here,
    /// before a VM starts. The first container starts the sandbox's boot
    /// and returns at once (pid 0); it, and any container created while the
    /// VM boots, is created in the guest once the VM is up, and Start waits
    /// for that. Once the VM runs, the container is created in the guest
    /// before this returns.
    pub async fn create(&self, request: ContainerRequest) -> Result<u32, LifecycleError> {
        let ContainerRequest {
            id,
            bundle,
            spec,
            rootfs,
            stdio,
            config,
        } = request;
        stdio.validate()?;
        let sandbox_id = sandbox_id(&spec, &id);
        crate::ids::validate("container id", &id)?;
        crate::ids::validate(
            "sandbox id (annotation io.kubernetes.cri.sandbox-id)",
            &sandbox_id,
        )?;
        let role = Role::of(&spec);
        let options = SandboxOptions {
            size: vm_size(&spec, &config)?,
            netns: (role == Role::Sandbox)
                .then(|| network_namespace(&spec))
                .flatten(),
            hostname: spec.hostname().clone().unwrap_or_default(),
        };
        let sandbox_shm = (role == Role::Sandbox).then(|| shm_source(&spec)).flatten();
        // Everything the guest cannot do is refused before a VM starts; the
        // spec is made again at creation, with the pod as it is then.
        self.guest_spec(&spec, &id)?;
        let paths = stdio.paths();
        let create = GuestCreate {
            spec,
            rootfs,
            stdio,
        };

        let container = Arc::new(ManagedContainer::new(
            &id,
            &bundle,
            paths.clone(),
            Creation::Waiting,
        ));
        {
            let mut containers = self.inner.containers.lock().expect("containers lock");
            if containers.contains_key(&id) {
                return Err(LifecycleError::ContainerExists(id));
            }
            containers.insert(id.clone(), container.clone());
        }
        if role == Role::Sandbox {
            self.inner.pod.lock().expect("pod lock").sandbox_shm = sandbox_shm;
        }
        let rootfs_mounts = create.rootfs.clone();
        let joined = self.join_sandbox(&sandbox_id, &id, &config, &options);
        let result = match joined {
            Ok(None) => {
                self.create_when_booted(container, role, create);
                Ok(0)
            }
            Ok(Some(vm)) => {
                let _ops = container.ops.lock().await;
                self.create_in_guest(&container, &vm, role, create).await
            }
            Err(err) => Err(err),
        };
        match result {
            Ok(pid) => {
                self.send(Event::Created {
                    id,
                    bundle,
                    rootfs: rootfs_mounts,
                    stdio: paths,
                    pid,
                });
                Ok(pid)
            }
            Err(err) => {
                self.inner
                    .containers
                    .lock()
                    .expect("containers lock")
                    .remove(&id);
                if !self.has_containers() {
                    self.shutdown_sandbox().await;
                }
                Err(err)
            }
        }
    }

    /// Joins the container to the sandbox `sandbox_id`, starting its boot if
    /// nobody has: the VM if it runs, `None` if it is booting.
    fn join_sandbox(
        &self,
        sandbox_id: &str,
        container_id: &str,
        config: &Config,
        options: &SandboxOptions,
    ) -> Result<Option<Arc<Booted>>, LifecycleError> {
        let current = self.inner.phase.borrow().clone();
        let (ours, joined) = match current {
            Phase::Empty => {
                self.inner.launcher.preflight(config, options)?;
                // Only one caller starts the boot.
                let started = self.inner.phase.send_if_modified(|phase| {
                    let empty = matches!(phase, Phase::Empty);
                    if empty {
                        *phase = Phase::Booting {
                            id: sandbox_id.to_owned(),
                        };
                    }
                    empty
                });
                if started {
                    self.start_boot(sandbox_id, config.clone(), options.clone());
                    return Ok(None);
                }
                return self.join_sandbox(sandbox_id, container_id, config, options);
            }
            Phase::Booting { id } => (id, Ok(None)),
            Phase::Up { id, vm } => (id, Ok(Some(vm))),
            Phase::Failed { id, error } => (id, Err(LifecycleError::Sandbox(error))),
            Phase::Stopped => return Err(LifecycleError::VmNotRunning),
        };
        if ours != sandbox_id {
            return Err(LifecycleError::OtherSandbox {
                container: container_id.to_owned(),
                wanted: sandbox_id.to_owned(),
                ours,
            });
        }
        joined
    }

    fn start_boot(&self, id: &str, config: Config, options: SandboxOptions) {
        let (cancel_tx, cancel_rx) = oneshot::channel::<String>();
        *self.inner.cancel_boot.lock().expect("cancel lock") = Some(cancel_tx);
        let request = BootRequest {
            config,
            id: id.to_owned(),
            options,
            progress: self.inner.progress.clone(),
        };
        let cancel: Cancel = Box::pin(async move {
            cancel_rx
                .await
                .unwrap_or_else(|_| "the shim stopped the boot".to_owned())
        });
        let manager = self.clone();
        let id = id.to_owned();
        let task = tokio::spawn(async move {
            let booted = manager.inner.launcher.boot(request, cancel).await;
            manager.finish_boot(id, booted).await;
        });
        *self.inner.boot_task.lock().expect("boot task lock") = Some(task);
    }

    /// Records the boot's outcome, unless the sandbox was shut down
    /// meanwhile: then a VM that came up anyway is stopped.
    async fn finish_boot(
        &self,
        id: String,
        booted: Result<Box<dyn BootedVm>, sandbox::SandboxError>,
    ) {
        let next = match booted {
            Ok(vm) => Phase::Up {
                id: id.clone(),
                vm: Arc::new(Booted {
                    agent: Arc::new(vm_bound::VmBoundAgent::new(vm.agent(), vm.exit_watch())),
                    exit: vm.exit_watch(),
                    vm: Mutex::new(Some(vm)),
                }),
            },
            Err(err) => Phase::Failed {
                id: id.clone(),
                error: Arc::new(err),
            },
        };
        let recorded = self.inner.phase.send_if_modified(|phase| {
            let booting = matches!(phase, Phase::Booting { .. });
            if booting {
                *phase = next.clone();
            }
            booting
        });
        match (recorded, next) {
            (true, Phase::Up { vm, .. }) => self.watch_vm(vm),
            (true, Phase::Failed { error, .. }) => {
                tracing::warn!(sandbox = %id, %error, "the sandbox VM did not start")
            }
            (false, Phase::Up { vm, .. }) => {
                let taken = vm.vm.lock().expect("vm lock").take();
                if let Some(vm) = taken {
                    vm.shutdown().await;
                }
            }
            _ => {}
        }
    }

    /// Creates a container that waits for the VM once the VM is up.
    fn create_when_booted(
        &self,
        container: Arc<ManagedContainer>,
        role: Role,
        create: GuestCreate,
    ) {
        let manager = self.clone();
        tokio::spawn(async move {
            let mut phase = manager.inner.phase.subscribe();
            let settled = phase
                .wait_for(|p| !matches!(p, Phase::Booting { .. }))
                .await
                .map(|p| p.clone());
            let _ops = container.ops.lock().await;
            if !container.waiting_for_vm() {
                return; // killed or deleted meanwhile
            }
            let result = match settled {
                Ok(Phase::Up { vm, .. }) => {
                    manager.create_in_guest(&container, &vm, role, create).await
                }
                Ok(Phase::Failed { error, .. }) => Err(LifecycleError::Sandbox(error)),
                _ => Err(LifecycleError::VmNotRunning),
            };
            if let Err(err) = &result {
                tracing::warn!(container = %container.id, %err, "creating the container");
            }
            container
                .creation
                .send_replace(Creation::Done(result.map_err(Arc::new)));
        });
    }

    /// Puts the container's files in the share and creates it in the guest,
    /// with its stdio attached. Called with the container's `ops` lock.
    async fn create_in_guest(
        &self,
        container: &ManagedContainer,
        vm: &Booted,
        role: Role,
        create: GuestCreate,
    ) -> Result<u32, LifecycleError> {
        let id = &container.id;
        let created = async {
            let guest = self.guest_spec(&create.spec, id)?;
            vm.with_vm(|v| v.mount_container(id, &create.rootfs, &guest.shares))
                .ok_or(LifecycleError::VmNotRunning)??;
            let spec = serde_json::to_vec(&guest.spec).expect("spec serializes");
            let pid = vm
                .agent
                .create_container(id, spec, create.stdio.request())
                .await
                .map_err(agent_failed("creating the container in the guest"))?;
            self.inner.progress.step("container created");
            let io = stdio::ProcessIo::attach(vm.agent.as_ref(), id, "", &create.stdio).await?;
            Ok::<_, LifecycleError>((pid, io))
        }
        .await;
        match created {
            Ok((pid, io)) => {
                {
                    let mut record = container.record();
                    record.init.pid = pid;
                    record.init.io = Some(io);
                }
                if role == Role::Sandbox {
                    self.inner.pod.lock().expect("pod lock").sandbox_pid = Some(pid);
                }
                container.creation.send_replace(Creation::Done(Ok(pid)));
                Ok(pid)
            }
            Err(err) => {
                vm.with_vm(|v| v.unmount_container(id));
                Err(err)
            }
        }
    }

    /// The container's spec as the guest runs it, in the pod as it is now.
    fn guest_spec(&self, spec: &Spec, id: &str) -> Result<GuestSpec, LifecycleError> {
        let pod = self.inner.pod.lock().expect("pod lock").clone();
        Ok(guest_spec(
            spec.clone(),
            id,
            Path::new(GUEST_SHARE_DIR),
            &pod,
            &Host::default(),
        )?)
    }

    /// The streams of a container created with [`StdioWiring::Caller`], once.
    pub fn take_streams(&self, id: &str) -> Result<Option<CallerStreams>, LifecycleError> {
        let container = self.container(id)?;
        let mut record = container.record();
        Ok(record
            .init
            .io
            .as_mut()
            .and_then(stdio::ProcessIo::take_caller_streams))
    }

    /// Stops the VM (a boot in progress is cancelled) and everything around
    /// it. Idempotent.
    async fn shutdown_sandbox(&self) {
        let previous = self.inner.phase.send_replace(Phase::Stopped);
        match previous {
            Phase::Booting { id } => {
                tracing::info!(sandbox = %id, "cancelling the sandbox's boot");
                let cancel = self.inner.cancel_boot.lock().expect("cancel lock").take();
                if let Some(cancel) = cancel {
                    let _ = cancel.send("the sandbox was removed while its VM booted".into());
                }
                let task = self.inner.boot_task.lock().expect("boot task lock").take();
                if let Some(task) = task {
                    let _ = task.await;
                }
            }
            Phase::Up { vm, .. } => {
                let taken = vm.vm.lock().expect("vm lock").take();
                if let Some(vm) = taken {
                    vm.shutdown().await;
                }
            }
            Phase::Empty | Phase::Failed { .. } | Phase::Stopped => {}
        }
    }

    /// Ends the sandbox whatever its containers are doing: for `hull run`
    /// and `hull bench`, which own the whole sandbox.
    pub async fn destroy(&self) {
        self.inner
            .containers
            .lock()
            .expect("containers lock")
            .clear();
        self.shutdown_sandbox().await;
    }

    /// The VM's host processes, while it runs: the VMM's pid, and every
    /// process of the sandbox (for accounting).
    pub fn host_processes(&self) -> Option<(Option<u32>, Vec<u32>)> {
        self.booted()
            .and_then(|vm| vm.with_vm(|v| (v.vmm_pid(), v.host_pids())))
    }

    /// containerd's Shutdown: ends the sandbox once it has no containers.
    /// True if it did (the shim may exit).
    pub async fn shutdown(&self) -> bool {
        if self.has_containers() {
            return false;
        }
        self.shutdown_sandbox().await;
        true
    }
}
