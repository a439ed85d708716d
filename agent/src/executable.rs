//! Finds a process's executable inside its container's rootfs before the
//! container is created, so that a missing or non-executable command fails
//! with the error (and the 127/126 status) a user knows from runc and shells.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecutableError {
    #[error("the process has no args: nothing to run")]
    NoArgs,
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    #[error("exec: {0:?}: permission denied")]
    NotExecutable(String),
}

impl ExecutableError {
    /// The exit status a shell (and `docker run`) reports for this error.
    pub fn exit_status(&self) -> i32 {
        match self {
            ExecutableError::NotExecutable(_) => 126,
            _ => 127,
        }
    }
}

/// Resolves `args[0]` as `execvp` would inside `rootfs`: a name with a slash
/// is taken relative to `cwd`, any other is searched in `$PATH` from `env`
/// (runc's default PATH when the process has none). Symlinks are followed
/// inside the rootfs, never out of it.
pub fn resolve(
    rootfs: &Path,
    cwd: &Path,
    args: &[String],
    env: &[String],
) -> Result<PathBuf, ExecutableError> {
    let name = args.first().ok_or(ExecutableError::NoArgs)?;
    if name.is_empty() {
        return Err(ExecutableError::NotFound(name.clone()));
    }
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![cwd.join(name)]
    } else {
        let path = env
            .iter()
            .find_map(|kv| kv.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| Path::new(dir).join(name))
            .collect()
    };
    let mut found_not_executable = false;
    for candidate in candidates {
        match kind_in_root(rootfs, &candidate) {
            Some(Kind::Executable) => return Ok(candidate),
            Some(Kind::NotExecutable) => found_not_executable = true,
            None => {}
        }
    }
    if found_not_executable {
        Err(ExecutableError::NotExecutable(name.clone()))
    } else {
        Err(ExecutableError::NotFound(name.clone()))
    }
}

enum Kind {
    Executable,
    NotExecutable,
}

/// Looks `path` up with every symlink resolved against `root`
/// (`openat2(RESOLVE_IN_ROOT)`).
fn kind_in_root(root: &Path, path: &Path) -> Option<Kind> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;

    let root_dir = std::fs::File::open(root).ok()?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let fd = openat2(root_dir.as_raw_fd(), relative, how).ok()?;
    // SAFETY: openat2 returned a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let stat = nix::sys::stat::fstat(fd.as_raw_fd()).ok()?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    if stat.st_mode & 0o111 != 0 {
        Some(Kind::Executable)
    } else {
        Some(Kind::NotExecutable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::os::unix::fs::PermissionsExt;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("busybox"), b"").unwrap();
        std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        // An absolute link, which must resolve inside the rootfs.
        symlink("/bin/busybox", bin.join("sh")).unwrap();
        std::fs::write(bin.join("data"), b"").unwrap();
        std::fs::set_permissions(bin.join("data"), std::fs::Permissions::from_mode(0o644)).unwrap();
        dir
    }

    fn args(name: &str) -> Vec<String> {
        vec![name.to_string()]
    }

    #[test]
    fn finds_commands_in_path_through_absolute_symlinks() {
        let root = rootfs();
        let env = vec!["PATH=/usr/bin:/bin".to_string()];
        assert_eq!(
            resolve(root.path(), Path::new("/"), &args("sh"), &env),
            Ok(PathBuf::from("/bin/sh"))
        );
    }

    #[test]
    fn missing_and_non_executable_commands_fail_like_a_shell() {
        let root = rootfs();
        let err = resolve(root.path(), Path::new("/"), &args("nope"), &[]).unwrap_err();
        assert_eq!(err.exit_status(), 127);
        let err = resolve(root.path(), Path::new("/"), &args("/bin/data"), &[]).unwrap_err();
        assert_eq!(err, ExecutableError::NotExecutable("/bin/data".into()));
        assert_eq!(err.exit_status(), 126);
        assert_eq!(
            resolve(root.path(), Path::new("/"), &[], &[]),
            Err(ExecutableError::NoArgs)
        );
    }

    #[test]
    fn relative_names_with_a_slash_use_the_cwd() {
        let root = rootfs();
        assert!(resolve(root.path(), Path::new("/bin"), &args("./busybox"), &[]).is_ok());
        assert!(resolve(root.path(), Path::new("/"), &args("./busybox"), &[]).is_err());
    }

    #[test]
    fn symlinks_cannot_escape_the_rootfs() {
        let root = rootfs();
        symlink("../../../../../../bin/true", root.path().join("bin/escape")).unwrap();
        assert!(resolve(root.path(), Path::new("/"), &args("/bin/escape"), &[]).is_err());
    }
}
