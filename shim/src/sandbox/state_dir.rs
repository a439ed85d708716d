//! A sandbox's state directory on the host: what is in it, how it is made, and how it is
//! removed without following a symlink or entering a mount.

use std::path::{Path, PathBuf};

use super::SandboxError;

/// Per-sandbox paths under `<state_dir>/<id>/`. Socket paths stay short:
/// Unix socket paths are limited to 107 bytes.
#[derive(Debug, Clone)]
pub struct SandboxPaths {
    pub dir: PathBuf,
    pub shared: PathBuf,
    pub vsock: PathBuf,
    pub vhost_vsock: PathBuf,
    pub virtiofsd: PathBuf,
    /// hull-vmm's configuration (builtin backend).
    pub vmm_config: PathBuf,
    pub console_log: PathBuf,
    pub virtiofsd_log: PathBuf,
    /// The VMM's pid, for operators and tests that must find "the VMM" of a
    /// sandbox whatever the backend (hull-vmm, or QEMU under its jailer).
    pub vmm_pid: PathBuf,
}

impl SandboxPaths {
    pub fn new(state_dir: &Path, id: &str) -> Self {
        let dir = state_dir.join(id);
        SandboxPaths {
            shared: dir.join("shared"),
            vsock: dir.join("vsock.sock"),
            vhost_vsock: dir.join("vhost-vsock.sock"),
            virtiofsd: dir.join("virtiofsd.sock"),
            vmm_config: dir.join("vmm.toml"),
            console_log: dir.join("console.log"),
            virtiofsd_log: dir.join("virtiofsd.log"),
            vmm_pid: dir.join("vmm.pid"),
            dir,
        }
    }
}

/// The name of the share in the sandbox's state directory.
pub const SHARED_DIR_NAME: &str = "shared";

/// Creates `state_dir` (if missing) and the sandbox's directory `dir` in
/// it, both 0711: root's, and only traversable by others (a jailed VMM
/// reaches its sockets by name in them).
pub fn create_state_dir(state_dir: &Path, dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::DirBuilderExt;
    for (path, recursive) in [(state_dir, true), (dir, false)] {
        let made = std::fs::DirBuilder::new()
            .recursive(recursive)
            .mode(0o711)
            .create(path);
        match made {
            Err(err) if !(recursive && err.kind() == std::io::ErrorKind::AlreadyExists) => {
                return Err(SandboxError::Io {
                    what: format!("creating {}", path.display()),
                    source: err,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes the sandbox's state directory; with `keep_logs`, leaves the
/// console and virtiofsd logs. Every mount below it (the share, and what is
/// mounted in the share) is detached first, by descriptor; removal then
/// never follows a symlink or enters a mount that stayed, so a mount that
/// would not go away cannot make us delete a volume's files through it.
pub fn remove_state(paths: &SandboxPaths, keep_logs: bool) {
    let dir = match std::fs::File::open(&paths.dir) {
        Ok(dir) => std::os::fd::OwnedFd::from(dir),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
        Err(err) => {
            tracing::warn!(dir = %paths.dir.display(), %err, "opening the state directory");
            return;
        }
    };
    use std::os::fd::AsFd;
    for (mount, err) in crate::sys::mount::detach_below(dir.as_fd(), &paths.dir, Path::new("")) {
        tracing::warn!(mount = %mount.display(), %err, "not detached");
    }
    let keep: Vec<&std::ffi::OsStr> = [&paths.console_log, &paths.virtiofsd_log]
        .iter()
        .filter_map(|p| p.file_name())
        .collect();
    let names: Vec<std::ffi::OsString> = match std::fs::read_dir(&paths.dir) {
        Ok(entries) => entries.flatten().map(|e| e.file_name()).collect(),
        Err(_) => Vec::new(),
    };
    for name in names {
        if keep_logs && keep.contains(&name.as_os_str()) {
            continue;
        }
        let leftovers = crate::sys::fs::remove_beneath(dir.as_fd(), &name);
        if !leftovers.is_empty() {
            tracing::warn!(dir = %paths.dir.display(), ?leftovers, "left in the state directory");
        }
    }
    if !keep_logs {
        let _ = std::fs::remove_dir(&paths.dir);
    }
}
