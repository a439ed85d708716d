//! containerd-shim-hull-v2: the task API (v2) for containerd, on top of the
//! sandbox layer. One shim process serves one sandbox: a container with the
//! CRI sandbox-id annotation joins its pod's shim (the socket address is
//! derived from the sandbox id); any other container is its own sandbox.

mod options;
mod service;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::{Config as ShimConfig, Flags, StartOpts};

pub use self::service::TaskService;
use crate::config::Config;
use crate::sandbox::SandboxPaths;

/// How long the shim may take to stop serving after Shutdown.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.hull.v2";

pub struct HullShim {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

/// How the containerd-shim crate should run us: our children are QEMU and
/// virtiofsd, which tokio waits for, so the crate must not reap them.
pub fn shim_config() -> ShimConfig {
    ShimConfig {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

#[async_trait]
impl Shim for HullShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        HullShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd runs `start` in the container's bundle.
        // An invalid sandbox id is refused by Create, naming it; until then
        // the container is grouped on its own.
        let grouping = oci_spec::runtime::Spec::load("config.json")
            .map(|spec| crate::spec::sandbox_id(&spec, &opts.id))
            .ok()
            .filter(|id| crate::ids::validate("sandbox id", id).is_ok())
            .unwrap_or_else(|| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // Called for a container whose shim is gone: its VM went with it
        // (the VMM and virtiofsd die with the shim); remove what is left on
        // the host.
        let spec = oci_spec::runtime::Spec::load("config.json").ok();
        let sandbox_id = spec
            .as_ref()
            .map(|spec| crate::spec::sandbox_id(spec, &self.id))
            .unwrap_or_else(|| self.id.clone());
        if let Ok(config) = Config::load(None) {
            let paths = SandboxPaths::new(&config.state_dir, &sandbox_id);
            if crate::ids::validate("sandbox id", &sandbox_id).is_ok()
                && crate::ids::validate("container id", &self.id).is_ok()
            {
                if let Ok(share) = std::fs::File::open(&paths.shared) {
                    use std::os::fd::AsFd;
                    crate::sys::mount::detach_below(
                        share.as_fd(),
                        &paths.shared,
                        std::path::Path::new(&self.id),
                    );
                    crate::sys::fs::remove_beneath(share.as_fd(), std::ffi::OsStr::new(&self.id));
                }
                if sandbox_id == self.id {
                    if let Ok(hierarchies) = crate::sandbox::Hierarchies::detect() {
                        crate::sandbox::SandboxCgroup::at(
                            &hierarchies,
                            &config.cgroup_parent,
                            &sandbox_id,
                        )
                        .destroy()
                        .await;
                    }
                    crate::sandbox::remove_state(&paths, false);
                }
            }
        }
        tracing::info!(id = %self.id, namespace = %self.namespace, "cleaned up after a dead shim");
        Ok(DeleteResponse {
            exit_status: crate::manager::UNKNOWN_EXIT,
            exited_at: Some(service::timestamp(std::time::SystemTime::now())).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // The crate now drains the ttrpc server, which has been seen to hang
        // with a connection mid-request; containerd then waits for this shim
        // forever. Bound it: after a grace period, remove the socket and exit.
        std::thread::spawn(|| {
            std::thread::sleep(SHUTDOWN_GRACE);
            tracing::warn!("ttrpc server did not shut down in time; exiting");
            if let Ok(address) = std::fs::read_to_string("address") {
                let _ = std::fs::remove_file(address.trim().trim_start_matches("unix://"));
            }
            std::process::exit(0);
        });
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(self.namespace.clone(), publisher, self.exit.clone())
    }
}
