//! A CI-sized soak (see `hull_tests::soak`): pod lifecycles through CRI,
//! two at a time, half of them with a fault in the sandbox, nothing left
//! after any of them, and the host's memory back near where it started.
//! `make soak` runs a longer one.

use hull_tests::cri::CriContainerd;
use hull_tests::soak::{soak, soak_config, SoakOptions};

/// How far MemAvailable may fall over the soak. Leaked VMs and helpers are
/// caught as processes; this catches what leaks out of sight (kernel memory
/// of mounts, namespaces, devices) only when it is large: over 8 lifecycles
/// the host's own noise (page cache, slab, containerd's heap) was seen to
/// move it by about 150 MiB either way before the warm-up pod was added.
const MEMORY_SLACK_KIB: i64 = 256 << 10;

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
