//! A container's OOM kills as they happen. cgroup v2 tells pollers of
//! `memory.events` when a count in it changes (EPOLLPRI, as for any kernfs
//! notification), so the agent waits on the file instead of reading it on
//! a timer: an idle container costs its guest no wake-ups.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::cgroup;

/// Sends `id` on `events` for each OOM kill in the cgroup `dir`, until the
/// receiver is gone or the task is aborted (when the container is removed).
pub async fn watch(id: String, dir: PathBuf, events: mpsc::UnboundedSender<String>) {
    let path = dir.join("memory.events");
    let watched = File::open(&path).and_then(|file| {
        // SAFETY: the AsyncFd owns the File, whose descriptor stays open and
        // the same until the AsyncFd is dropped.
        unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) }.map_err(|e| e.into())
    });
    let events_file = match watched {
        Ok(file) => file,
        Err(err) => {
            // No memory controller here (a host-mode agent on cgroup v1):
            // there is nothing to report.
            tracing::debug!(container = %id, path = %path.display(), %err, "not watching for OOM kills");
            return;
        }
    };
    // Reading the file is what arms the next notification.
    let mut seen = kills(events_file.get_ref());
    loop {
        match events_file.ready(Interest::PRIORITY).await {
            Ok(mut ready) => ready.clear_ready(),
            Err(err) => {
                tracing::warn!(container = %id, %err, "watching for OOM kills");
                return;
            }
        }
        let now = kills(events_file.get_ref());
        if now > seen {
            tracing::info!(container = %id, kills = now - seen, "OOM kill");
            if events.send(id.clone()).is_err() {
                return;
            }
        }
        seen = now;
    }
}

fn kills(file: &File) -> u64 {
    let mut buf = [0u8; 1024];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    cgroup::oom_kills_in(&String::from_utf8_lossy(&buf[..n]))
}
