//! Emulated devices.
//!
//! Devices never call KVM: they raise interrupts through [`Interrupt`], which the VMM backs
//! with an irqfd (see [`EventFdInterrupt`]), and they are reached through plain `read`/`write`
//! methods that `device_manager` puts on a bus. Host-side fds they need watched (sockets,
//! eventfds a backend signals) go to the VMM's event loop through [`HostEvents`].

pub mod legacy;
pub mod virtio;

use std::fmt;
use std::io;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line a device can raise.
pub trait Interrupt: Send + Sync {
    /// Raises the interrupt.
    fn trigger(&self) -> io::Result<()>;
}

/// Whether the event loop keeps watching an fd after its device handled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Keep,
    /// Stop watching it: it will not become useful again (a peer hung up), and a
    /// level-triggered event that stays pending would otherwise wake the loop forever.
    Stop,
}

/// A device with host-side fds for the VMM's event loop (`crate::event_loop`) to watch.
pub trait HostEvents: Send {
    /// The fds to watch and the events of each. Asked once, when the device joins the loop;
    /// [`HostEvents::handle_host_event`] gets the index of the ready fd in this list.
    ///
    /// Level-triggered (`EventSet::IN`) unless the device asks for
    /// `EventSet::EDGE_TRIGGERED`: then it either drains the fd or knows what will make it
    /// try again (a net device out of guest buffers waits for the driver's notification
    /// rather than be woken again and again by frames it cannot take).
    fn host_event_fds(&self) -> Vec<(RawFd, EventSet)>;

    /// Fd `index` of [`HostEvents::host_event_fds`] is ready with `events`.
    fn handle_host_event(&mut self, index: usize, events: EventSet) -> Watch;
}

/// An interrupt raised by signalling an `EventFd`; the VMM registers the same fd with KVM as
/// an irqfd for the device's IRQ.
pub struct EventFdInterrupt {
    evt: EventFd,
}

impl EventFdInterrupt {
    /// Wraps `evt`; keep a clone of it (`EventFd::try_clone`) to register as the irqfd.
    pub fn new(evt: EventFd) -> Self {
        EventFdInterrupt { evt }
    }

    /// The fd that is signalled when the interrupt is raised.
    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }
}

impl Interrupt for EventFdInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.evt.write(1)
    }
}

impl fmt::Debug for EventFdInterrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::unix::io::AsRawFd;
        f.debug_struct("EventFdInterrupt")
            .field("fd", &self.evt.as_raw_fd())
            .finish()
    }
}

/// An interrupt that counts how often it was raised, for device tests.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug, Default)]
pub struct CountingInterrupt(std::sync::atomic::AtomicUsize);

#[cfg(any(test, feature = "test-support"))]
impl CountingInterrupt {
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_interrupt_signals_the_fd() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = EventFdInterrupt::new(evt.try_clone().unwrap());
        assert!(evt.read().is_err(), "fd must start unsignalled");
        interrupt.trigger().unwrap();
        interrupt.trigger().unwrap();
        assert_eq!(evt.read().unwrap(), 2);
    }
}
