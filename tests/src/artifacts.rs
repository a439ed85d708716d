//! Things the tests build once per test process: the busybox and pause OCI
//! images and an initramfs whose guest never answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{describe, run};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where cargo put this test's binaries (`target/debug`): the test runs
/// from `target/debug/deps/`, the shim binary sits one level up.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("test binary has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps/ has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A directory for cached build products, shared by test processes.
fn cache_dir() -> PathBuf {
    let dir = bin_dir().join("hull-tests");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Builds an image archive with `images/SCRIPT FLAGS... OUT` into the
/// cache. The builds are deterministic, so concurrent test processes writing
/// the same file (each through its own temporary name, then a rename) agree
/// on its content.
fn build_image(file: &str, script: &str, flags: &[&str]) -> PathBuf {
    let out = cache_dir().join(file);
    let tmp = cache_dir().join(format!("{file}.{}", std::process::id()));
    let mut cmd = Command::new(workspace_root().join("images").join(script));
    cmd.args(flags).arg(&tmp);
    let output = run(cmd, None, Duration::from_secs(120));
    assert!(
        output.status.success(),
        "images/{script} failed\n{}",
        describe(&output)
    );
    std::fs::rename(&tmp, &out).expect("rename image archive");
    out
}

/// The busybox image archive (`docker.io/local/busybox:latest`).
pub fn busybox_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_image("busybox.tar", "busybox-image.sh", &[]))
}

/// The busybox image whose config sets Env FOO=bar, WorkingDir /tmp and
/// User 65534:65534 (`docker.io/local/busybox-custom:latest`).
pub fn busybox_custom_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_image("busybox-custom.tar", "busybox-image.sh", &["--custom"]))
}

/// The pod sandbox image CRI's `sandbox_image` names
/// (`docker.io/local/pause:hull`), from `images/pause-image.sh`.
pub fn pause_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_image("pause.tar", "pause-image.sh", &[]))
}

/// An initramfs whose `/init` is a shell script that only sleeps: a guest
/// that boots but whose agent never answers.
pub fn silent_initrd() -> &'static Path {
    static INITRD: OnceLock<PathBuf> = OnceLock::new();
    INITRD.get_or_init(|| {
        let out = cache_dir().join("silent-initrd.img");
        let stage = cache_dir().join(format!("silent-initrd.{}", std::process::id()));
        let tmp = cache_dir().join(format!("silent-initrd.img.{}", std::process::id()));
        let script = format!(
            r#"set -eu
rm -rf "{stage}"
mkdir -p "{stage}/bin" "{stage}/dev"
install -m 0755 /bin/busybox "{stage}/bin/busybox"
printf '#!/bin/busybox sh\nexec /bin/busybox sleep 100000\n' > "{stage}/init"
chmod 0755 "{stage}/init"
mknod -m 0600 "{stage}/dev/console" c 5 1
cd "{stage}"
find . | LC_ALL=C sort | cpio --quiet -o -H newc > "{tmp}"
mv "{tmp}" "{out}"
rm -rf "{stage}""#,
            stage = stage.display(),
            tmp = tmp.display(),
            out = out.display()
        );
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(script);
        let output = run(cmd, None, Duration::from_secs(60));
        assert!(
            output.status.success(),
            "building the silent initrd failed\n{}",
            describe(&output)
        );
        out
    })
}
