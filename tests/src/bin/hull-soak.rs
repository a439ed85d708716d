//! The soak (see `hull_tests::soak`): pod lifecycles through CRI under the
//! `hull` handler on a private containerd, several at once, a share of them
//! with a fault in the pod's sandbox; fails at the first lifecycle that
//! leaves anything behind, and reports the host's memory delta.
//!
//! ```sh
//! make soak [N=200] [PARALLEL=4] [FAULTS=0.3]   # builds, then runs this
//! hull-soak [-n LIFECYCLES] [--parallel P] [--faults SHARE] [--seed S]
//! ```

use hull_tests::cri::CriContainerd;
use hull_tests::soak::{soak, soak_config, SoakOptions};

fn usage() -> ! {
    eprintln!("usage: hull-soak [-n LIFECYCLES] [--parallel P] [--faults SHARE] [--seed S]");
    std::process::exit(2);
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> T {
    let value = value.unwrap_or_else(|| usage());
    value.parse().unwrap_or_else(|_| {
        eprintln!("hull-soak: {flag} wants a number, not {value:?}");
        std::process::exit(2)
    })
}

fn main() {
    let mut options = SoakOptions {
        lifecycles: 20,
        parallel: 2,
        fault_share: 0.5,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-n" => options.lifecycles = number(&flag, args.next()),
            "--parallel" => options.parallel = number(&flag, args.next()),
            "--faults" => options.fault_share = number(&flag, args.next()),
            "--seed" => options.seed = number(&flag, args.next()),
            _ => usage(),
        }
    }
    if options.lifecycles == 0
        || options.parallel == 0
        || !(0.0..=1.0).contains(&options.fault_share)
    {
        eprintln!("hull-soak: -n and --parallel must be at least 1, --faults between 0 and 1");
        std::process::exit(2);
    }
    hull_tests::require_hull_shim();
    eprintln!(
        "hull-soak: {} lifecycles, {} at once, faults in {:.0}% (seed {}); starting a private containerd",
        options.lifecycles,
        options.parallel,
        options.fault_share * 100.0,
        options.seed
    );
    let cri = CriContainerd::start_with(soak_config());
    let report = soak(&cri, options);
    drop(cri);
    println!(
        "| soak: `hull-soak -n {} --parallel {} --faults {} --seed {}` | |",
        options.lifecycles, options.parallel, options.fault_share, options.seed
    );
    println!("|---|---|");
    println!(
        "| pod lifecycles, all removed with nothing left | {} |",
        report.lifecycles
    );
    for (fault, count) in &report.faults {
        println!("| with {fault:?} | {count} |");
    }
    println!("| elapsed | {:.1} s |", report.elapsed.as_secs_f64());
    println!(
        "| host MemAvailable after − before | {:+.1} MiB |",
        report.memory_delta_kib as f64 / 1024.0
    );
}
