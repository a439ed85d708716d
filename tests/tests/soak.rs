//! A CI-sized soak (see `hull_tests::soak`): pod lifecycles through CRI,
//! two at a time, half of them with a fault in the sandbox, nothing left
//! after any of them, and the host's memory back near where it started.
//! `make soak` runs a longer one.

use hull_tests::cri::CriContainerd;
use hull_tests::soak::{soak, soak_config, SoakOptions};

/// A leaked VM holds at least its guest RAM (256 MiB here); page cache and
/// allocator noise stay well below this.
const MEMORY_SLACK_KIB: i64 = 128 << 10;

#[test]
fn pod_lifecycles_with_faults_leave_nothing() {
    hull_tests::require_hull_shim();
    let cri = CriContainerd::start_with(soak_config());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("soak seed {seed}");
    let report = soak(
        &cri,
        SoakOptions {
            lifecycles: 8,
            parallel: 2,
            fault_share: 0.5,
            seed,
        },
    );
    eprintln!("{report:?}");
    assert!(
        report.memory_delta_kib > -MEMORY_SLACK_KIB,
        "host memory did not come back: {report:?}"
    );
}
