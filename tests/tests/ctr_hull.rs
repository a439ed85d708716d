//! Hull through containerd and ctr, compared with runc in the same run:
//! every scenario runs under both runtimes on one private containerd and the
//! answers must be equal. Then what only Hull has: its own kernel, VMs that
//! come and go without leftovers, a VM that dies, and boots that fail.
//!
//! Needs `containerd-shim-hull-v2` built next to the test binaries
//! (`cargo build -p hull-shim`) and HULL_TEST_KERNEL / HULL_TEST_INITRD
//! (`make test` sets them).

use std::time::{Duration, Instant};

use hull_tests::scenarios;
use hull_tests::{
    artifacts, assert_no_leftovers, assert_no_processes_or_mounts, describe, exit_code,
    host_kernel_release, require_hull_shim, text, Containerd, HullConfig, HULL, RUNC,
};

fn containerd() -> Containerd {
    require_hull_shim();
    let c = Containerd::start();
    c.import_busybox();
    c
}

/// Runs `scenario` under runc, then under Hull, and asserts equal answers.
fn same_as_runc<T: PartialEq + std::fmt::Debug>(
    c: &Containerd,
    scenario: impl Fn(&Containerd, &str) -> T,
) -> T {
    let runc = scenario(c, RUNC);
    let hull = scenario(c, HULL);
    assert_eq!(hull, runc, "Hull (left) differs from runc (right)");
    hull
}

#[test]
fn kernel_release_is_the_guests() {
    let c = containerd();
    let release = scenarios::kernel_release(&c, HULL);
    assert_ne!(release, host_kernel_release(), "ran on the host kernel");
    assert!(
        release.ends_with("-hull"),
        "guest kernel release {release:?}"
    );
    assert_no_leftovers(&c);
}

#[test]
fn exit_codes_and_missing_command_match_runc() {
    let c = containerd();
    assert_eq!(same_as_runc(&c, scenarios::exit_codes), vec![0, 3, 255, 1]);
    let missing = same_as_runc(&c, scenarios::missing_command);
    assert!(missing.failed && missing.names_the_command);
    assert_no_leftovers(&c);
}

#[test]
fn stdout_stderr_stdin_and_terminal_match_runc() {
    let c = containerd();
    same_as_runc(&c, scenarios::streams);
    let (bytes, intact) = same_as_runc(&c, scenarios::large_output);
    assert!(bytes == 80_000 * 12 && intact);
    same_as_runc(&c, scenarios::stdin);
    let tty = same_as_runc(&c, scenarios::tty_run);
    assert!(tty.stdio_is_tty && tty.read_input);
    assert_no_leftovers(&c);
}

#[test]
fn exec_with_and_without_terminal_matches_runc() {
    let c = containerd();
    let exec = same_as_runc(&c, scenarios::exec);
    assert_eq!(exec.streams.code, 5);
    assert!(exec.tty.stdio_is_tty && exec.tty.read_input);
    assert_no_leftovers(&c);
}

#[test]
fn image_env_cwd_user_and_run_flags_match_runc() {
    let c = containerd();
    c.import_busybox_custom();
    let config = same_as_runc(&c, scenarios::image_config);
    assert!(config
        .from_image
        .starts_with("65534\n65534\n/tmp\nFOO=bar\n"));
    assert_no_leftovers(&c);
}

#[test]
fn signals_match_runc() {
    let c = containerd();
    let signals = same_as_runc(&c, scenarios::signals);
    assert_eq!((signals.trapped_code, signals.sigkill_code), (7, 137));
    assert_no_leftovers(&c);
}

#[test]
fn ps_and_metrics_match_runc() {
    let c = containerd();
    let inspection = same_as_runc(&c, scenarios::ps_and_metrics);
    assert_eq!(inspection.process_count, 3);
    assert_no_leftovers(&c);
}

#[test]
fn pause_and_resume_match_runc() {
    let c = containerd();
    let pause = same_as_runc(&c, scenarios::pause_resume);
    assert!(pause.loop_stopped_while_paused && pause.loop_ran_before_pause);
    assert_no_leftovers(&c);
}

/// Checkpoint is refused as not implemented, saying why; the container
/// runs on.
#[test]
fn checkpoint_is_refused_as_not_implemented() {
    let c = containerd();
    let id = c.id("ckpt");
    let boot = Duration::from_secs(90);
    c.run_detached(HULL, &id, &["sleep", "100000"]);
    assert!(
        c.wait_for_status(&id, "RUNNING", boot),
        "{id} is not running"
    );
    let output = c.ctr(&["task", "checkpoint", &id]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("Hull does not checkpoint containers"),
        "{stderr}"
    );
    assert!(stderr.contains("not implemented"), "{stderr}");
    assert!(c.wait_for_status(&id, "RUNNING", boot), "{id} stopped");
    c.kill_and_remove(&id);
    assert_no_leftovers(&c);
}

#[test]
fn ten_in_a_row_and_four_at_once_leave_nothing_behind() {
    let c = containerd();
    let outputs = scenarios::many(&c, HULL, 10, 4);
    assert_eq!(outputs, scenarios::many_outputs(10, 4));
    assert_no_leftovers(&c);
}

#[test]
fn killing_the_vm_ends_the_task_and_cleans_up() {
    let c = containerd();
    let id = c.id("vmkill");
    let run = c.spawn_run(HULL, &id, &["sleep", "100000"]);
    assert!(
        c.wait_for_status(&id, "RUNNING", Duration::from_secs(90)),
        "{id} is not running\n{}",
        run.stderr()
    );
    // The VMM, whichever it is, by the pid the shim recorded.
    let vmm = c.vmm_pid(&id);
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the VMM");
    let output = run.wait(Duration::from_secs(30));
    let code = exit_code(&output);
    assert_ne!(
        code,
        0,
        "task exited 0 after its VM was killed\n{}",
        describe(&output)
    );
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "task took {:?} to exit after its VM was killed",
        killed.elapsed()
    );
    assert_eq!(c.task_status(&id), None, "task {id} is still listed");
    assert_no_leftovers(&c);
}

/// `ctr run` under a broken configuration: must fail (not hang) and say why.
fn failing_run(config: HullConfig) -> (Containerd, String) {
    require_hull_shim();
    let c = Containerd::start_with(config);
    c.import_busybox();
    let id = c.id("broken");
    let output = c.ctr_run(HULL, &id, &["true"], None);
    assert_ne!(
        exit_code(&output),
        0,
        "ctr run succeeded\n{}",
        describe(&output)
    );
    let _ = c.ctr(&["containers", "rm", &id]);
    let stderr = text(&output.stderr);
    eprintln!("ctr run failed as expected: {stderr}");
    (c, stderr)
}

#[test]
fn missing_kernel_is_named() {
    let config = HullConfig {
        kernel: Some("/nonexistent/hull-vmlinux".into()),
        ..HullConfig::from_env()
    };
    let (c, stderr) = failing_run(config);
    assert!(
        stderr.contains("/nonexistent/hull-vmlinux"),
        "error does not name the missing kernel: {stderr}"
    );
    assert_no_processes_or_mounts(&c);
}

#[test]
fn silent_guest_times_out_naming_the_agent() {
    let config = HullConfig {
        initrd: Some(artifacts::silent_initrd().to_path_buf()),
        agent_timeout_secs: Some(3),
        ..HullConfig::from_env()
    };
    let started = Instant::now();
    let (c, stderr) = failing_run(config);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "failing took {:?}",
        started.elapsed()
    );
    assert!(
        stderr.to_lowercase().contains("agent"),
        "error does not name the agent: {stderr}"
    );
    assert_no_processes_or_mounts(&c);
}

#[test]
fn unknown_config_key_is_named() {
    let config = HullConfig {
        extra: "no_such_key = true\n".into(),
        ..HullConfig::from_env()
    };
    let (c, stderr) = failing_run(config);
    assert!(
        stderr.contains("no_such_key"),
        "error does not name the unknown key: {stderr}"
    );
    assert_no_processes_or_mounts(&c);
}

#[test]
fn a_corrupt_config_file_is_named_with_the_line() {
    let config = HullConfig {
        extra: "memory_mib = ]\n".into(),
        ..HullConfig::from_env()
    };
    let (c, stderr) = failing_run(config);
    assert!(
        stderr.contains("hull.toml") && stderr.contains("line "),
        "error does not name the file and line: {stderr}"
    );
    assert_no_processes_or_mounts(&c);
}

/// A sandbox id is joined into Hull's state directory; the CRI annotation
/// that sets it is free text anyone with `ctr run --annotation` controls.
/// Anything but containerd's id grammar is refused with InvalidArgument,
/// before a single file or process exists.
#[test]
fn a_sandbox_id_that_is_a_path_is_refused_and_touches_nothing() {
    let c = containerd();
    // What `../x` and friends would reach from the state directory.
    let victim = c.dir().join("x");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), "data").unwrap();
    for bad in ["../x", "..", "/", "x/../../x", ".hidden"] {
        let id = c.id("badid");
        let annotation = format!("io.kubernetes.cri.sandbox-id={bad}");
        let output = c.ctr_run_with(
            HULL,
            hull_tests::BUSYBOX,
            &["--annotation", &annotation],
            &id,
            &["true"],
        );
        let stderr = text(&output.stderr);
        assert_ne!(exit_code(&output), 0, "{bad:?} was accepted");
        assert!(
            stderr.contains("invalid sandbox id") && stderr.contains("invalid argument"),
            "{bad:?}: {stderr}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(victim.join("precious")).unwrap(),
        "data"
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
    assert_no_leftovers(&c);
}

/// The shim holds no lock across a boot: while a pod's VM boots (here it
/// never finishes: the guest is silent), its containers are listed, their
/// State and Pids answer, a Kill ends the one it is sent to, and deleting
/// the pod cancels the boot, leaving nothing behind.
#[test]
fn state_and_kill_answer_while_the_pods_vm_boots() {
    require_hull_shim();
    let config = HullConfig {
        initrd: Some(artifacts::silent_initrd().to_path_buf()),
        agent_timeout_secs: Some(600),
        ..HullConfig::from_env()
    };
    let c = Containerd::start_with(config);
    c.import_busybox();
    let pod = c.id("pod");
    let app = c.id("app");
    let run = |id: &str, kind: &str| {
        let sandbox = format!("io.kubernetes.cri.sandbox-id={pod}");
        let role = format!("io.kubernetes.cri.container-type={kind}");
        c.spawn_ctr(&[
            "run",
            "-d",
            "--runtime",
            HULL,
            "--annotation",
            &sandbox,
            "--annotation",
            &role,
            hull_tests::BUSYBOX,
            id,
            "sleep",
            "1000",
        ])
    };
    let mut pod_run = run(&pod, "sandbox");
    assert!(
        c.wait_for_status(&pod, "CREATED", Duration::from_secs(60)),
        "the pod's task was not listed while its VM booted
{}",
        c.log_tail(40)
    );
    let mut app_run = run(&app, "container");
    assert!(
        c.wait_for_status(&app, "CREATED", Duration::from_secs(60)),
        "the second container was not listed while the VM booted
{}",
        c.log_tail(40)
    );
    assert_eq!(
        c.ps(&app),
        Vec::<u32>::new(),
        "a container waiting for the VM has no process"
    );
    assert!(
        pod_run.is_running() && app_run.is_running(),
        "the VM is no longer booting: the test proves nothing
pod: {}
app: {}",
        pod_run.stderr(),
        app_run.stderr()
    );
    c.kill(&app, "SIGKILL");
    assert!(
        c.wait_for_status(&app, "STOPPED", Duration::from_secs(30)),
        "Kill did not end a container waiting for the VM"
    );
    let app_out = app_run.wait(Duration::from_secs(30));
    assert_ne!(exit_code(&app_out), 0, "{}", describe(&app_out));
    assert_eq!(c.remove(&app), 137);
    c.kill(&pod, "SIGKILL");
    assert!(c.wait_for_status(&pod, "STOPPED", Duration::from_secs(30)));
    c.remove(&pod);
    let pod_out = pod_run.wait(Duration::from_secs(60));
    assert_ne!(exit_code(&pod_out), 0, "{}", describe(&pod_out));
    assert_no_leftovers(&c);
}

/// Processes burning CPU beside a test, killed when dropped.
struct CpuBurners(Vec<std::process::Child>);

impl CpuBurners {
    fn start(count: usize) -> Self {
        CpuBurners(
            (0..count)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("start a CPU burner")
                })
                .collect(),
        )
    }
}

impl Drop for CpuBurners {
    fn drop(&mut self) {
        for burner in &mut self.0 {
            let _ = burner.kill();
            let _ = burner.wait();
        }
    }
}

/// A burst of pods, as a Deployment scaling up on a busy node starts them:
/// four per CPU at once, beside two processes burning CPU. Under runc all
/// start; under Hull too (boots queue for a slot instead of all slowing
/// down until some miss their deadline), and all go without leftovers.
#[test]
fn a_burst_of_containers_all_start_beside_cpu_burners() {
    let c = containerd();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ids: Vec<String> = (0..4 * cpus).map(|_| c.id("burst")).collect();
    let burners = CpuBurners::start(2);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for id in &ids {
            let c = &c;
            scope.spawn(move || c.run_detached(HULL, id, &["sleep", "100000"]));
        }
    });
    let all_started = started.elapsed();
    drop(burners);
    for id in &ids {
        assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"), "{id}");
    }
    // Each VMM runs as a user of its own: one cannot signal or trace another.
    let mut uids: Vec<String> = ids
        .iter()
        .map(|id| {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", c.vmm_pid(id))).unwrap();
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .unwrap()
                .to_string()
        })
        .collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), ids.len(), "VMM uids: {uids:?}");
    eprintln!(
        "{} containers started at once: all running after {all_started:.1?}",
        ids.len()
    );
    std::thread::scope(|scope| {
        for id in &ids {
            let c = &c;
            scope.spawn(move || assert_eq!(c.kill_and_remove(id), 137, "{id}"));
        }
    });
    assert_no_leftovers(&c);
}
