//! Pod start-up through CRI, Hull beside runc in the same run, on a private
//! containerd: what a kubelet waits for between asking for a pod and its
//! first container answering an exec, and how long removing the pod takes.
//!
//! ```sh
//! make bench-cri            # builds, then runs this with the guest assets
//! hull-cri-bench [-n RUNS]  # needs HULL_TEST_KERNEL and HULL_TEST_INITRD
//! ```
//!
//! It uses the containerd-shim-hull-v2 next to this binary (the release
//! build under `make bench-cri`).

use std::time::{Duration, Instant};

use hull_tests::cri::{ContainerSpec, CriContainerd, Pod, PodSpec, HULL_HANDLER, RUNC_HANDLER};

/// One pod's timings.
struct Sample {
    /// RunPodSandbox until the pod is ready (network set up, VM booted).
    sandbox: Duration,
    /// RunPodSandbox until an ExecSync in its container has answered.
    first_exec: Duration,
    /// StopPodSandbox + RemovePodSandbox.
    teardown: Duration,
}

fn measure(cri: &CriContainerd, handler: &str, run: usize) -> Sample {
    let start = Instant::now();
    let mut pod = Pod::run(cri, handler, PodSpec::new(&format!("bench{run}")))
        .unwrap_or_else(|e| panic!("RunPodSandbox under {handler}: {e}"));
    let sandbox = start.elapsed();
    let id = pod.start_container(&ContainerSpec::new("app", &["sleep", "100000"]));
    pod.exec_ok(&id, &["true"]);
    let first_exec = start.elapsed();
    let removing = Instant::now();
    let (_, left) = pod.teardown();
    assert!(left.is_empty(), "pod under {handler} left {left:?}");
    Sample {
        sandbox,
        first_exec,
        teardown: removing.elapsed(),
    }
}

/// Which timing of a sample a row reports.
type Measure = fn(&Sample) -> Duration;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut runs = 5usize;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("-n", Some(n)) => {
                runs = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| panic!("-n wants a positive number, not {n}"))
            }
            _ => {
                eprintln!("usage: hull-cri-bench [-n RUNS]");
                std::process::exit(2);
            }
        }
    }
    hull_tests::require_hull_shim();
    eprintln!("hull-cri-bench: starting a private containerd with the CRI plugin");
    let cri = CriContainerd::start();
    // One pod of each first, untimed: images unpacked, caches warm.
    for handler in [RUNC_HANDLER, HULL_HANDLER] {
        measure(&cri, handler, 0);
    }
    println!("| pod start-up through CRI, {runs} runs | runc median (ms) | hull median (ms) | hull min–max (ms) |");
    println!("|---|---|---|---|");
    let mut samples = Vec::new();
    for handler in [RUNC_HANDLER, HULL_HANDLER] {
        let taken: Vec<Sample> = (1..=runs).map(|run| measure(&cri, handler, run)).collect();
        samples.push(taken);
    }
    let rows: [(&str, Measure); 3] = [
        (
            "RunPodSandbox (netns, CNI, pause; under hull: the VM boot)",
            |s| s.sandbox,
        ),
        (
            "RunPodSandbox → container started → first ExecSync answered",
            |s| s.first_exec,
        ),
        ("StopPodSandbox + RemovePodSandbox", |s| s.teardown),
    ];
    for (what, pick) in rows {
        let runc: Vec<Duration> = samples[0].iter().map(pick).collect();
        let hull: Vec<Duration> = samples[1].iter().map(pick).collect();
        let (min, max) = (
            *hull.iter().min().expect("runs > 0"),
            *hull.iter().max().expect("runs > 0"),
        );
        println!(
            "| {what} | {} | {} | {}–{} |",
            ms(median(runc)),
            ms(median(hull)),
            ms(min),
            ms(max)
        );
    }
}
