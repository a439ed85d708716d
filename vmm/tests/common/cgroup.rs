//! Cgroups made for one test and removed when it ends, pass or fail.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};

pub struct TestCgroup {
    pub path: PathBuf,
    /// Its path as /proc/<pid>/cgroup shows it (from the hierarchy's root).
    pub name: String,
}

impl TestCgroup {
    /// A cgroup v2 directory, at /sys/fs/cgroup or, in systemd's hybrid layout (as on
    /// these hosts), /sys/fs/cgroup/unified; `label` tells the tests of one binary apart.
    pub fn v2(label: &str) -> TestCgroup {
        let candidates = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
        let hierarchy = candidates
            .iter()
            .find(|path| statfs(**path).is_ok_and(|fs| fs.filesystem_type() == CGROUP2_SUPER_MAGIC))
            .unwrap_or_else(|| {
                panic!(
                    "this test needs a cgroup v2 hierarchy at {} (or {}, systemd's hybrid \
                     layout), and neither is cgroup2",
                    candidates[0], candidates[1]
                )
            });
        Self::create(hierarchy, label)
    }

    /// A cgroup v1 directory in the hierarchy of `controller` (/sys/fs/cgroup/<controller>).
    pub fn v1(controller: &str, label: &str) -> TestCgroup {
        let hierarchy = format!("/sys/fs/cgroup/{controller}");
        assert!(
            statfs(hierarchy.as_str()).is_ok_and(|fs| fs.filesystem_type() == CGROUP_SUPER_MAGIC),
            "this test needs the cgroup v1 hierarchy {hierarchy}"
        );
        Self::create(&hierarchy, label)
    }

    fn create(hierarchy: &str, label: &str) -> TestCgroup {
        let name = format!("/hull-vmm-test-{}-{label}", std::process::id());
        let path = PathBuf::from(format!("{hierarchy}{name}"));
        if let Err(e) = std::fs::create_dir(&path) {
            panic!(
                "cannot create the test cgroup {}: {e} (run as root, with a writable hierarchy)",
                path.display()
            );
        }
        TestCgroup { path, name }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The processes in it have been killed and reaped by now (their guards are
        // dropped first); the kernel may take a moment to let the cgroup go.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = std::fs::remove_dir(&self.path) {
            if Instant::now() > deadline {
                eprintln!("cannot remove the test cgroup {}: {e}", self.path.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
