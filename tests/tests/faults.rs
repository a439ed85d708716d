//! Faults under running containers: a part of a pod's sandbox dies or hangs
//! and containerd must see the task exit (with a status and an event)
//! within a bound, as must an exec in flight, `ctr task rm` must work, nothing may be left on the host,
//! and a pod beside it must not notice.
//!
//! On these hosts the backend is QEMU/TCG, so the parts are QEMU, its vsock
//! backend (`hull-vmm vsock`), virtiofsd and the shim.

use std::time::{Duration, Instant};

use hull_tests::{
    assert_no_leftovers, config_spec, describe, require_hull_shim, text, Containerd, HullConfig,
    HULL,
};
use nix::sys::signal::Signal;

/// How long a task may take to end after its sandbox broke. A dead helper
/// is seen at once; a hang within the health check's interval and deadline
/// (1 s and 5 s here).
const ENDS_WITHIN: Duration = Duration::from_secs(20);

fn containerd() -> Containerd {
    require_hull_shim();
    let c = Containerd::start_with(hull_tests::soak::soak_config());
    c.import_busybox();
    c
}

fn signal(pid: u32, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
        .unwrap_or_else(|e| panic!("{signal} to {pid}: {e}"));
}

/// Starts a victim and a bystander (each its own sandbox), breaks the
/// victim's sandbox with `inject`, and checks what must hold after.
fn fault(name: &str, inject: impl FnOnce(&Containerd, &str)) {
    fault_of(
        name,
        |c, id| c.run_detached(HULL, id, &["sleep", "100000"]),
        inject,
    );
}

/// [`fault`] with a victim that `start` runs (detached, sleeping).
fn fault_of(
    name: &str,
    start: impl FnOnce(&Containerd, &str),
    inject: impl FnOnce(&Containerd, &str),
) {
    let c = containerd();
    let victim = c.id(name);
    let bystander = c.id("bystander");
    c.run_detached(HULL, &bystander, &["sleep", "100000"]);
    start(&c, &victim);
    // An exec in flight when the fault lands must end too.
    let exec = c.spawn_ctr(&[
        "task",
        "exec",
        "--exec-id",
        "long",
        &victim,
        "sleep",
        "100000",
    ]);
    let started = Instant::now() + Duration::from_secs(30);
    while c.ps(&victim).len() < 2 {
        assert!(
            Instant::now() < started,
            "the exec in {victim} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let injected = Instant::now();
    inject(&c, &victim);
    let deadline = injected + ENDS_WITHIN;
    while c.task_status(&victim).as_deref() == Some("RUNNING") {
        assert!(
            Instant::now() < deadline,
            "{victim} still runs {ENDS_WITHIN:?} after the fault\n{}",
            c.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let exec = exec.wait(ENDS_WITHIN);
    assert!(
        exec.status.code().is_some(),
        "the exec still ran {ENDS_WITHIN:?} after the task ended\n{}\n{}",
        describe(&exec),
        c.log_tail(60)
    );
    assert_ne!(
        exec.status.code(),
        Some(0),
        "the exec did not fail\n{}",
        describe(&exec)
    );
    // A dead shim takes its task with it; containerd then lists none.
    match c.task_status(&victim) {
        Some(status) => {
            assert_eq!(status, "STOPPED");
            assert_ne!(c.remove(&victim), 0, "{victim} exited 0 after a fault");
        }
        None => {
            let output = c.ctr(&["containers", "rm", &victim]);
            assert!(output.status.success(), "{}", describe(&output));
        }
    }

    // The other pod carries on.
    assert_eq!(c.task_status(&bystander).as_deref(), Some("RUNNING"));
    let output = c.exec(&bystander, "still", &["echo", "alive"], None);
    assert_eq!(text(&output.stdout), "alive\n", "{}", describe(&output));
    assert_eq!(c.kill_and_remove(&bystander), 137);
    assert_no_leftovers(&c);
}

/// The victim's processes whose command line contains `needle`.
fn sandbox_process(c: &Containerd, id: &str, needle: &str) -> Vec<u32> {
    let all = c.processes_of_sandbox(id);
    let found: Vec<u32> = all
        .iter()
        .filter(|(_, cmdline)| cmdline.contains(needle))
        .map(|(pid, _)| *pid)
        .collect();
    assert!(
        !found.is_empty(),
        "no {needle:?} in {id}'s sandbox: {all:#?}"
    );
    found
}

#[test]
fn virtiofsd_killed() {
    fault("virtiofsdkill", |c, id| {
        for pid in sandbox_process(c, id, "virtiofsd") {
            signal(pid, Signal::SIGKILL);
        }
    });
}

#[test]
fn vsock_backend_killed() {
    fault("vsockkill", |c, id| {
        for pid in sandbox_process(c, id, " vsock ") {
            signal(pid, Signal::SIGKILL);
        }
    });
}

#[test]
fn vmm_stopped() {
    fault("vmmstop", |c, id| signal(c.vmm_pid(id), Signal::SIGSTOP));
}

#[test]
fn vsock_backend_stopped() {
    fault("vsockstop", |c, id| {
        for pid in sandbox_process(c, id, " vsock ") {
            signal(pid, Signal::SIGSTOP);
        }
    });
}

#[test]
fn shim_killed() {
    fault("shimkill", |c, id| signal(c.shim_pid(id), Signal::SIGKILL));
}

#[test]
fn virtiofsd_stopped() {
    fault("virtiofsdstop", |c, id| {
        for pid in sandbox_process(c, id, "virtiofsd") {
            signal(pid, Signal::SIGSTOP);
        }
    });
}

/// The guest kernel panics (magic SysRq from a container that may write
/// /proc/sysrq-trigger, as a privileged one may): the VM is gone, and with
/// it the sandbox.
#[test]
fn guest_kernel_panicked() {
    fault_of(
        "panic",
        |c, id| {
            let root = config_spec::busybox_root(&c.dir().join(format!("{id}-root")));
            let spec = config_spec::spec(c, &root, &["sleep", "100000"], |s| {
                s["linux"]["readonlyPaths"] = serde_json::json!([]);
            });
            let spec = config_spec::write(c, &format!("{id}.json"), &spec);
            let output = c.ctr(&["run", "-d", "--runtime", HULL, "--config", &spec, id]);
            assert!(output.status.success(), "{}", describe(&output));
        },
        |c, id| {
            let output = c.exec(
                id,
                "panic",
                &["sh", "-c", "echo c > /proc/sysrq-trigger"],
                None,
            );
            assert_ne!(output.status.code(), Some(0), "{}", describe(&output));
        },
    );
}

/// A fault that lands as the task is being deleted: kill and delete come
/// straight after it, before any health check could have seen it, and must
/// still finish within the bound and leave nothing.
fn fault_then_delete(name: &str, inject: impl FnOnce(&Containerd, &str)) {
    let c = containerd();
    let id = c.id(name);
    c.run_detached(HULL, &id, &["sleep", "100000"]);
    inject(&c, &id);
    let started = Instant::now();
    // A task the fault already ended answers as under runc: "process
    // already finished".
    let killed = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    assert!(
        killed.status.success() || text(&killed.stderr).contains("process already finished"),
        "killing {id} after the fault\n{}",
        describe(&killed)
    );
    assert!(
        c.wait_for_status(&id, "STOPPED", ENDS_WITHIN),
        "{id} did not stop within {ENDS_WITHIN:?} of a kill after the fault\n{}",
        c.log_tail(40)
    );
    c.remove(&id);
    assert!(
        started.elapsed() < ENDS_WITHIN,
        "kill and delete took {:?}",
        started.elapsed()
    );
    assert_no_leftovers(&c);
}

#[test]
fn vmm_stopped_during_delete() {
    fault_then_delete("vmmstopdel", |c, id| signal(c.vmm_pid(id), Signal::SIGSTOP));
}

#[test]
fn virtiofsd_killed_during_delete() {
    fault_then_delete("virtiofsddel", |c, id| {
        for pid in sandbox_process(c, id, "virtiofsd") {
            signal(pid, Signal::SIGKILL);
        }
    });
}

#[test]
fn vsock_backend_stopped_during_delete() {
    fault_then_delete("vsockstopdel", |c, id| {
        for pid in sandbox_process(c, id, " vsock ") {
            signal(pid, Signal::SIGSTOP);
        }
    });
}

/// containerd dies and comes back with two sandboxes running, one of whose
/// shims died while it was away: the live one is found again and answers
/// exec, stats, kill and delete; the dead one is cleaned by `shim delete`,
/// VM included.
#[test]
fn containerd_restarts_under_running_sandboxes() {
    let c = containerd();
    let kept = c.id("kept");
    let orphan = c.id("orphan");
    c.run_detached(HULL, &kept, &["sleep", "100000"]);
    c.run_detached(HULL, &orphan, &["sleep", "100000"]);
    let orphan_shim = c.shim_pid(&orphan);

    c.kill_daemon();
    signal(orphan_shim, Signal::SIGKILL);
    c.restart_daemon();

    assert_eq!(c.task_status(&kept).as_deref(), Some("RUNNING"));
    let output = c.exec(&kept, "after", &["echo", "back"], None);
    assert_eq!(text(&output.stdout), "back\n", "{}", describe(&output));
    assert!(c.metrics(&kept).is_object());
    assert_eq!(c.kill_and_remove(&kept), 137);

    let deadline = Instant::now() + ENDS_WITHIN;
    while c.task_status(&orphan).as_deref() == Some("RUNNING") {
        assert!(
            Instant::now() < deadline,
            "{orphan} still listed as running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if c.task_status(&orphan).is_some() {
        c.remove(&orphan);
    } else {
        let output = c.ctr(&["containers", "rm", &orphan]);
        assert!(output.status.success(), "{}", describe(&output));
    }
    assert_no_leftovers(&c);
}

/// virtiofsd killed while the VM boots (a guest that never answers holds
/// the boot): the boot fails at once, naming virtiofsd, not at the agent
/// deadline, and the task can be removed leaving nothing but the console
/// log.
#[test]
fn virtiofsd_killed_during_boot() {
    require_hull_shim();
    let config = HullConfig {
        initrd: Some(hull_tests::artifacts::silent_initrd().to_path_buf()),
        agent_timeout_secs: Some(600),
        ..HullConfig::from_env()
    };
    let c = Containerd::start_with(config);
    c.import_busybox();
    let id = c.id("bootfault");
    let run = c.spawn_run(HULL, &id, &["true"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let virtiofsd = loop {
        let found: Vec<u32> = c
            .processes_of_sandbox(&id)
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains("virtiofsd"))
            .map(|(pid, _)| pid)
            .collect();
        if !found.is_empty() && c.processes_of_sandbox(&id).len() > found.len() {
            break found; // and the VMM runs beside it
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox of {id} never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let killed = Instant::now();
    for pid in virtiofsd {
        signal(pid, Signal::SIGKILL);
    }
    let output = run.wait(ENDS_WITHIN);
    assert!(killed.elapsed() < ENDS_WITHIN, "the boot went on");
    assert_ne!(output.status.code(), Some(0), "{}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("virtiofsd"), "{}", describe(&output));
    if c.task_status(&id).is_some() {
        let output = c.ctr(&["task", "delete", "--force", &id]);
        assert!(output.status.success(), "{}", describe(&output));
    }
    let listed = c.ctr(&["containers", "ls", "-q"]);
    if text(&listed.stdout).lines().any(|line| line == id) {
        let output = c.ctr(&["containers", "rm", &id]);
        assert!(output.status.success(), "{}", describe(&output));
    }
    hull_tests::assert_no_processes_or_mounts(&c);
}

/// A tmpfs of `size` mounted over `dir` for a test, unmounted when dropped
/// (a failing test included).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0711").as_str()),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", dir.display()));
        Self(dir.to_owned())
    }

    /// Writes `name` until the disk is full.
    fn fill(&self, name: &str) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.0.join(name)).unwrap();
        let block = vec![0u8; 64 << 10];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.0.display()),
            }
        }
    }

    fn free(&self, name: &str) {
        std::fs::remove_file(self.0.join(name)).unwrap();
    }

    /// What is on the disk besides `except`.
    fn entries(&self, except: &str) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != except)
            .collect()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Hull's state dir full: a sandbox that cannot be made fails naming the
/// cause and leaves nothing; one that runs when the disk fills keeps
/// running, answers exec, and is deleted without a trace.
#[test]
fn a_full_state_dir() {
    let c = containerd();
    let disk = SmallDisk::mount(&c.hull_state_dir(), "4m");
    disk.fill("filler");

    let id = c.id("fullboot");
    let output = c.ctr_run(HULL, &id, &["echo", "hi"], None);
    let _ = c.ctr(&["containers", "rm", &id]);
    if output.status.success() {
        eprintln!("a sandbox ran with its state dir full");
        assert_eq!(text(&output.stdout), "hi\n", "{}", describe(&output));
    } else {
        eprintln!("with its state dir full: {}", text(&output.stderr));
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains("No space left on device"),
            "a full state dir is not named\n{}\n{}",
            describe(&output),
            c.log_tail(40)
        );
    }
    hull_tests::assert_no_processes_or_mounts(&c);
    assert_eq!(
        disk.entries("filler"),
        Vec::<String>::new(),
        "left on the disk"
    );

    disk.free("filler");
    let running = c.id("fullrun");
    c.run_detached(HULL, &running, &["sleep", "100000"]);
    disk.fill("filler");
    let output = c.exec(&running, "full", &["echo", "still"], None);
    assert_eq!(text(&output.stdout), "still\n", "{}", describe(&output));
    assert_eq!(c.kill_and_remove(&running), 137);
    hull_tests::assert_no_processes_or_mounts(&c);
    assert_eq!(
        disk.entries("filler"),
        Vec::<String>::new(),
        "left on the disk"
    );
}
