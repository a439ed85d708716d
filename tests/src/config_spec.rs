//! Containers run from a spec of the test's own (`ctr run --config`), for
//! what no `ctr run` flag writes: malformed specs, or a process with the
//! guest's /proc/sysrq-trigger writable.

use std::path::{Path, PathBuf};

use crate::{describe, Containerd};

/// A root for `ctr run --config` in `dir`: the host's static busybox as
/// `/bin/busybox`, and `sh`, `sleep`, `cat` and `echo`. Returns its path.
pub fn busybox_root(dir: &Path) -> PathBuf {
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    dir.to_owned()
}

/// ctr's default spec (`ctr oci spec`) on `root`, running `args` with
/// `PATH=/bin`, changed by `edit`.
pub fn spec(
    c: &Containerd,
    root: &Path,
    args: &[&str],
    edit: impl Fn(&mut serde_json::Value),
) -> serde_json::Value {
    let output = c.ctr(&["oci", "spec"]);
    assert!(
        output.status.success(),
        "ctr oci spec\n{}",
        describe(&output)
    );
    let mut spec: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    spec["root"] = serde_json::json!({ "path": root });
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    edit(&mut spec);
    spec
}

/// Writes `spec` as `name` in the test's directory, for `--config`.
pub fn write(c: &Containerd, name: &str, spec: &serde_json::Value) -> String {
    let path = c.dir().join(name);
    std::fs::write(&path, spec.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}
