//! `hull pool`: new sandboxes of a containerd take VMs booted ahead, and
//! the pool boots replacements. Checked through a private containerd and
//! ctr: the sandbox's VM is the pool's (its state dir is named `pool-…`,
//! found through a symlink of the sandbox id), a sandbox of another size
//! boots its own, and when the pool stops nothing of it is left.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hull_tests::{
    artifacts, assert_no_leftovers, describe, require_hull_shim, text, Containerd, HULL,
};

/// How long a VM may take to boot ahead under emulation.
const BOOT: Duration = Duration::from_secs(180);

/// `hull pool` for one containerd, logging at info level to a pipe the
/// test reads; stopped (SIGTERM, then SIGKILL) on drop.
struct Pool {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Pool {
    fn start(c: &Containerd, count: u32) -> Pool {
        let mut child = Command::new(artifacts::bin_dir().join("hull"))
            .arg("--config")
            .arg(c.hull_config())
            .args(["pool", "--count", &count.to_string(), "--containerd"])
            .arg(c.socket())
            .env("HULL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting hull pool");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("pool: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Pool {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until the pool has logged `needle` `times` times in all.
    fn wait_for(&mut self, needle: &str, times: usize) {
        let deadline = Instant::now() + BOOT;
        while self.seen.iter().filter(|l| l.contains(needle)).count() < times {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "the pool did not log {needle:?} {times} times in {BOOT:?}; it logged:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Stops the pool as systemd would, and returns whether it exited 0.
    fn stop(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("waiting for the pool") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the pool did not stop within 60 s of SIGTERM");
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const READY: &str = "a VM is booted ahead";

/// The name of the VM serving sandbox `id`, when it came from a pool.
fn pool_vm_of(c: &Containerd, id: &str) -> Option<String> {
    let link = std::fs::read_link(c.hull_state_dir().join(id)).ok()?;
    Some(link.to_string_lossy().into_owned())
}

fn containerd() -> Containerd {
    require_hull_shim();
    let c = Containerd::start();
    c.import_busybox();
    c
}

#[test]
fn a_sandbox_takes_a_vm_booted_ahead_and_the_pool_boots_another() {
    let c = containerd();
    let mut pool = Pool::start(&c, 1);
    pool.wait_for(READY, 1);

    let id = c.id("pooled");
    c.run_detached(HULL, &id, &["sleep", "100000"]);
    let vm = pool_vm_of(&c, &id).expect("the sandbox's state dir is a pool VM's");
    assert!(vm.starts_with("pool-"), "{vm}");
    assert!(c.hull_state_dir().join(&vm).join("vmm.pid").exists());
    let release = c.exec(&id, "uname", &["uname", "-r"], None);
    assert!(release.status.success(), "{}", describe(&release));
    assert!(
        text(&release.stdout).trim().ends_with("-hull"),
        "{}",
        describe(&release)
    );
    // The replacement boots while the sandbox runs.
    pool.wait_for(READY, 2);

    assert_eq!(c.kill_and_remove(&id), 137);
    assert!(
        !c.hull_state_dir().join(&id).exists(),
        "the sandbox's name is left"
    );
    assert!(
        !c.hull_state_dir().join(&vm).exists(),
        "the pool VM's state dir is left"
    );

    // A container that runs and exits takes the replacement.
    let second = c.id("pooled");
    let output = c.ctr_run(HULL, &second, &["sh", "-c", "echo from the pool"], None);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(text(&output.stdout), "from the pool\n");
    pool.wait_for("handing out a VM booted ahead", 2);

    assert!(pool.stop(), "the pool exits 0 on SIGTERM");
    assert_no_leftovers(&c);
}

#[test]
fn a_sandbox_of_another_size_boots_a_vm_of_its_own() {
    let c = containerd();
    let mut pool = Pool::start(&c, 1);
    pool.wait_for(READY, 1);

    let id = c.id("sized");
    let args = [
        "run",
        "-d",
        "--runtime",
        HULL,
        "--annotation",
        "io.kubernetes.cri.sandbox-memory=402653184",
        hull_tests::BUSYBOX,
        &id,
        "sleep",
        "100000",
    ];
    let output = c.ctr(&args);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        pool_vm_of(&c, &id),
        None,
        "a pool VM of the default size served it"
    );
    assert!(Path::new(&c.hull_state_dir().join(&id).join("vmm.pid")).exists());
    assert_eq!(c.kill_and_remove(&id), 137);

    // The pool's VM waited, and serves the next sandbox of its size.
    let next = c.id("default");
    c.run_detached(HULL, &next, &["sleep", "100000"]);
    assert!(pool_vm_of(&c, &next).is_some_and(|vm| vm.starts_with("pool-")));
    assert_eq!(c.kill_and_remove(&next), 137);

    assert!(pool.stop());
    assert_no_leftovers(&c);
}

/// A Kubernetes pod from the pool: its VM booted with a tap in a namespace
/// of its own, which moves into the pod's at RunPodSandbox; the guest NIC
/// takes the pod's MAC. The pod's network then answers as under runc.
#[test]
fn a_pod_takes_a_vm_booted_ahead_and_its_network_matches_runc() {
    use hull_tests::cri::scenarios::{self, Held, Teardown};
    use hull_tests::cri::{CriContainerd, HULL_HANDLER, RUNC_HANDLER};

    require_hull_shim();
    let cri = CriContainerd::start();
    let mut pool = Pool::start(cri.containerd(), 1);
    pool.wait_for(READY, 1);

    let without_teardown = |mut result: scenarios::PodNetworking| {
        let teardown = std::mem::replace(
            &mut result.teardown,
            Teardown {
                held: Held::ALL,
                left: Default::default(),
            },
        );
        assert_eq!(teardown.held, Held::ALL, "what the running pod held");
        assert_eq!(teardown.left, Default::default(), "left behind");
        result
    };
    let runc = without_teardown(scenarios::pod_networking(&cri, RUNC_HANDLER));
    let hull = without_teardown(scenarios::pod_networking(&cri, HULL_HANDLER));
    pool.wait_for("handing out a VM booted ahead", 1);
    assert_eq!(
        hull, runc,
        "Hull from the pool (left) and runc (right) differ"
    );
    assert_eq!(hull.host_to_pod, "hello-from-pod\n");
    assert_eq!(hull.pod_to_host, "hello-from-host\n");

    assert!(pool.stop());
    assert_no_leftovers(cri.containerd());
}
