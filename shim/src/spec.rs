//! OCI runtime specs for containers Hull starts itself (`hull run`), built on
//! oci-spec's defaults, which are runc's (`runc spec`).

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// What `hull run` lets a user choose about the container's process.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    pub args: Vec<String>,
    pub terminal: bool,
    /// `KEY=VALUE` entries added to (or replacing in) the default environment.
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub read_only: bool,
    pub hostname: Option<String>,
}

/// A runc-default spec for a container whose rootfs is at `rootfs` (a guest
/// path) running `options`.
pub fn container_spec(rootfs: &Path, options: &ProcessOptions) -> Spec {
    let mut spec = Spec::default();
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_owned());
    root.set_readonly(Some(options.read_only));
    spec.set_root(Some(root));
    spec.set_hostname(options.hostname.clone().or(Some("hull".into())));

    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(options.args.clone()));
    process.set_terminal(Some(options.terminal));
    let mut env = process.env().clone().unwrap_or_default();
    for entry in &options.env {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        env.retain(|existing| existing.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(entry.clone());
    }
    process.set_env(Some(env));
    if let Some(cwd) = &options.cwd {
        process.set_cwd(cwd.clone());
    }
    spec.set_process(Some(process));
    spec
}

/// CRI's annotation naming the pod a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The sandbox a container runs in: its pod's, or its own.
pub fn sandbox_id(spec: &Spec, container_id: &str) -> String {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
        .filter(|id| !id.is_empty())
        .cloned()
        .unwrap_or_else(|| container_id.to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("The spec has no process")]
    NoProcess,
    #[error(
        "Mount {destination}: bind mounts from the host are not supported yet (only mounts the guest provides: proc, sysfs, tmpfs, devpts, mqueue, cgroup)"
    )]
    HostBind { destination: String },
}

/// Rewrites a container's spec (from its bundle) for the guest: the rootfs
/// is where the guest sees the shared copy, and hooks, which would run host
/// binaries, are dropped.
pub fn guest_spec(mut spec: Spec, guest_rootfs: &Path) -> Result<Spec, SpecError> {
    if spec.process().is_none() {
        return Err(SpecError::NoProcess);
    }
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(guest_rootfs.to_owned());
    spec.set_root(Some(root));
    if spec.hooks().is_some() {
        tracing::warn!("dropping OCI hooks: they would run host binaries inside the guest");
        spec.set_hooks(None);
    }
    for mount in spec.mounts().iter().flatten() {
        let bind = mount.typ().as_deref() == Some("bind")
            || mount
                .options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        if bind {
            return Err(SpecError::HostBind {
                destination: mount.destination().display().to_string(),
            });
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_spec_moves_the_rootfs_and_drops_hooks() {
        let mut spec = container_spec(Path::new("rootfs"), &ProcessOptions::default());
        spec.set_hooks(Some(Default::default()));
        let guest = guest_spec(spec, Path::new("/run/hull/shared/c1/rootfs")).unwrap();
        assert_eq!(
            guest.root().as_ref().unwrap().path(),
            Path::new("/run/hull/shared/c1/rootfs")
        );
        assert!(guest.hooks().is_none());
    }

    #[test]
    fn host_bind_mounts_are_refused_by_name() {
        let mut spec = container_spec(Path::new("rootfs"), &ProcessOptions::default());
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(
            serde_json::from_value(serde_json::json!({
                "destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind"]
            }))
            .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        let err = guest_spec(spec, Path::new("/r")).unwrap_err().to_string();
        assert!(err.contains("/data"), "{err}");
    }

    #[test]
    fn sandbox_id_comes_from_the_cri_annotation() {
        let mut spec = Spec::default();
        assert_eq!(sandbox_id(&spec, "c1"), "c1");
        spec.set_annotations(Some(
            [(SANDBOX_ID_ANNOTATION.to_string(), "pod1".to_string())].into(),
        ));
        assert_eq!(sandbox_id(&spec, "c1"), "pod1");
    }

    #[test]
    fn sets_rootfs_args_and_overrides_env() {
        let spec = container_spec(
            Path::new("/run/hull/shared/c/rootfs"),
            &ProcessOptions {
                args: vec!["sh".into()],
                terminal: true,
                env: vec!["PATH=/bin".into(), "A=1".into()],
                cwd: Some("/tmp".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            Path::new("/run/hull/shared/c/rootfs")
        );
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &["sh".to_string()]);
        assert_eq!(process.terminal(), Some(true));
        assert_eq!(process.cwd(), Path::new("/tmp"));
        let env = process.env().as_ref().unwrap();
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert!(env.contains(&"PATH=/bin".to_string()));
        assert!(env.contains(&"A=1".to_string()));
        let namespaces = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(namespaces.len() >= 4, "runc's default namespaces");
    }
}
