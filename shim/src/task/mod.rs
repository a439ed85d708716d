//! containerd-shim-hull-v2: the task API (v2) for containerd, on top of the
//! sandbox layer. One shim process serves one sandbox: a container with the
//! CRI sandbox-id annotation joins its pod's shim (the socket address is
//! derived from the sandbox id); any other container is its own sandbox.

mod options;
mod service;

use std::path::{Path, PathBuf};
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

/// Where Create keeps, in the bundle, the configuration file named by the
/// task's `ConfigPath` option: `shim delete` gets no options.
pub const CONFIG_PATH_FILE: &str = "hull-config-path";

/// Why `shim delete` could not clean up.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Id(#[from] crate::ids::InvalidId),
    #[error("{what} is still there after the clean-up")]
    Left { what: String },
}

/// Removes what a container whose shim is gone left on the host: its files
/// in the sandbox's share, and, for the sandbox's own container, the
/// sandbox's cgroup (killing whatever still runs in it: the VMM, virtiofsd,
/// the vsock backend) and its state directory. `bundle` holds the
/// container's spec and the configuration path Create kept.
pub async fn cleanup_after_shim(bundle: &Path, id: &str) -> Result<(), CleanupError> {
    let config_path = std::fs::read_to_string(bundle.join(CONFIG_PATH_FILE))
        .ok()
        .map(|path| PathBuf::from(path.trim()));
    let config = Config::load(config_path.as_deref())?;
    crate::ids::validate("container id", id)?;
    let sandbox_id = oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .map(|spec| crate::spec::sandbox_id(&spec, id))
        .unwrap_or_else(|_| id.to_owned());
    crate::ids::validate("sandbox id", &sandbox_id)?;
    // A pool's VM keeps the name it was booted under; the sandbox id names
    // it through a symlink.
    let alias = config.state_dir.join(&sandbox_id);
    let name = match std::fs::read_link(&alias) {
        Ok(target) => {
            let name = target.to_string_lossy().into_owned();
            crate::ids::validate("sandbox VM name", &name)?;
            name
        }
        Err(_) => sandbox_id.clone(),
    };
    let paths = SandboxPaths::new(&config.state_dir, &name);
    if sandbox_id == id {
        // Whatever of the sandbox still runs dies with its cgroup first, so
        // nothing writes to what is removed next.
        if let Ok(hierarchies) = crate::sandbox::Hierarchies::detect() {
            crate::sandbox::SandboxCgroup::at(&hierarchies, &config.cgroup_parent, &name)
                .destroy()
                .await;
        }
        crate::sandbox::remove_state(&paths, false);
        if paths.dir.exists() {
            return Err(CleanupError::Left {
                what: paths.dir.display().to_string(),
            });
        }
        if name != sandbox_id {
            let _ = std::fs::remove_file(&alias);
        }
    } else if let Ok(share) = std::fs::File::open(&paths.shared) {
        use std::os::fd::AsFd;
        let stayed = crate::sys::mount::detach_below(share.as_fd(), &paths.shared, Path::new(id));
        if let Some((mount, err)) = stayed.first() {
            // Removing through a mount that stayed could delete a volume's
            // files: leave the container's files alone.
            return Err(CleanupError::Left {
                what: format!("the mount {} ({err})", mount.display()),
            });
        }
        crate::sys::fs::remove_beneath(share.as_fd(), std::ffi::OsStr::new(id));
    }
    Ok(())
}

/// Asks the pool serving this containerd (`hull pool`), if one runs, for
/// a warm shim to serve sandbox `opts.id`; its address when one does.
/// The shim then gets what a shim containerd's `start` spawns gets: the
/// shim cgroup of the task's options (on standard input) and an OOM score
/// just above containerd's.
async fn claim_from_pool(opts: &StartOpts) -> Option<String> {
    let claim = crate::pool::Claim {
        id: opts.id.clone(),
        namespace: opts.namespace.clone(),
        containerd_address: opts.address.clone(),
        ttrpc_address: opts.ttrpc_address.clone(),
        bundle: std::env::current_dir().ok()?,
        socket: containerd_shim::socket_address(&opts.address, &opts.namespace, &opts.id),
        hull_config: std::env::var_os("HULL_CONFIG").map(PathBuf::from),
    };
    let served = crate::pool::claim(&claim).await?;
    if let Err(err) = containerd_shim::cgroup::set_cgroup_and_oom_score(served.pid) {
        tracing::warn!(pid = served.pid, %err, "moving the pool's shim into the shim cgroup");
    }
    Some(served.address)
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
        // A new sandbox takes a VM booted ahead, when a pool has one.
        if grouping == opts.id {
            if let Some(address) = claim_from_pool(&opts).await {
                return Ok(address);
            }
        }
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // containerd runs this in the container's bundle, for a container
        // whose shim is gone or never served it.
        cleanup_after_shim(Path::new("."), &self.id)
            .await
            .map_err(|err| containerd_shim::Error::Other(format!("Hull: {err}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle whose spec puts container `id` in pod `pod`, with Hull's
    /// configuration (state dir `state`) named the way Create keeps it.
    fn bundle(dir: &Path, id: &str, pod: &str, state: &Path) -> PathBuf {
        let bundle = dir.join(format!("bundle-{id}"));
        std::fs::create_dir_all(&bundle).unwrap();
        let mut spec = oci_spec::runtime::Spec::default();
        let annotations = [(
            crate::spec::SANDBOX_ID_ANNOTATION.to_owned(),
            pod.to_owned(),
        )];
        spec.set_annotations(Some(annotations.into_iter().collect()));
        spec.save(bundle.join("config.json")).unwrap();
        let config = dir.join("pod.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {state:?}\ncgroup_parent = \"hull-cleanup-test-{}\"\n",
                std::process::id()
            ),
        )
        .unwrap();
        std::fs::write(bundle.join(CONFIG_PATH_FILE), config.display().to_string()).unwrap();
        bundle
    }

    #[tokio::test]
    async fn cleanup_finds_the_state_dir_through_the_kept_config_path() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let paths = SandboxPaths::new(&state, "pod");
        for container in ["pod", "app"] {
            std::fs::create_dir_all(paths.shared.join(container).join("rootfs")).unwrap();
        }
        std::fs::write(&paths.console_log, "guest").unwrap();

        // A container of the pod: only its files in the share go.
        let app = bundle(dir.path(), "app", "pod", &state);
        cleanup_after_shim(&app, "app").await.unwrap();
        assert!(!paths.shared.join("app").exists());
        assert!(paths.shared.join("pod").exists());

        // The pod's own container: the whole sandbox goes.
        let pod = bundle(dir.path(), "pod", "pod", &state);
        cleanup_after_shim(&pod, "pod").await.unwrap();
        assert!(!paths.dir.exists());
        assert!(state.exists(), "only the sandbox's own dir is removed");
    }

    #[tokio::test]
    async fn cleanup_with_a_broken_config_fails_naming_it_and_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let paths = SandboxPaths::new(&state, "pod");
        std::fs::create_dir_all(paths.shared.join("pod")).unwrap();
        let pod = bundle(dir.path(), "pod", "pod", &state);
        let err = cleanup_after_shim(&pod, "../pod").await.unwrap_err();
        assert!(err.to_string().contains("container id"), "{err}");

        let config = dir.path().join("pod.toml");
        std::fs::write(&config, "state_dir = [").unwrap();
        let err = cleanup_after_shim(&pod, "pod").await.unwrap_err();
        assert!(
            err.to_string().contains(&config.display().to_string()),
            "{err}"
        );
        assert!(paths.shared.join("pod").exists());
    }
}
