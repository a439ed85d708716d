//! How the shim starts its helper processes (VMM, virtiofsd, vsock backend):
//! found by name, dying with the shim, and moved into the sandbox's cgroups
//! before they run a single instruction of their own.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Makes a helper process die with us, so a crashed `hull` or shim cannot
/// leak a VM or a virtiofsd.
pub fn die_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Moves the child into every cgroup whose `cgroup.procs` is open in
/// `procs` before it execs, so that all it allocates is charged there.
/// Writing "0" names the writing process, in cgroup v1 and v2 alike.
pub fn join_cgroups(command: &mut tokio::process::Command, procs: Vec<OwnedFd>) {
    if procs.is_empty() {
        return;
    }
    // SAFETY: write(2) on descriptors opened before the fork is
    // async-signal-safe; nothing is allocated in the child.
    unsafe {
        command.pre_exec(move || {
            for fd in &procs {
                if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Makes each `(fd, target)` of `fds` the child's descriptor `target`,
/// open across exec. The sources are first copied above every target, so
/// that one target cannot overwrite another's source.
pub fn pass_fds(command: &mut tokio::process::Command, fds: Vec<(i32, i32)>) {
    if fds.is_empty() {
        return;
    }
    let above = fds
        .iter()
        .map(|&(fd, target)| fd.max(target))
        .max()
        .unwrap_or(0)
        + 1;
    // SAFETY: fcntl and dup2 are async-signal-safe and touch only the child;
    // the vector was allocated before the fork and is only read.
    unsafe {
        command.pre_exec(move || {
            let mut copies = [0i32; 16];
            if fds.len() > copies.len() {
                return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
            }
            for (copy, &(fd, _)) in copies.iter_mut().zip(&fds) {
                *copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if *copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (&copy, &(_, target)) in copies.iter().zip(&fds) {
                // dup2 leaves the target without FD_CLOEXEC.
                if libc::dup2(copy, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Finds `name` as given, else on PATH, else in cargo's bin directory (where
/// `cargo install` puts virtiofsd).
pub fn find_program(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.exists().then(|| name.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin"));
    std::env::split_paths(&path)
        .chain(["/usr/local/bin".into()])
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
