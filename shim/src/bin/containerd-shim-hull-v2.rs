//! containerd-shim-hull-v2: containerd's runtime `io.containerd.hull.v2`.
//!
//! containerd runs it as `start` (launch or reuse the sandbox's shim and
//! print its address), as `delete` (clean up after a dead shim), and as the
//! long-running task server. Everything else is in `hull_shim::task`.

use hull_shim::task::{shim_config, HullShim, RUNTIME_ID};

// One thread: QEMU and virtiofsd die with the thread that started them
// (PR_SET_PDEATHSIG), which must live as long as the shim.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    containerd_shim::asynchronous::run::<HullShim>(RUNTIME_ID, Some(shim_config())).await;
    // Everything is torn down by now; don't let the runtime wait for a
    // blocked helper thread on the way out.
    std::process::exit(0);
}
