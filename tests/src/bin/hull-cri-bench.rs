//! Pod start-up through CRI, Hull beside runc in the same run, on a private
//! containerd: what a kubelet waits for between asking for a pod and its
//! first container answering an exec, and how long removing the pod takes.
//!
//! Then the same under `hull` with a pool of one VM booted ahead (`hull
//! pool --count 1`), waiting before each pod until the pool has booted its
//! replacement, so that every pod takes a VM booted ahead.
//!
//! With `--burst N` it also starts N pods at once under each handler, as a
//! Deployment scaling up does, and reports how many became ready and how
//! long until the last one answered an exec.
//!
//! ```sh
//! make bench-cri [BURST=N]  # builds, then runs this with the guest assets
//! hull-cri-bench [-n RUNS] [--burst N]  # needs HULL_TEST_KERNEL and HULL_TEST_INITRD
//! ```
//!
//! It uses the containerd-shim-hull-v2 next to this binary (the release
//! build under `make bench-cri`).

use std::time::{Duration, Instant};

use hull_tests::cri::{ContainerSpec, CriContainerd, Pod, PodSpec, HULL_HANDLER, RUNC_HANDLER};
use hull_tests::pool::{Pool, HANDED_OUT, READY};

/// One pod's timings.
struct Sample {
    /// RunPodSandbox until the pod is ready (network set up, VM booted).
    sandbox: Duration,
    /// RunPodSandbox until an ExecSync in its container has answered.
    first_exec: Duration,
    /// StopPodSandbox + RemovePodSandbox.
    teardown: Duration,
}

/// `count` pods started at once under `handler`, each with a container
/// answering an exec: how many got there, and how long the last one took.
/// Then all are removed, and must leave nothing.
fn burst(cri: &CriContainerd, handler: &str, count: usize) -> (usize, Duration, Vec<String>) {
    let start = Instant::now();
    let results: Vec<Result<Pod, String>> = std::thread::scope(|scope| {
        let pods: Vec<_> = (0..count)
            .map(|i| {
                scope.spawn(move || {
                    let mut pod = Pod::run(cri, handler, PodSpec::new(&format!("burst{i}")))
                        .map_err(|e| format!("RunPodSandbox: {e}"))?;
                    let id = pod.start_container(&ContainerSpec::new("app", &["sleep", "100000"]));
                    pod.exec_ok(&id, &["true"]);
                    Ok(pod)
                })
            })
            .collect();
        pods.into_iter()
            .map(|pod| {
                pod.join()
                    .unwrap_or_else(|_| Err("a pod's thread panicked".into()))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut failures = Vec::new();
    let mut ready = 0;
    std::thread::scope(|scope| {
        let mut removals = Vec::new();
        for result in results {
            match result {
                Ok(pod) => {
                    ready += 1;
                    removals.push(scope.spawn(move || pod.teardown().1));
                }
                Err(e) => failures.push(e),
            }
        }
        for removal in removals {
            let left = removal.join().expect("a removal panicked");
            assert!(left.is_empty(), "a pod under {handler} left {left:?}");
        }
    });
    (ready, elapsed, failures)
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

fn median(values: &[Duration]) -> Duration {
    let mut values = values.to_vec();
    values.sort();
    values[values.len() / 2]
}

/// `min–max` of `values`, in ms.
fn range(values: &[Duration]) -> String {
    let min = values.iter().min().expect("runs > 0");
    let max = values.iter().max().expect("runs > 0");
    format!("{}–{}", ms(*min), ms(*max))
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut runs = 5usize;
    let mut burst_size = 0usize;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--burst", Some(n)) => {
                burst_size = n
                    .parse()
                    .unwrap_or_else(|_| panic!("--burst wants a number, not {n}"))
            }
            ("-n", Some(n)) => {
                runs = n
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| panic!("-n wants a positive number, not {n}"))
            }
            _ => {
                eprintln!("usage: hull-cri-bench [-n RUNS] [--burst N]");
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
    let mut samples = Vec::new();
    for handler in [RUNC_HANDLER, HULL_HANDLER] {
        let taken: Vec<Sample> = (1..=runs).map(|run| measure(&cri, handler, run)).collect();
        samples.push(taken);
    }
    eprintln!("hull-cri-bench: starting hull pool --count 1");
    let mut pool = Pool::start(cri.containerd(), 1);
    let pooled: Vec<Sample> = (1..=runs)
        .map(|run| {
            pool.wait_for(READY, run);
            let sample = measure(&cri, HULL_HANDLER, runs + run);
            pool.wait_for(HANDED_OUT, run);
            sample
        })
        .collect();
    assert!(pool.stop(), "hull pool did not exit 0 on SIGTERM");
    samples.push(pooled);
    println!("| pod start-up through CRI, {runs} runs | runc median (ms) | hull median (ms) | hull min–max (ms) | hull from a pool, median (ms) | from a pool, min–max (ms) |");
    println!("|---|---|---|---|---|---|");
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
        let [runc, hull, pooled]: [Vec<Duration>; 3] =
            [0, 1, 2].map(|i| samples[i].iter().map(pick).collect());
        println!(
            "| {what} | {} | {} | {} | {} | {} |",
            ms(median(&runc)),
            ms(median(&hull)),
            range(&hull),
            ms(median(&pooled)),
            range(&pooled)
        );
    }
    if burst_size > 0 {
        println!();
        println!("| {burst_size} pods started at once through CRI | ready | until the last answered an exec (ms) |");
        println!("|---|---|---|");
        for handler in [RUNC_HANDLER, HULL_HANDLER] {
            let (ready, elapsed, failures) = burst(&cri, handler, burst_size);
            println!("| {handler} | {ready} of {burst_size} | {} |", ms(elapsed));
            for failure in failures {
                eprintln!("hull-cri-bench: a pod under {handler} failed: {failure}");
            }
        }
    }
}
