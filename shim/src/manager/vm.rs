//! What the manager needs of a sandbox's VM, as traits: [`Launcher`] boots
//! one, [`BootedVm`] is one that runs. [`VmLauncher`] and [`SandboxVm`] are
//! the real ones; the lifecycle tests use fakes, with no VM.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;

use super::agent::Agent;
use crate::config::Config;
use crate::hypervisor::{Fault, VmExit};
use crate::rootfs::{RootfsMountSpec, ShareBind, ShareError};
use crate::sandbox::{self, Progress, SandboxOptions, SandboxVm};
use crate::spec::HostShare;

/// Ends a boot early, with why.
pub type Cancel = Pin<Box<dyn Future<Output = String> + Send>>;

/// What a sandbox is booted with.
pub struct BootRequest {
    pub config: Config,
    pub id: String,
    pub options: SandboxOptions,
    pub progress: Arc<Progress>,
}

#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// What can be checked before anything starts (assets, programs, the
    /// backend on this host).
    fn preflight(
        &self,
        config: &Config,
        options: &SandboxOptions,
    ) -> Result<(), sandbox::SandboxError> {
        SandboxVm::preflight(config, options)
    }
    /// Boots the VM to a ready agent, or tears down what it started.
    async fn boot(
        &self,
        request: BootRequest,
        cancel: Cancel,
    ) -> Result<Box<dyn BootedVm>, sandbox::SandboxError>;
}

#[async_trait]
pub trait BootedVm: Send + Sync + 'static {
    fn agent(&self) -> Arc<dyn Agent>;
    /// The VM's end (`None` while it runs).
    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>>;
    /// Puts a container's rootfs and host shares in the sandbox's share.
    fn mount_container(
        &self,
        id: &str,
        rootfs: &[RootfsMountSpec],
        shares: &[HostShare],
    ) -> Result<(), ContainerShareError>;
    /// Undoes `mount_container` and removes what the container left in the share.
    fn unmount_container(&self, id: &str);
    /// The VMM's pid, while it runs.
    fn vmm_pid(&self) -> Option<u32>;
    /// Every host process of the sandbox (VMM, virtiofsd, the vsock backend).
    fn host_pids(&self) -> Vec<u32>;
    /// Kills the VM at once because a part of the sandbox failed; its exit
    /// then reads [`VmExit::Failed`].
    fn fail(&self, fault: Fault);
    /// Stops the VM and everything around it.
    async fn shutdown(self: Box<Self>);
}

/// Why a container's files could not be put in the share.
#[derive(Debug, thiserror::Error)]
pub enum ContainerShareError {
    #[error("Mounting the container's rootfs: {0}")]
    Rootfs(#[source] ShareError),
    #[error("Sharing a volume: {0}")]
    Volume(#[source] ShareError),
}

/// Boots real sandbox VMs.
pub struct VmLauncher;

#[async_trait]
impl Launcher for VmLauncher {
    async fn boot(
        &self,
        request: BootRequest,
        cancel: Cancel,
    ) -> Result<Box<dyn BootedVm>, sandbox::SandboxError> {
        let vm = SandboxVm::start_unless(
            &request.config,
            &request.id,
            &request.options,
            &request.progress,
            cancel,
        )
        .await?;
        Ok(RunningVm::boxed(vm))
    }
}

/// Hands out a VM a pool booted ahead, when the sandbox asks for what it
/// was booted with (the same configuration and size) and it still runs;
/// otherwise it is stopped and the sandbox boots its own.
pub struct AheadLauncher {
    config: Config,
    ahead: Mutex<Option<SandboxVm>>,
}

impl AheadLauncher {
    pub fn new(config: Config, vm: SandboxVm) -> Self {
        AheadLauncher {
            config,
            ahead: Mutex::new(Some(vm)),
        }
    }

    /// Stops the VM booted ahead if no sandbox took it.
    pub async fn stop_unused(&self) {
        let ahead = self.ahead.lock().expect("ahead lock").take();
        if let Some(vm) = ahead {
            vm.shutdown().await;
        }
    }

    /// Why the VM booted ahead cannot serve `request`, if it cannot.
    fn mismatch(&self, vm: &SandboxVm, request: &BootRequest) -> Option<String> {
        if let Some(exit) = vm.exit_watch().borrow().as_ref() {
            return Some(format!("it ended while it waited ({exit})"));
        }
        if request.config != self.config {
            return Some("the sandbox asks for another Hull configuration".into());
        }
        let (had, wants) = (vm.size(), request.options.size);
        if had != wants {
            return Some(format!(
                "it has {} vCPUs and {} MiB, the sandbox asks for {} and {}",
                had.vcpus, had.memory_mib, wants.vcpus, wants.memory_mib
            ));
        }
        None
    }
}

#[async_trait]
impl Launcher for AheadLauncher {
    async fn boot(
        &self,
        request: BootRequest,
        cancel: Cancel,
    ) -> Result<Box<dyn BootedVm>, sandbox::SandboxError> {
        let ahead = self.ahead.lock().expect("ahead lock").take();
        let Some(mut vm) = ahead else {
            return VmLauncher.boot(request, cancel).await;
        };
        if let Some(why) = self.mismatch(&vm, &request) {
            tracing::info!(vm = %vm.name, %why, "not using the VM booted ahead");
            vm.shutdown().await;
            return VmLauncher.boot(request, cancel).await;
        }
        let claimed = tokio::select! {
            claimed = vm.claim(&request.id, &request.options, &request.progress) => claimed,
            why = cancel => Err(sandbox::SandboxError::Cancelled(why)),
        };
        match claimed {
            Ok(()) => Ok(RunningVm::boxed(vm)),
            Err(err) => {
                vm.shutdown().await;
                Err(err)
            }
        }
    }
}

struct RunningVm {
    vm: SandboxVm,
    agent: Arc<dyn Agent>,
    /// The pod volumes in the share, with the containers using each.
    pod_volumes: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl RunningVm {
    fn boxed(vm: SandboxVm) -> Box<dyn BootedVm> {
        let agent: Arc<dyn Agent> = Arc::new(vm.agent().clone());
        Box::new(RunningVm {
            vm,
            agent,
            pod_volumes: Mutex::default(),
        })
    }
}

#[async_trait]
impl BootedVm for RunningVm {
    fn agent(&self) -> Arc<dyn Agent> {
        self.agent.clone()
    }

    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.vm.exit_watch()
    }

    fn mount_container(
        &self,
        id: &str,
        rootfs: &[RootfsMountSpec],
        shares: &[HostShare],
    ) -> Result<(), ContainerShareError> {
        let share = self.vm.share();
        share
            .mount_rootfs(id, rootfs)
            .map_err(ContainerShareError::Rootfs)?;
        let mut pod_volumes = self.pod_volumes.lock().expect("pod volumes lock");
        for host in shares {
            let bound = host
                .pod_volume
                .as_ref()
                .is_some_and(|name| pod_volumes.contains_key(name));
            if !bound {
                let bind = ShareBind {
                    source: host.source.clone(),
                    read_only: host.read_only,
                    recursive: host.recursive,
                    recursive_read_only: host.recursive_read_only,
                    // A pod volume asks for propagation (spec.rs).
                    receives_host_mounts: host.pod_volume.is_some(),
                };
                if let Err(err) = share.bind(&bind, &host.share_path) {
                    // A pod volume's directory is no container's, so the
                    // caller's unmount_container would not take it.
                    if let Some(name) = &host.pod_volume {
                        share.remove_pod_volume(name);
                    }
                    return Err(ContainerShareError::Volume(err));
                }
            }
            if let Some(name) = &host.pod_volume {
                pod_volumes
                    .entry(name.clone())
                    .or_default()
                    .insert(id.to_owned());
            }
        }
        Ok(())
    }

    fn unmount_container(&self, id: &str) {
        let share = self.vm.share();
        let leftovers = share.remove_container(id);
        if !leftovers.is_empty() {
            tracing::warn!(container = %id, ?leftovers, "left in the share");
        }
        let mut pod_volumes = self.pod_volumes.lock().expect("pod volumes lock");
        // An entry exists only while a container uses the volume.
        pod_volumes.retain(|name, users| {
            if !users.remove(id) || !users.is_empty() {
                return true;
            }
            let leftovers = share.remove_pod_volume(name);
            if !leftovers.is_empty() {
                tracing::warn!(volume = %name, ?leftovers, "left in the share");
            }
            false
        });
    }

    fn vmm_pid(&self) -> Option<u32> {
        self.vm.vmm_pid()
    }

    fn host_pids(&self) -> Vec<u32> {
        self.vm.pids()
    }

    fn fail(&self, fault: Fault) {
        self.vm.fail(fault);
    }

    async fn shutdown(self: Box<Self>) {
        tracing::info!(sandbox = %self.vm.id, "stopping the sandbox VM");
        self.vm.shutdown().await;
    }
}
