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

#[cfg(test)]
mod tests {
    use super::*;

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
