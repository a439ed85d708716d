//! Admission of VM boots on this host. Booting is CPU-bound (under TCG, the
//! guest kernel's start is all emulation), and starting more boots at once
//! than the host has CPUs makes every one of them slower, until some miss
//! their deadline. So at most `max_parallel_boots` VMs boot at once, across
//! every shim and `hull` process of the host; the others wait for a slot,
//! and the boot deadline starts only once they have one.
//!
//! A slot is an exclusive `flock` on one of N files in the state directory:
//! the kernel releases it when its holder closes it or dies, so a crashed
//! shim cannot keep one.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often a boot waiting for a slot tries again.
const RETRY: Duration = Duration::from_millis(25);

/// A held boot slot; dropping it lets another boot start.
#[derive(Debug)]
pub struct BootSlot {
    _file: std::fs::File,
    /// How long this boot waited for it.
    pub waited: Duration,
}

/// Where the slot files are: one place for the whole host, whatever state
/// directory a sandbox uses (`.` keeps it apart from sandbox ids).
pub const SLOTS_DIR: &str = "/run/hull/.boot-slots";

/// How many boots run at once for a configured `max_parallel_boots` (0: as
/// many as the host has CPUs).
pub fn parallel_boots(configured: u32) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// Waits until one of `slots` boot slots in `dir` is free and takes it.
pub async fn acquire(dir: &Path, slots: usize) -> std::io::Result<BootSlot> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let started = Instant::now();
    let files: Vec<std::fs::File> = (0..slots.max(1))
        .map(|i| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(dir.join(format!("slot-{i}")))
        })
        .collect::<Result<_, _>>()?;
    loop {
        for file in &files {
            // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                let file = file.try_clone()?;
                return Ok(BootSlot {
                    _file: file,
                    waited: started.elapsed(),
                });
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_n_boots_hold_a_slot_and_a_released_one_is_taken_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), 2).await.unwrap();
        let _second = acquire(dir.path(), 2).await.unwrap();
        let third = tokio::spawn({
            let dir = dir.path().to_owned();
            async move { acquire(&dir, 2).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!third.is_finished(), "a third boot waits");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(2), third)
            .await
            .expect("the freed slot is taken")
            .unwrap();
        assert!(third.waited >= Duration::from_millis(200));
    }

    #[test]
    fn zero_means_one_boot_per_cpu() {
        assert!(parallel_boots(0) >= 1);
        assert_eq!(parallel_boots(3), 3);
    }
}
