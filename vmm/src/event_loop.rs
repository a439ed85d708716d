//! The VMM's event loop: one thread that waits on the host-side file descriptors of the
//! devices ([`HostEvents`]: vsock's host sockets, net's taps, virtio-fs's call eventfds and
//! vhost-user socket) and hands each ready one back to its device.
//!
//! Devices join it while the VM is built ([`EventLoop::add`]); the thread starts only with
//! [`EventLoop::spawn`], after the jail (`crate::jail`), which a thread started earlier
//! would stay outside of.
//!
//! Queue notifications from the guest do not come through here: they arrive on the vCPU
//! thread that wrote the register.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use seccompiler::BpfProgram;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::{HostEvents, Watch};
use crate::seccomp::{self, ThreadKind};

/// The token of the stop eventfd; every other token is an index into `watched`.
const STOP_TOKEN: u64 = u64::MAX;

/// One fd of one device.
struct Watched {
    fd: RawFd,
    device: Arc<Mutex<dyn HostEvents>>,
    /// The fd's index in the device's `host_event_fds`.
    index: usize,
}

/// The devices' fds, gathered before the thread starts.
pub struct EventLoop {
    epoll: Epoll,
    stop: EventFd,
    watched: Vec<Watched>,
}

impl EventLoop {
    pub fn new() -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        Ok(EventLoop {
            epoll,
            stop,
            watched: Vec::new(),
        })
    }

    /// Watches every fd `device` lists.
    pub fn add(&mut self, device: Arc<Mutex<dyn HostEvents>>) -> io::Result<()> {
        let fds = device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .host_event_fds();
        for (index, (fd, events)) in fds.into_iter().enumerate() {
            let token = self.watched.len() as u64;
            self.epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))?;
            self.watched.push(Watched {
                fd,
                device: device.clone(),
                index,
            });
        }
        Ok(())
    }

    /// Starts the thread. With `filter`, it confines itself (`crate::seccomp`) first.
    pub fn spawn(self, filter: Option<Arc<BpfProgram>>) -> io::Result<EventLoopHandle> {
        let stop = self.stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("vmm-events".into())
            .spawn(move || {
                seccomp::confine_current_thread(ThreadKind::EventLoop, filter.as_deref());
                self.run();
            })?;
        Ok(EventLoopHandle {
            thread: Some(thread),
            stop,
        })
    }

    fn run(self) {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let ready = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "event loop failed");
                    return;
                }
            };
            for event in &events[..ready] {
                if event.data() == STOP_TOKEN {
                    return;
                }
                let Some(watched) = self.watched.get(event.data() as usize) else {
                    continue;
                };
                let watch = watched
                    .device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .handle_host_event(watched.index, event.event_set());
                if watch == Watch::Stop {
                    if let Err(e) =
                        self.epoll
                            .ctl(ControlOperation::Delete, watched.fd, EpollEvent::default())
                    {
                        tracing::warn!(error = %e, fd = watched.fd, "cannot stop watching an fd");
                    }
                }
            }
        }
    }
}

/// The running event loop; dropping it stops the thread.
pub struct EventLoopHandle {
    thread: Option<JoinHandle<()>>,
    stop: EventFd,
}

impl EventLoopHandle {
    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for EventLoopHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// Two eventfds; the second is watched only until its first event.
    struct TwoEvents {
        fds: [EventFd; 2],
        seen: Arc<[AtomicUsize; 2]>,
    }

    impl HostEvents for TwoEvents {
        fn host_event_fds(&self) -> Vec<(RawFd, EventSet)> {
            self.fds
                .iter()
                .map(|fd| (fd.as_raw_fd(), EventSet::IN))
                .collect()
        }

        fn handle_host_event(&mut self, index: usize, events: EventSet) -> Watch {
            assert!(events.contains(EventSet::IN));
            self.seen[index].fetch_add(1, Ordering::SeqCst);
            if index == 0 {
                // Level-triggered: drain, or the loop would spin on it.
                let _ = self.fds[0].read();
                Watch::Keep
            } else {
                // Left signalled on purpose: only Watch::Stop keeps it from firing again.
                Watch::Stop
            }
        }
    }

    fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn ready_fds_go_to_their_device_until_it_stops_watching_them() {
        let fds = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        let signals = [fds[0].try_clone().unwrap(), fds[1].try_clone().unwrap()];
        let seen: Arc<[AtomicUsize; 2]> = Arc::new(Default::default());
        let mut event_loop = EventLoop::new().unwrap();
        event_loop
            .add(Arc::new(Mutex::new(TwoEvents {
                fds,
                seen: seen.clone(),
            })))
            .unwrap();
        let mut handle = event_loop.spawn(None).unwrap();

        signals[0].write(1).unwrap();
        wait_for("the first event", || seen[0].load(Ordering::SeqCst) == 1);
        signals[0].write(1).unwrap();
        wait_for("the second event", || seen[0].load(Ordering::SeqCst) == 2);

        signals[1].write(1).unwrap();
        wait_for("the stopping event", || seen[1].load(Ordering::SeqCst) == 1);
        // Still readable, but no longer watched.
        signals[0].write(1).unwrap();
        wait_for("an event after it", || seen[0].load(Ordering::SeqCst) == 3);
        assert_eq!(seen[1].load(Ordering::SeqCst), 1);

        handle.stop();
        signals[0].write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            seen[0].load(Ordering::SeqCst),
            3,
            "stopped loops handle nothing"
        );
    }

    /// An eventfd watched edge-triggered, as a tap is, and never drained.
    struct EdgeEvent {
        fd: EventFd,
        seen: Arc<AtomicUsize>,
    }

    impl HostEvents for EdgeEvent {
        fn host_event_fds(&self) -> Vec<(RawFd, EventSet)> {
            vec![(self.fd.as_raw_fd(), EventSet::IN | EventSet::EDGE_TRIGGERED)]
        }

        fn handle_host_event(&mut self, _index: usize, events: EventSet) -> Watch {
            assert!(events.contains(EventSet::IN));
            self.seen.fetch_add(1, Ordering::SeqCst);
            Watch::Keep
        }
    }

    #[test]
    fn edge_triggered_fds_are_reported_once_per_change_not_while_ready() {
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let signal = fd.try_clone().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let mut event_loop = EventLoop::new().unwrap();
        event_loop
            .add(Arc::new(Mutex::new(EdgeEvent {
                fd,
                seen: seen.clone(),
            })))
            .unwrap();
        let mut handle = event_loop.spawn(None).unwrap();

        signal.write(1).unwrap();
        wait_for("the first event", || seen.load(Ordering::SeqCst) == 1);
        // Still readable, but level-triggered it would have come back at once.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "reported again while unchanged"
        );
        signal.write(1).unwrap();
        wait_for("the next change", || seen.load(Ordering::SeqCst) == 2);
        handle.stop();
    }
}
