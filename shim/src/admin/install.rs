//! `hull install`: copies a built tree into place and registers Hull with
//! containerd. Every file is written atomically (a temporary name in the
//! same directory, then a rename), and running it twice changes nothing.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::check::{SHIM_BINARY, VMM_BINARY};
use super::containerd_config::{self, Registration};
use crate::config::Config;

/// The binaries `hull install` copies from the directory of the running
/// `hull`: the admin command, the shim, and the built-in VMM the shim runs
/// with `hypervisor = "builtin"`.
pub const BINARIES: [&str; 3] = ["hull", SHIM_BINARY, VMM_BINARY];
/// Where the shim looks for hull-vmm unless the configuration says.
const DEFAULT_BIN_DIR: &str = "/usr/local/bin";
/// Where `make assets` leaves the guest kernel and initrd.
pub const BUILT_KERNEL: &str = "target/hull-assets/vmlinux";
pub const BUILT_INITRD: &str = "target/hull-assets/hull-initrd.img";

const CONFIG_EXAMPLE: &str = include_str!("../../../docs/config.toml.example");

const RUNTIME_CLASS: &str = "\
# Kubernetes RuntimeClass for Hull: kubectl apply -f runtimeclass.yaml,
# then set `runtimeClassName: hull` in a pod's spec.
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: hull
handler: hull
# What a pod's VM costs beyond its containers' requests, so the scheduler
# counts it: the guest's share (pod_memory_overhead_mib, 128 MiB by
# default) and the VMM process itself (QEMU's own memory: 52.9 MiB per
# idle sandbox under TCG in Hull's docs/benchmarks.md, from `make bench`).
overhead:
  podFixed:
    memory: 180Mi
    cpu: 250m
";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{name} not found in {dir}: build it with `make build` (cargo build --release -p hull-shim -p hull-vmm)")]
    MissingBinary { name: &'static str, dir: PathBuf },
    #[error("Guest {what} not found at {path}: run `make assets`, or pass --{what} PATH")]
    MissingAsset { what: &'static str, path: PathBuf },
    #[error("Cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot register Hull in {path} (left unchanged): {source}")]
    ContainerdConfig {
        path: PathBuf,
        #[source]
        source: containerd_config::ContainerdConfigError,
    },
}

/// What to install, and where.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Binaries go to `<prefix>/bin`, guest assets to `<prefix>/share/hull`.
    pub prefix: PathBuf,
    /// The directory holding the built `hull`, `containerd-shim-hull-v2`
    /// and `hull-vmm`.
    pub binaries_from: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Hull's configuration file, written only when absent.
    pub hull_config: PathBuf,
    /// containerd's configuration, or `None` to leave containerd alone.
    pub containerd_config: Option<PathBuf>,
}

/// One thing `hull install` did, printed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A file was written where there was none, or replaced an older one.
    Installed {
        path: PathBuf,
        from: Option<PathBuf>,
    },
    /// The file already had this content.
    UpToDate(PathBuf),
    /// Hull's configuration was written from the example.
    WroteConfig(PathBuf),
    KeptConfig(PathBuf),
    /// A kept configuration points elsewhere than the installed assets.
    ConfigMismatch {
        config: PathBuf,
        key: &'static str,
        value: PathBuf,
        installed: PathBuf,
    },
    Registered {
        config: PathBuf,
        backup: Option<PathBuf>,
        snippet: String,
    },
    AlreadyRegistered(PathBuf),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Installed { path, from: None } => write!(f, "installed {}", path.display()),
            Action::Installed {
                path,
                from: Some(from),
            } => write!(f, "installed {} (from {})", path.display(), from.display()),
            Action::UpToDate(path) => write!(f, "up to date {}", path.display()),
            Action::WroteConfig(path) => write!(f, "wrote {}", path.display()),
            Action::KeptConfig(path) => write!(f, "kept existing {}", path.display()),
            Action::ConfigMismatch {
                config,
                key,
                value,
                installed,
            } => write!(
                f,
                "note: {} has {key} = {:?}, not the installed {}: edit it",
                config.display(),
                value.display().to_string(),
                installed.display()
            ),
            Action::Registered {
                config,
                backup,
                snippet,
            } => {
                write!(
                    f,
                    "registered runtime handler `hull` in {}",
                    config.display()
                )?;
                if let Some(backup) = backup {
                    write!(f, " (previous content in {})", backup.display())?;
                }
                write!(f, ", adding:\n{snippet}\nrestart containerd to load it (systemctl restart containerd)")
            }
            Action::AlreadyRegistered(config) => {
                write!(f, "kept {}: it registers `hull` already", config.display())
            }
        }
    }
}

impl InstallOptions {
    pub fn bin_dir(&self) -> PathBuf {
        self.prefix.join("bin")
    }

    pub fn asset_dir(&self) -> PathBuf {
        self.prefix.join("share/hull")
    }
}

/// Installs Hull, telling `report` about each step as it is done. Sources
/// and containerd's configuration are checked before anything is written.
pub fn install(
    options: &InstallOptions,
    report: &mut dyn FnMut(&Action),
) -> Result<(), InstallError> {
    let binaries = BINARIES
        .iter()
        .map(|&name| {
            let path = options.binaries_from.join(name);
            if path.is_file() {
                Ok((name, path))
            } else {
                Err(InstallError::MissingBinary {
                    name,
                    dir: options.binaries_from.clone(),
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let kernel = asset_source("kernel", &options.kernel)?;
    let initrd = asset_source("initrd", &options.initrd)?;
    let containerd_plan = match &options.containerd_config {
        Some(path) => Some(plan_registration(path)?),
        None => None,
    };

    let bin_dir = options.bin_dir();
    for (name, source) in binaries {
        let action = install_file(&source, &bin_dir.join(name), 0o755, false)?;
        report(&action);
    }
    let asset_dir = options.asset_dir();
    let installed_kernel = asset_dir.join("vmlinux");
    let installed_initrd = asset_dir.join("hull-initrd.img");
    report(&install_file(&kernel, &installed_kernel, 0o644, true)?);
    report(&install_file(&initrd, &installed_initrd, 0o644, true)?);
    report(&write_if_changed(
        &asset_dir.join("runtimeclass.yaml"),
        RUNTIME_CLASS.as_bytes(),
        0o644,
    )?);

    install_hull_config(options, &installed_kernel, &installed_initrd, report)?;

    if let Some(plan) = containerd_plan {
        report(&apply_registration(plan)?);
    }
    Ok(())
}

/// A guest asset, with symlinks resolved (`make kernel` links the kernel
/// from its cache).
fn asset_source(what: &'static str, path: &Path) -> Result<PathBuf, InstallError> {
    let missing = || InstallError::MissingAsset {
        what,
        path: path.to_owned(),
    };
    let resolved = fs::canonicalize(path).map_err(|_| missing())?;
    if resolved.is_file() {
        Ok(resolved)
    } else {
        Err(missing())
    }
}

/// Copies `source` to `dest` unless `dest` already has the same content.
fn install_file(
    source: &Path,
    dest: &Path,
    mode: u32,
    show_source: bool,
) -> Result<Action, InstallError> {
    if same_content(source, dest)? {
        set_mode(dest, mode)?;
        return Ok(Action::UpToDate(dest.to_owned()));
    }
    let read_error = |source_err| InstallError::Read {
        path: source.to_owned(),
        source: source_err,
    };
    let mut input = File::open(source).map_err(read_error)?;
    write_atomically(dest, mode, |out| io::copy(&mut input, out).map(drop))?;
    Ok(Action::Installed {
        path: dest.to_owned(),
        from: show_source.then(|| source.to_owned()),
    })
}

fn write_if_changed(dest: &Path, content: &[u8], mode: u32) -> Result<Action, InstallError> {
    match fs::read(dest) {
        Ok(existing) if existing == content => {
            set_mode(dest, mode)?;
            Ok(Action::UpToDate(dest.to_owned()))
        }
        _ => {
            write_atomically(dest, mode, |out| out.write_all(content))?;
            Ok(Action::Installed {
                path: dest.to_owned(),
                from: None,
            })
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), InstallError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        InstallError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// Whether `dest` exists with exactly the bytes of `source`.
fn same_content(source: &Path, dest: &Path) -> Result<bool, InstallError> {
    let Ok(mut theirs) = File::open(dest) else {
        return Ok(false);
    };
    let read_error = |err| InstallError::Read {
        path: source.to_owned(),
        source: err,
    };
    let mut ours = File::open(source).map_err(read_error)?;
    let ours_len = ours.metadata().map_err(read_error)?.len();
    if theirs.metadata().map(|m| m.len()).ok() != Some(ours_len) {
        return Ok(false);
    }
    let mut a = vec![0; 1 << 16];
    let mut b = vec![0; 1 << 16];
    loop {
        let n = read_full(&mut ours, &mut a).map_err(read_error)?;
        let Ok(m) = read_full(&mut theirs, &mut b) else {
            return Ok(false);
        };
        if n != m || a[..n] != b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.hull-tmp-{}", std::process::id()))
}

/// Writes a temporary file next to `dest` with `fill`, syncs it and returns
/// its path; the caller moves it into place.
fn write_temp(
    dest: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<PathBuf, InstallError> {
    let write_error = |source| InstallError::Write {
        path: dest.to_owned(),
        source,
    };
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).map_err(write_error)?;
    }
    let temp = temp_path(dest);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        fill(&mut file)?;
        // The umask may have narrowed `mode`.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok(temp),
        Err(err) => {
            let _ = fs::remove_file(&temp);
            Err(write_error(err))
        }
    }
}

fn write_atomically(
    dest: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), InstallError> {
    let temp = write_temp(dest, mode, fill)?;
    fs::rename(&temp, dest).map_err(|source| {
        let _ = fs::remove_file(&temp);
        InstallError::Write {
            path: dest.to_owned(),
            source,
        }
    })
}

/// Writes Hull's configuration if there is none, pointing it at the
/// installed assets when they are not where the defaults say.
fn install_hull_config(
    options: &InstallOptions,
    installed_kernel: &Path,
    installed_initrd: &Path,
    report: &mut dyn FnMut(&Action),
) -> Result<(), InstallError> {
    let path = &options.hull_config;
    let defaults = Config::default();
    match fs::read_to_string(path) {
        Ok(text) => {
            report(&Action::KeptConfig(path.clone()));
            // An invalid file is `hull check`'s to report; here only a
            // mismatch with what was just installed is worth a note.
            if let Ok(config) = Config::parse(&text, path) {
                let pairs = [
                    ("kernel", config.kernel, installed_kernel),
                    ("initrd", config.initrd, installed_initrd),
                ];
                for (key, value, installed) in pairs {
                    if value != installed {
                        report(&Action::ConfigMismatch {
                            config: path.clone(),
                            key,
                            value,
                            installed: installed.to_owned(),
                        });
                    }
                }
            }
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let mut text = CONFIG_EXAMPLE.to_owned();
            if installed_kernel != defaults.kernel || installed_initrd != defaults.initrd {
                text.push_str(&format!(
                    "\n# Guest assets installed by `hull install --prefix {}`.\nkernel = {}\ninitrd = {}\n",
                    options.prefix.display(),
                    toml_string(installed_kernel),
                    toml_string(installed_initrd),
                ));
            }
            // The shim may run without the prefix on its PATH.
            if options.bin_dir() != Path::new(DEFAULT_BIN_DIR) {
                text.push_str(&format!(
                    "vmm = {}\n",
                    toml_string(&options.bin_dir().join(VMM_BINARY))
                ));
            }
            let temp = write_temp(path, 0o644, |out| out.write_all(text.as_bytes()))?;
            // A hard link never replaces an existing file, so a configuration
            // that appeared meanwhile is kept.
            let linked = fs::hard_link(&temp, path);
            let _ = fs::remove_file(&temp);
            match linked {
                Ok(()) => report(&Action::WroteConfig(path.clone())),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                    report(&Action::KeptConfig(path.clone()))
                }
                Err(source) => {
                    return Err(InstallError::Write {
                        path: path.clone(),
                        source,
                    })
                }
            }
            Ok(())
        }
        Err(source) => Err(InstallError::Read {
            path: path.clone(),
            source,
        }),
    }
}

fn toml_string(path: &Path) -> String {
    toml_edit::Value::from(path.to_string_lossy().as_ref())
        .to_string()
        .trim()
        .to_owned()
}

/// What registering Hull in containerd's configuration will do.
struct RegistrationPlan {
    /// The file to write: the configured path with symlinks resolved.
    path: PathBuf,
    /// Its content now (`None` when absent) and the registration result.
    previous: Option<(String, u32)>,
    registration: Registration,
}

fn plan_registration(path: &Path) -> Result<RegistrationPlan, InstallError> {
    let read_error = |source| InstallError::Read {
        path: path.to_owned(),
        source,
    };
    let (target, previous) = match fs::canonicalize(path) {
        Ok(target) => {
            let text = fs::read_to_string(&target).map_err(read_error)?;
            let mode = fs::metadata(&target)
                .map_err(read_error)?
                .permissions()
                .mode()
                & 0o7777;
            (target, Some((text, mode)))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => (path.to_owned(), None),
        Err(err) => return Err(read_error(err)),
    };
    let text = previous.as_ref().map_or("", |(text, _)| text.as_str());
    let registration =
        containerd_config::register(text).map_err(|source| InstallError::ContainerdConfig {
            path: path.to_owned(),
            source,
        })?;
    Ok(RegistrationPlan {
        path: target,
        previous,
        registration,
    })
}

fn apply_registration(plan: RegistrationPlan) -> Result<Action, InstallError> {
    let (text, snippet) = match plan.registration {
        Registration::AlreadyRegistered => return Ok(Action::AlreadyRegistered(plan.path)),
        Registration::Added { text, snippet } => (text, snippet),
    };
    let mut backup = None;
    let mode = match &plan.previous {
        Some((previous, mode)) => {
            let backup_path = PathBuf::from(format!("{}.hull-backup", plan.path.display()));
            write_atomically(&backup_path, *mode, |out| {
                out.write_all(previous.as_bytes())
            })?;
            backup = Some(backup_path);
            *mode
        }
        None => 0o644,
    };
    write_atomically(&plan.path, mode, |out| out.write_all(text.as_bytes()))?;
    Ok(Action::Registered {
        config: plan.path,
        backup,
        snippet,
    })
}

#[cfg(test)]
mod tests;
