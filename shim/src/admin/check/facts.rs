//! What `hull check` looks at on the real host: programs and their
//! versions, files, the kernel's abilities. The checks judge these facts.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

/// A program that was found, and the first line of its `--version`
/// (`None` when it would not run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub path: PathBuf,
    pub version: Option<String>,
}

/// What is at a guest asset's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProbe {
    Missing,
    NotAFile,
    Unreadable(String),
    /// Its size and its first bytes (up to four).
    File {
        size: u64,
        magic: Vec<u8>,
    },
}

impl FileProbe {
    pub fn of(path: &Path) -> Self {
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return FileProbe::Missing,
            Err(err) => return FileProbe::Unreadable(err.to_string()),
        };
        if !metadata.is_file() {
            return FileProbe::NotAFile;
        }
        let mut magic = Vec::with_capacity(4);
        match std::fs::File::open(path).and_then(|f| f.take(4).read_to_end(&mut magic)) {
            Ok(_) => FileProbe::File {
                size: metadata.len(),
                magic,
            },
            Err(err) => FileProbe::Unreadable(err.to_string()),
        }
    }
}

/// Everything `hull check` looks at on the host, given the configuration.
#[derive(Debug)]
pub struct HostFacts {
    pub virtualization: Virtualization,
    pub vhost_vsock: bool,
    pub qemu: Option<Program>,
    /// QEMU's `-M help` output.
    pub qemu_machines: Option<String>,
    pub virtiofsd: Option<Program>,
    /// Whether this kernel can id-map the share (so virtiofsd can run
    /// unprivileged), and why not.
    pub idmapped_shares: Result<(), String>,
    /// The built-in VMM (`vmm` in the configuration).
    pub vmm: Option<Program>,
    pub kernel: FileProbe,
    pub initrd: FileProbe,
    pub shim: Option<PathBuf>,
    pub containerd: Option<Program>,
    pub containerd_config: PathBuf,
    pub containerd_config_text: std::io::Result<String>,
}

impl HostFacts {
    /// Looks at the real host.
    pub fn gather(config: &Config, containerd_config: &Path) -> Self {
        let qemu = find_program(&config.qemu).map(|path| probe_version(&path));
        let qemu_machines = qemu
            .as_ref()
            .and_then(|qemu| command_output(&qemu.path, &["-M", "help"]));
        HostFacts {
            virtualization: Virtualization::detect(),
            vhost_vsock: Path::new("/dev/vhost-vsock").exists(),
            qemu,
            qemu_machines,
            virtiofsd: find_program(&config.virtiofsd).map(|path| probe_version(&path)),
            idmapped_shares: crate::rootfs::idmapped_shares_supported(),
            vmm: find_program(&config.vmm).map(|path| probe_version(&path)),
            kernel: FileProbe::of(&config.kernel),
            initrd: FileProbe::of(&config.initrd),
            shim: find_program(Path::new(SHIM_BINARY)),
            containerd: find_program(Path::new("containerd")).map(|path| probe_version(&path)),
            containerd_config: containerd_config.to_owned(),
            containerd_config_text: std::fs::read_to_string(containerd_config),
        }
    }

    /// Judges what was gathered, in the order a reader fixes things.
    pub fn checks(&self, config: &Config) -> Vec<Check> {
        let builtin = matches!(
            Backend::select(config, self.virtualization),
            Ok(Backend::Builtin)
        );
        let mut checks = vec![
            check_virtualization(self.virtualization),
            check_vhost_vsock(self.vhost_vsock),
        ];
        let qemu = check_qemu(
            &config.qemu,
            self.qemu.as_ref(),
            self.qemu_machines.as_deref(),
        );
        checks.extend(qemu.into_iter().map(|check| match check.status {
            // QEMU is the other backend: missing, it only matters to
            // `hypervisor = "qemu"`.
            Status::Fail if builtin => Check::new(
                check.name,
                Status::Warn,
                format!(
                    "{}; not needed while the built-in VMM runs the VMs",
                    check.detail
                ),
            ),
            _ => check,
        }));
        checks.push(check_vmm(&config.vmm, self.vmm.as_ref(), builtin));
        checks.push(check_virtiofsd(&config.virtiofsd, self.virtiofsd.as_ref()));
        checks.push(check_share_isolation(
            config.virtiofsd_user_namespace,
            &self.idmapped_shares,
        ));
        checks.push(check_asset(
            "guest kernel",
            &config.kernel,
            &self.kernel,
            Some(b"\x7fELF"),
        ));
        checks.push(check_asset(
            "guest initrd",
            &config.initrd,
            &self.initrd,
            None,
        ));
        checks.push(check_shim(self.shim.as_deref()));
        checks.push(check_containerd(self.containerd.as_ref()));
        checks.push(check_containerd_config(
            &self.containerd_config,
            self.containerd_config_text
                .as_deref()
                .map_err(clone_io_error),
        ));
        checks.push(check_choice(config, self.virtualization));
        checks
    }
}

fn clone_io_error(err: &std::io::Error) -> std::io::Error {
    std::io::Error::new(err.kind(), err.to_string())
}

fn probe_version(path: &Path) -> Program {
    Program {
        path: path.to_owned(),
        version: command_output(path, &["--version"]).and_then(|out| first_line(&out)),
    }
}

/// Standard output of a program that exited successfully.
fn command_output(program: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

pub(super) fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_owned)
}
