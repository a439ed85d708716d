//! The steps of a sandbox's start, printed for `-v` and timed for `hull bench`.

use std::time::{Duration, Instant};

/// Prints start-up steps with the time since the start, for `-v`.
pub struct Progress {
    start: Instant,
    verbose: bool,
    reached: std::sync::Mutex<Vec<(Milestone, Duration)>>,
}

/// Points of a sandbox's life that `hull bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    VmStarted,
    /// The VM ended before its agent answered.
    VmEnded,
    AgentReady,
    ContainerStarted,
    ContainerExited,
    SandboxRemoved,
}

impl Progress {
    pub fn new(verbose: bool) -> Self {
        Progress {
            start: Instant::now(),
            verbose,
            reached: Default::default(),
        }
    }

    pub fn step(&self, what: &str) {
        if self.verbose {
            eprintln!("hull: [{:7.3}s] {what}", self.start.elapsed().as_secs_f64());
        }
    }

    /// A step that is also recorded for measurement.
    pub fn milestone(&self, milestone: Milestone, what: &str) {
        let elapsed = self.start.elapsed();
        self.reached
            .lock()
            .expect("progress lock")
            .push((milestone, elapsed));
        self.step(what);
    }

    /// When `milestone` was reached, counted from the start.
    pub fn time_of(&self, milestone: Milestone) -> Option<Duration> {
        self.reached
            .lock()
            .expect("progress lock")
            .iter()
            .find(|(m, _)| *m == milestone)
            .map(|(_, t)| *t)
    }
}
