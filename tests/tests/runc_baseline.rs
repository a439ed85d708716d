//! The harness proven against runc: every scenario Hull is compared on, with
//! the answers runc gives written out. If one of these fails, the harness
//! (or the host) is wrong, not Hull.

use hull_tests::scenarios::{
    self, Exec, ImageConfig, Inspection, MissingCommand, PauseResume, Signals, Streams, Terminal,
};
use hull_tests::{assert_no_leftovers, host_kernel_release, Containerd, RUNC};

fn containerd() -> Containerd {
    let c = Containerd::start_for_runc();
    c.import_busybox();
    c
}

const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[test]
fn kernel_release_is_the_hosts() {
    let c = containerd();
    assert_eq!(scenarios::kernel_release(&c, RUNC), host_kernel_release());
    assert_no_leftovers(&c);
}

#[test]
fn exit_codes_and_missing_command() {
    let c = containerd();
    assert_eq!(scenarios::exit_codes(&c, RUNC), vec![0, 3, 255, 1]);
    assert_eq!(
        scenarios::missing_command(&c, RUNC),
        MissingCommand {
            failed: true,
            names_the_command: true,
            printed_nothing: true
        }
    );
    assert_no_leftovers(&c);
}

#[test]
fn stdout_stderr_stdin_and_terminal() {
    let c = containerd();
    assert_eq!(
        scenarios::streams(&c, RUNC),
        Streams {
            code: 4,
            stdout: "out1\nout2\nno-tty\n".into(),
            stderr: "err1\nerr2\n".into()
        }
    );
    assert_eq!(scenarios::large_output(&c, RUNC), (80_000 * 12, true));
    assert_eq!(scenarios::stdin(&c, RUNC), "world-hello\n");
    assert_eq!(
        scenarios::tty_run(&c, RUNC),
        Terminal {
            code: 6,
            stdio_is_tty: true,
            read_input: true
        }
    );
    assert_no_leftovers(&c);
}

#[test]
fn exec_with_and_without_terminal() {
    let c = containerd();
    assert_eq!(
        scenarios::exec(&c, RUNC),
        Exec {
            streams: Streams {
                code: 5,
                stdout: "out\nno-tty\n".into(),
                stderr: "err\n".into()
            },
            stdin: "first\n".into(),
            tty: Terminal {
                code: 2,
                stdio_is_tty: true,
                read_input: true
            },
            env_and_cwd: format!("/\n{IMAGE_PATH}\n0\n"),
            init_code_after_sigkill: 137,
        }
    );
    assert_no_leftovers(&c);
}

#[test]
fn image_env_cwd_user_and_run_flags() {
    let c = containerd();
    c.import_busybox_custom();
    assert_eq!(
        scenarios::image_config(&c, RUNC),
        ImageConfig {
            from_image: format!(
                "65534\n65534\n/tmp\nFOO=bar\nPATH={IMAGE_PATH}\nHOME=/home\nwritable\n"
            ),
            from_flags: "A=1\nB=two words\n/bin\n0\n".into(),
        }
    );
    assert_no_leftovers(&c);
}

#[test]
fn signals_from_task_kill() {
    let c = containerd();
    assert_eq!(
        scenarios::signals(&c, RUNC),
        Signals {
            trapped_code: 7,
            trapped_stdout: "ready\ngot-TERM\n".into(),
            sigterm_ignored_by_init: true,
            sigkill_code: 137,
        }
    );
    assert_no_leftovers(&c);
}

#[test]
fn ps_and_metrics() {
    let c = containerd();
    assert_eq!(
        scenarios::ps_and_metrics(&c, RUNC),
        Inspection {
            process_count: 3,
            metrics_pids: 3,
            metrics_memory_reported: true,
            metrics_cpu_reported: true,
        }
    );
    assert_no_leftovers(&c);
}

#[test]
fn pause_and_resume() {
    let c = containerd();
    assert_eq!(
        scenarios::pause_resume(&c, RUNC),
        PauseResume {
            paused_status: Some("PAUSED".into()),
            resumed_status: Some("RUNNING".into()),
            loop_stopped_while_paused: true,
            loop_ran_before_pause: true,
        }
    );
    assert_no_leftovers(&c);
}

#[test]
fn many_containers_in_a_row_and_at_once() {
    let c = containerd();
    let outputs = scenarios::many(&c, RUNC, 10, 4);
    assert_eq!(outputs, scenarios::many_outputs(10, 4));
    assert_no_leftovers(&c);
}

/// The harness itself: Drop removes a running container and its shim.
#[test]
fn drop_cleans_up_a_running_container() {
    let c = containerd();
    let id = c.id("left");
    c.run_detached(RUNC, &id, &["sleep", "100000"]);
    let dir = c.dir().to_path_buf();
    let shims = c.processes(&["containerd-shim-runc-v2"]);
    assert_eq!(shims.len(), 1, "{shims:?}");
    drop(c);
    assert!(!dir.exists(), "{} was not removed", dir.display());
    let pid = nix::unistd::Pid::from_raw(shims[0].0 as i32);
    assert!(
        nix::sys::signal::kill(pid, None).is_err(),
        "shim {} survived",
        shims[0].0
    );
}
