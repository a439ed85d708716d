//! `hull-vmm jail [OPTIONS] -- PROGRAM [ARGS...]`: confine, then exec PROGRAM
//! (`hull_vmm::jail::exec`, docs/vmm.md "hull-vmm jail").

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use hull_vmm::jail::exec::ExecJail;
use hull_vmm::jail::mount::{BindSpec, DeviceSpec, SymlinkSpec};
use hull_vmm::jail::process::{Namespaces, Rlimit};

use super::exit;

/// Confine this process, then exec PROGRAM in its place (docs/vmm.md, "hull-vmm jail").
/// Exit status 2 for bad arguments, 1 when a step fails; PROGRAM never runs half-jailed.
#[derive(clap::Args, Debug)]
pub struct JailArgs {
    /// Build a fresh root over DIR (a read-only tmpfs only this process sees) and pivot
    /// into it.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// A host file or directory, read-only, nosuid and nodev at DEST (default SRC) in the
    /// new root. Repeatable.
    #[arg(long = "ro-bind", value_name = "SRC[:DEST]", requires = "root")]
    pub ro_bind: Vec<BindSpec>,
    /// A symbolic link LINK -> TARGET in the new root (`usr/lib:/lib`). Repeatable.
    #[arg(long = "symlink", value_name = "TARGET:LINK", requires = "root")]
    pub symlink: Vec<SymlinkSpec>,
    /// The host's /dev/NAME in the new root's /dev: null, zero, full, random, urandom (mode
    /// 0666), kvm, net/tun (owned by the jailed user). Repeatable.
    #[arg(long = "dev", value_name = "NAME", requires = "root")]
    pub dev: Vec<DeviceSpec>,
    /// The non-root user PROGRAM runs as, with no capabilities.
    #[arg(long, value_name = "U", requires = "gid", conflicts_with = "userns_fd")]
    pub uid: Option<u32>,
    /// The non-root group PROGRAM runs as.
    #[arg(long, value_name = "G", requires = "uid")]
    pub gid: Option<u32>,
    /// A user namespace the caller created and mapped, open as descriptor N: PROGRAM runs
    /// as its root.
    #[arg(long, value_name = "N")]
    pub userns_fd: Option<RawFd>,
    /// Namespaces to unshare, comma-separated: mount, net, ipc, uts (mount comes with
    /// --root anyway).
    #[arg(long, value_name = "LIST")]
    pub unshare: Option<Namespaces>,
    /// A cgroup directory (v1 or v2) to join. Repeatable.
    #[arg(long = "cgroup", value_name = "DIR")]
    pub cgroup: Vec<PathBuf>,
    /// A resource limit: nofile, nproc, core, fsize, memlock, as or stack. Repeatable.
    #[arg(long = "rlimit", value_name = "NAME=SOFT[:HARD]")]
    pub rlimit: Vec<Rlimit>,
    /// A descriptor PROGRAM inherits; every other one above 2 is closed. Repeatable.
    #[arg(long = "keep-fd", value_name = "N")]
    pub keep_fd: Vec<RawFd>,
    /// The working directory of PROGRAM (default: / of the new root with --root).
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
    /// The program, an absolute path, and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM [ARGS]")]
    pub command: Vec<OsString>,
}

impl JailArgs {
    fn into_exec_jail(self) -> ExecJail {
        let mut command = self.command.into_iter();
        ExecJail {
            root: self.root,
            ro_binds: self.ro_bind,
            symlinks: self.symlink,
            devices: self.dev,
            user: self.uid.zip(self.gid),
            userns_fd: self.userns_fd,
            unshare: self.unshare.unwrap_or_default(),
            cgroups: self.cgroup,
            rlimits: self.rlimit,
            keep_fds: self.keep_fd,
            chdir: self.chdir,
            program: command.next().map(PathBuf::from).unwrap_or_default(),
            args: command.collect(),
        }
    }
}

pub fn run(args: JailArgs) -> ! {
    let jail = match args.into_exec_jail().prepare() {
        Ok(jail) => jail,
        Err(err) => exit(2, err),
    };
    exit(1, jail.exec())
}
