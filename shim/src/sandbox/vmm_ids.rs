//! A uid and gid of its own for each sandbox's VMM and vsock backend. They
//! run in the host's PID namespace; with one uid for every VM, a guest that
//! took over one pod's QEMU could signal, or (this kernel has no Yama)
//! ptrace, every other pod's. With a uid per sandbox the kernel refuses
//! both.
//!
//! Ids are leased, not derived: sandbox `n` of the host gets
//! `vmm_id_base + n`, where `n` is the first free slot among
//! [`VMM_ID_COUNT`]. A slot is an exclusive `flock` on a file, held by the
//! shim for the sandbox's life: the kernel lets go of it when the shim
//! exits or dies, and by then the sandbox's processes are gone (they die
//! with the shim, and `shim delete` kills what is left in its cgroup).

use std::os::fd::AsRawFd;
use std::path::Path;

/// How many sandboxes can have ids of their own at once.
pub const VMM_ID_COUNT: u32 = 65_536;
/// Where the slot files are: one place for the whole host.
pub const VMM_IDS_DIR: &str = "/run/hull/.vmm-ids";

/// A held uid/gid for one sandbox; dropping it frees the slot.
#[derive(Debug)]
pub struct VmmIdLease {
    _slot: std::fs::File,
    pub id: u32,
}

/// Takes the first free slot, starting from one derived from `sandbox` so
/// that concurrent sandboxes rarely probe the same files.
pub fn lease(dir: &Path, base: u32, sandbox: &str) -> std::io::Result<VmmIdLease> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let start = sandbox.bytes().fold(0u32, |hash, b| {
        hash.wrapping_mul(31).wrapping_add(u32::from(b))
    }) % VMM_ID_COUNT;
    for offset in 0..VMM_ID_COUNT {
        let slot = (start + offset) % VMM_ID_COUNT;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(slot.to_string()))?;
        // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(VmmIdLease {
                _slot: file,
                id: base + slot,
            });
        }
    }
    Err(std::io::Error::other(format!(
        "all {VMM_ID_COUNT} VMM ids in {} are leased",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sandboxes_never_share_an_id_and_a_freed_one_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let base = 1 << 31;
        let a = lease(dir.path(), base, "pod-a").unwrap();
        // The same name probes the same slot first: it must move on.
        let b = lease(dir.path(), base, "pod-a").unwrap();
        assert_ne!(a.id, b.id);
        assert!(a.id >= base && a.id < base + VMM_ID_COUNT);
        let freed = a.id;
        drop(a);
        let c = lease(dir.path(), base, "pod-a").unwrap();
        assert_eq!(c.id, freed);
    }
}
