//! Scenarios that run the same way under any runtime and return what a user
//! would observe, so a test can check runc's answer against the expected one
//! and Hull's against runc's. Every scenario leaves no container behind.

use std::thread;
use std::time::{Duration, Instant};

use crate::process::{describe, exit_code, text};
use crate::{Containerd, BUSYBOX, BUSYBOX_CUSTOM};

const BOOT: Duration = Duration::from_secs(90);

/// `uname -r` in a container.
pub fn kernel_release(c: &Containerd, runtime: &str) -> String {
    let output = c.ctr_run(runtime, &c.id("uname"), &["uname", "-r"], None);
    assert_eq!(
        exit_code(&output),
        0,
        "uname -r failed\n{}",
        describe(&output)
    );
    text(&output.stdout).trim().to_string()
}

/// The exit codes of `true`, `exit 3`, `exit 255` and `false` as init.
pub fn exit_codes(c: &Containerd, runtime: &str) -> Vec<i32> {
    let commands: [&[&str]; 4] = [
        &["true"],
        &["sh", "-c", "exit 3"],
        &["sh", "-c", "exit 255"],
        &["false"],
    ];
    commands
        .iter()
        .map(|cmd| exit_code(&c.ctr_run(runtime, &c.id("exit"), cmd, None)))
        .collect()
}

/// What a user sees when the command does not exist in the image.
#[derive(Debug, PartialEq, Eq)]
pub struct MissingCommand {
    pub failed: bool,
    pub names_the_command: bool,
    pub printed_nothing: bool,
}

pub fn missing_command(c: &Containerd, runtime: &str) -> MissingCommand {
    let id = c.id("missing");
    let output = c.ctr_run(runtime, &id, &["no-such-command"], None);
    // A failed create can leave the container record behind (--rm removes
    // only after a run); remove it so the next scenario starts clean.
    let _ = c.ctr(&["containers", "rm", &id]);
    MissingCommand {
        failed: exit_code(&output) != 0,
        names_the_command: text(&output.stderr).contains("no-such-command"),
        printed_nothing: output.stdout.is_empty(),
    }
}

/// Exit code, stdout and stderr of a command that writes to both.
#[derive(Debug, PartialEq, Eq)]
pub struct Streams {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Without `-t` the streams stay apart and stdout is not a terminal.
pub fn streams(c: &Containerd, runtime: &str) -> Streams {
    let script =
        "echo out1; echo err1 >&2; echo out2; echo err2 >&2; [ -t 1 ] || echo no-tty; exit 4";
    let output = c.ctr_run(runtime, &c.id("streams"), &["sh", "-c", script], None);
    Streams {
        code: exit_code(&output),
        stdout: text(&output.stdout),
        stderr: text(&output.stderr),
    }
}

/// Byte count and whether every line arrived intact, for ~1 MB of stdout.
pub fn large_output(c: &Containerd, runtime: &str) -> (usize, bool) {
    let output = c.ctr_run(
        runtime,
        &c.id("large"),
        &["sh", "-c", "yes hull-output | head -n 80000"],
        None,
    );
    assert_eq!(
        exit_code(&output),
        0,
        "large output failed\n{}",
        describe(&output)
    );
    let intact = output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .all(|line| line == b"hull-output");
    (output.stdout.len(), intact)
}

/// Lines piped into `ctr run` reach the container's stdin. (ctr never closes
/// the container's stdin, even at the end of its own: read a known amount.)
pub fn stdin(c: &Containerd, runtime: &str) -> String {
    let output = c.ctr_run(
        runtime,
        &c.id("stdin"),
        &["sh", "-c", "read a; read b; echo \"$b-$a\""],
        Some(b"hello\nworld\n"),
    );
    assert_eq!(
        exit_code(&output),
        0,
        "stdin scenario failed\n{}",
        describe(&output)
    );
    text(&output.stdout)
}

/// What `ctr run -t` shows under a pseudo-terminal.
#[derive(Debug, PartialEq, Eq)]
pub struct Terminal {
    pub code: i32,
    pub stdio_is_tty: bool,
    pub read_input: bool,
}

pub fn tty_run(c: &Containerd, runtime: &str) -> Terminal {
    let script = "[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo tty-ok; read x; echo got-$x; exit 6";
    let output = c.ctr_run_tty(runtime, &c.id("tty"), &["sh", "-c", script], b"typed\n");
    let seen = text(&output.stdout);
    Terminal {
        code: exit_code(&output),
        stdio_is_tty: seen.contains("tty-ok"),
        read_input: seen.contains("got-typed"),
    }
}

/// Processes started with `ctr task exec`, with and without `-t`.
#[derive(Debug, PartialEq, Eq)]
pub struct Exec {
    pub streams: Streams,
    pub stdin: String,
    pub tty: Terminal,
    pub env_and_cwd: String,
    pub init_code_after_sigkill: i32,
}

pub fn exec(c: &Containerd, runtime: &str) -> Exec {
    let id = c.id("exec");
    c.run_detached(runtime, &id, &["sleep", "100000"]);
    assert!(
        c.wait_for_status(&id, "RUNNING", BOOT),
        "{id} is not running"
    );

    // The pause before exiting is for runc's side: containerd-shim-runc-v2
    // publishes an exec's exit without waiting for its output to be copied,
    // and ctr closes the streams when it sees the exit, so a process that
    // writes and exits at once loses output now and then (stderr came back
    // empty under runc in about one full run in eight).
    let output = c.exec(
        &id,
        "e1",
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; [ -t 1 ] || echo no-tty; sleep 0.5; exit 5",
        ],
        None,
    );
    let streams = Streams {
        code: exit_code(&output),
        stdout: text(&output.stdout),
        stderr: text(&output.stderr),
    };
    let output = c.exec(&id, "e2", &["head", "-n", "1"], Some(b"first\nsecond\n"));
    assert_eq!(
        exit_code(&output),
        0,
        "exec head failed\n{}",
        describe(&output)
    );
    let stdin = text(&output.stdout);

    let script = "[ -t 0 ] && [ -t 1 ] && echo tty-ok; read x; echo got-$x; exit 2";
    let output = c.exec_tty(&id, "e3", &["sh", "-c", script], b"typed\n");
    let seen = text(&output.stdout);
    let tty = Terminal {
        code: exit_code(&output),
        stdio_is_tty: seen.contains("tty-ok"),
        read_input: seen.contains("got-typed"),
    };

    let output = c.exec(&id, "e4", &["sh", "-c", "pwd; echo $PATH; id -u"], None);
    assert_eq!(
        exit_code(&output),
        0,
        "exec env failed\n{}",
        describe(&output)
    );
    let env_and_cwd = text(&output.stdout);

    Exec {
        streams,
        stdin,
        tty,
        env_and_cwd,
        init_code_after_sigkill: c.kill_and_remove(&id),
    }
}

/// Identity and environment from the image config and from `ctr run` flags.
#[derive(Debug, PartialEq, Eq)]
pub struct ImageConfig {
    pub from_image: String,
    pub from_flags: String,
}

/// Needs both images imported.
pub fn image_config(c: &Containerd, runtime: &str) -> ImageConfig {
    let script = "id -u; id -g; pwd; echo FOO=$FOO; echo PATH=$PATH; echo HOME=$HOME; touch ./w && echo writable";
    let output = c.ctr_run_with(
        runtime,
        BUSYBOX_CUSTOM,
        &[],
        &c.id("img"),
        &["sh", "-c", script],
    );
    assert_eq!(
        exit_code(&output),
        0,
        "image config failed\n{}",
        describe(&output)
    );
    let from_image = text(&output.stdout);
    let output = c.ctr_run_with(
        runtime,
        BUSYBOX,
        &["--env", "A=1", "--env", "B=two words", "--cwd", "/bin"],
        &c.id("flags"),
        &["sh", "-c", "echo A=$A; echo B=$B; pwd; id -u"],
    );
    assert_eq!(
        exit_code(&output),
        0,
        "ctr run flags failed\n{}",
        describe(&output)
    );
    ImageConfig {
        from_image,
        from_flags: text(&output.stdout),
    }
}

/// How signals sent with `ctr task kill` end a container.
#[derive(Debug, PartialEq, Eq)]
pub struct Signals {
    pub trapped_code: i32,
    pub trapped_stdout: String,
    /// PID 1 without a handler ignores SIGTERM from outside its namespace.
    pub sigterm_ignored_by_init: bool,
    pub sigkill_code: i32,
}

pub fn signals(c: &Containerd, runtime: &str) -> Signals {
    let id = c.id("trap");
    let script = "trap 'echo got-TERM; exit 7' TERM; echo ready; while :; do sleep 0.1; done";
    let mut run = c.spawn_run(runtime, &id, &["sh", "-c", script]);
    assert!(
        run.wait_for_stdout("ready", BOOT),
        "{id} never printed ready\nstdout: {}\nstderr: {}",
        run.stdout(),
        run.stderr()
    );
    c.kill(&id, "SIGTERM");
    let output = run.wait(Duration::from_secs(30));
    let trapped_code = exit_code(&output);
    let trapped_stdout = text(&output.stdout);

    let id = c.id("sigkill");
    let run = c.spawn_run(runtime, &id, &["sleep", "100000"]);
    assert!(
        c.wait_for_status(&id, "RUNNING", BOOT),
        "{id} is not running"
    );
    c.kill(&id, "SIGTERM");
    thread::sleep(Duration::from_secs(1));
    let sigterm_ignored_by_init = c.task_status(&id).as_deref() == Some("RUNNING");
    c.kill(&id, "SIGKILL");
    let output = run.wait(Duration::from_secs(30));
    Signals {
        trapped_code,
        trapped_stdout,
        sigterm_ignored_by_init,
        sigkill_code: exit_code(&output),
    }
}

/// `ctr task ps` and `ctr task metrics` of a container with three processes.
#[derive(Debug, PartialEq, Eq)]
pub struct Inspection {
    pub process_count: usize,
    pub metrics_pids: u64,
    pub metrics_memory_reported: bool,
    pub metrics_cpu_reported: bool,
}

pub fn ps_and_metrics(c: &Containerd, runtime: &str) -> Inspection {
    let id = c.id("ps");
    c.run_detached(
        runtime,
        &id,
        &["sh", "-c", "sleep 100000 & sleep 100000 & wait"],
    );
    assert!(
        c.wait_for_status(&id, "RUNNING", BOOT),
        "{id} is not running"
    );
    let mut pids = c.ps(&id);
    for _ in 0..100 {
        if pids.len() >= 3 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        pids = c.ps(&id);
    }
    let metrics = c.metrics(&id);
    let non_empty = |v: &serde_json::Value| v.as_object().is_some_and(|o| !o.is_empty());
    let inspection = Inspection {
        process_count: pids.len(),
        metrics_pids: metrics["pids"]["current"].as_u64().unwrap_or(0),
        metrics_memory_reported: non_empty(&metrics["memory"]),
        metrics_cpu_reported: non_empty(&metrics["cpu"]),
    };
    assert_eq!(c.kill_and_remove(&id), 137);
    inspection
}

/// A paused container makes no progress and continues after resume.
#[derive(Debug, PartialEq, Eq)]
pub struct PauseResume {
    pub paused_status: Option<String>,
    pub resumed_status: Option<String>,
    /// The longest gap between ticks of a 0.1 s loop spans the 2 s pause,
    /// and is longer than any gap before it.
    pub loop_stopped_while_paused: bool,
    /// The loop ticked at least three times before the pause.
    pub loop_ran_before_pause: bool,
}

pub fn pause_resume(c: &Containerd, runtime: &str) -> PauseResume {
    let id = c.id("pause");
    let script = "while :; do cut -d' ' -f1 /proc/uptime >> /tmp/ticks; sleep 0.1; done";
    c.run_detached(runtime, &id, &["sh", "-c", script]);
    assert!(
        c.wait_for_status(&id, "RUNNING", BOOT),
        "{id} is not running"
    );
    // Until the loop has ticked three times: a slow guest (the nested KVM
    // lab's) may take longer than a second to start it.
    let deadline = Instant::now() + BOOT;
    let mut polls = 0;
    let before = loop {
        thread::sleep(Duration::from_millis(500));
        polls += 1;
        let before = ticks(c, &id, &format!("t1-{polls}"));
        if before.len() >= 3 || Instant::now() > deadline {
            break before;
        }
    };
    c.pause(&id);
    let paused_status = c.task_status(&id);
    thread::sleep(Duration::from_secs(2));
    c.resume(&id);
    let resumed_status = c.task_status(&id);
    thread::sleep(Duration::from_millis(500));
    let after = ticks(c, &id, "t2");
    assert_eq!(c.kill_and_remove(&id), 137);
    PauseResume {
        paused_status,
        resumed_status,
        // The pause (2 s) is the longest stop, longer than any before it:
        // a slow guest's loop may itself stall for a second.
        loop_stopped_while_paused: longest_gap(&after) >= 1.5
            && longest_gap(&after[before.len().saturating_sub(1).min(after.len())..])
                > longest_gap(&before),
        loop_ran_before_pause: before.len() >= 3,
    }
}

fn ticks(c: &Containerd, id: &str, exec_id: &str) -> Vec<f64> {
    let output = c.exec(id, exec_id, &["cat", "/tmp/ticks"], None);
    assert_eq!(
        exit_code(&output),
        0,
        "cat /tmp/ticks failed\n{}",
        describe(&output)
    );
    text(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn longest_gap(ticks: &[f64]) -> f64 {
    ticks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// Runs `sequential` containers one after another, then `concurrent` at
/// once; returns every container's stdout (each prints its own number).
pub fn many(c: &Containerd, runtime: &str, sequential: usize, concurrent: usize) -> Vec<String> {
    let mut outputs = Vec::new();
    for n in 0..sequential {
        let output = c.ctr_run(runtime, &c.id("seq"), &["echo", &format!("seq-{n}")], None);
        assert_eq!(
            exit_code(&output),
            0,
            "sequential run {n} failed\n{}",
            describe(&output)
        );
        outputs.push(text(&output.stdout));
    }
    let ids: Vec<String> = (0..concurrent).map(|_| c.id("par")).collect();
    let concurrent_outputs: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| {
                scope.spawn(move || {
                    let output = c.ctr_run(runtime, id, &["echo", &format!("par-{n}")], None);
                    assert_eq!(
                        exit_code(&output),
                        0,
                        "concurrent run {n} failed\n{}",
                        describe(&output)
                    );
                    text(&output.stdout)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    outputs.extend(concurrent_outputs);
    outputs
}

/// What [`many`] returns when every container printed its own line.
pub fn many_outputs(sequential: usize, concurrent: usize) -> Vec<String> {
    (0..sequential)
        .map(|n| format!("seq-{n}\n"))
        .chain((0..concurrent).map(|n| format!("par-{n}\n")))
        .collect()
}
