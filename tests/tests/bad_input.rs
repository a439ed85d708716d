//! Bad input through containerd, under runc and under Hull in the same run:
//! huge environments and arguments, malformed OCI specs, volume paths with
//! `..` and symlinks, and runtime options that point nowhere. Each either
//! behaves as under runc or fails with an error that names the cause, and
//! none loses host data or leaves anything behind.
//!
//! Needs what ctr_hull.rs needs (`make test` sets it up).

use hull_tests::{
    assert_no_leftovers, config_spec, describe, exit_code, require_hull_shim, text, Containerd,
    BUSYBOX, HULL, RUNC,
};

fn containerd() -> Containerd {
    require_hull_shim();
    let c = Containerd::start();
    c.import_busybox();
    c
}

/// Writes `count` variables `V0..` of `size` bytes each, one per line, for
/// `ctr run --env-file` (whose reader takes lines up to 64 KiB).
fn env_file(c: &Containerd, name: &str, count: usize, size: usize) -> String {
    let path = c.dir().join(name);
    let lines: String = (0..count)
        .map(|i| format!("V{i}={}\n", "x".repeat(size)))
        .collect();
    std::fs::write(&path, lines).unwrap();
    path.to_str().unwrap().to_owned()
}

/// What a container's run came to: its status and its output.
fn outcome(output: &std::process::Output) -> (i32, String) {
    (exit_code(output), text(&output.stdout))
}

#[test]
fn huge_environments_and_arguments_match_runc() {
    let c = containerd();
    // 600 KiB of environment: well within the kernel's limit on exec.
    let fits = env_file(&c, "fits.env", 10, 60 << 10);
    // 2.4 MiB: past what execve takes (a quarter of an 8 MiB stack).
    let too_big = env_file(&c, "too-big.env", 40, 60 << 10);
    let long_arg = "a".repeat(100 << 10);
    let mut args = vec!["sh", "-c", "echo $# ${#1} ${#8}", "sh"];
    args.extend(std::iter::repeat_n(long_arg.as_str(), 8));

    let mut answers = Vec::new();
    for runtime in [RUNC, HULL] {
        let id = c.id("env");
        let env = c.ctr_run_with(
            runtime,
            BUSYBOX,
            &["--env-file", &fits],
            &id,
            &["sh", "-c", "echo ${#V0} ${#V9}"],
        );
        let id = c.id("args");
        let argv = c.ctr_run_with(runtime, BUSYBOX, &[], &id, &args);
        let id = c.id("toobig");
        let refused = c.ctr_run_with(runtime, BUSYBOX, &["--env-file", &too_big], &id, &["true"]);
        let _ = c.ctr(&["containers", "rm", &id]);
        assert_ne!(
            exit_code(&refused),
            0,
            "{runtime} ran a process with 2.4 MiB of environment\n{}",
            describe(&refused)
        );
        assert!(
            text(&refused.stderr).contains("argument list too long"),
            "{runtime} does not say why 2.4 MiB of environment failed\n{}",
            describe(&refused)
        );
        answers.push((outcome(&env), outcome(&argv)));
    }
    assert_eq!(
        answers[0].0,
        (0, "61440 61440\n".into()),
        "runc's own answer"
    );
    assert_eq!(
        answers[0].1,
        (0, "8 102400 102400\n".into()),
        "runc's own answer"
    );
    assert_eq!(
        answers[1], answers[0],
        "Hull (right) differs from runc (left)"
    );
    assert_no_leftovers(&c);
}

#[test]
fn malformed_specs_fail_naming_the_cause() {
    let c = containerd();
    let root = config_spec::busybox_root(&c.dir().join("root"));
    let spec = |edit: Edit| config_spec::spec(&c, &root, &["sh", "-c", "echo ok"], edit);
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 3] = [
        (
            "an rlimit no kernel has",
            |s| {
                s["process"]["rlimits"] =
                    serde_json::json!([{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}])
            },
            "RLIMIT_BOGUS",
        ),
        (
            "a namespace no kernel has",
            |s| {
                s["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"type": "bogusns"}))
            },
            "bogusns",
        ),
        (
            "no process arguments",
            |s| s["process"]["args"] = serde_json::json!([]),
            "args",
        ),
    ];
    // The spec as given works: what fails below is what each case changed.
    let good = config_spec::write(&c, "good.json", &spec(|_| {}));
    for runtime in [RUNC, HULL] {
        let id = c.id("good");
        let output = c.ctr(&["run", "--rm", "--runtime", runtime, "--config", &good, &id]);
        assert_eq!(
            outcome(&output),
            (0, "ok\n".into()),
            "{runtime}\n{}",
            describe(&output)
        );
    }
    for (what, edit, named) in cases {
        let path = config_spec::write(&c, &format!("{named}.json"), &spec(edit));
        for runtime in [RUNC, HULL] {
            let id = c.id("bad");
            let output = c.ctr(&["run", "--rm", "--runtime", runtime, "--config", &path, &id]);
            let _ = c.ctr(&["containers", "rm", &id]);
            assert_ne!(
                exit_code(&output),
                0,
                "{runtime} ran a spec with {what}\n{}",
                describe(&output)
            );
            if runtime == HULL {
                let stderr = text(&output.stderr);
                assert!(
                    stderr.contains(named),
                    "Hull's error for {what} does not name {named:?}: {stderr}"
                );
            }
        }
    }
    assert_no_leftovers(&c);
}

#[test]
fn volume_paths_with_dotdot_and_symlinks_match_runc_and_keep_the_data() {
    let c = containerd();
    let volumes = c.dir().join("volumes");
    std::fs::create_dir_all(volumes.join("data/inner")).unwrap();
    std::fs::create_dir_all(volumes.join("other")).unwrap();
    std::fs::write(volumes.join("data/file"), "precious\n").unwrap();
    std::os::unix::fs::symlink(volumes.join("data"), volumes.join("link")).unwrap();
    let v = volumes.to_str().unwrap();
    let mounts = [
        format!("type=bind,src={v}/other/../data,dst=/data,options=rbind:ro"),
        format!("type=bind,src={v}/link,dst=/data,options=rbind:rw"),
        format!("type=bind,src={v}/data,dst=/mnt/../data,options=rbind:rw"),
    ];
    // Reads through each mount, then tries to write through it.
    let script =
        "cat /data/file; ls /data; echo new > /data/written && echo wrote; rm -f /data/written";
    let mut answers = Vec::new();
    for runtime in [RUNC, HULL] {
        let mut seen = Vec::new();
        for mount in &mounts {
            let id = c.id("vol");
            let output = c.ctr_run_with(
                runtime,
                BUSYBOX,
                &["--mount", mount],
                &id,
                &["sh", "-c", script],
            );
            let _ = c.ctr(&["containers", "rm", &id]);
            seen.push((mount.replace(v, "VOL"), outcome(&output)));
        }
        answers.push(seen);
    }
    assert_eq!(
        answers[1], answers[0],
        "Hull (right) differs from runc (left)"
    );
    assert!(
        answers[0]
            .iter()
            .all(|(_, (_, out))| out.starts_with("precious\n")),
        "{:?}",
        answers[0]
    );
    assert_no_leftovers(&c);
    // Nothing Hull unmounted or removed reached through to the host's files.
    assert_eq!(
        std::fs::read_to_string(volumes.join("data/file")).unwrap(),
        "precious\n"
    );
    assert!(volumes.join("data/inner").is_dir());
    assert!(!volumes.join("data/written").exists());
}

#[test]
fn a_config_path_option_that_does_not_exist_is_named() {
    let c = containerd();
    let id = c.id("cfg");
    let output = c.ctr_run_with(
        HULL,
        BUSYBOX,
        &["--runtime-config-path", "/nonexistent/hull-pod.toml"],
        &id,
        &["true"],
    );
    let _ = c.ctr(&["containers", "rm", &id]);
    assert_ne!(
        exit_code(&output),
        0,
        "ran with a missing config\n{}",
        describe(&output)
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/hull-pod.toml"),
        "error does not name the file: {stderr}"
    );
    assert_no_leftovers(&c);
}
