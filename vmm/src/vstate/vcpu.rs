//! vCPUs: configured from plain register values, each run on its own thread
//! until the guest halts, shuts down or resets, or the VMM stops it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use seccompiler::BpfProgram;

use crate::arch::x86_64::lapic;
use crate::seccomp::{self, ThreadKind};

/// What a vCPU's exits are handed to: the VMM's port and MMIO buses.
pub trait ExitHandler: Send + Sync {
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// Returns true when the write asks for the VM to stop (i8042 reset).
    fn pio_write(&self, port: u16, data: &[u8]) -> bool;
    fn mmio_read(&self, address: u64, data: &mut [u8]);
    fn mmio_write(&self, address: u64, data: &[u8]);
}

/// Why a vCPU thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest executed HLT with interrupts off (or the VM was built
    /// without an irqchip): there is nothing more it can do.
    Halted,
    /// An i8042 reset or a system event: the guest asked for a reboot
    /// (Hull's guest ends that way).
    Reset,
    /// A triple fault: the guest crashed. Holds where it was.
    TripleFault(String),
    /// The VMM stopped it.
    Stopped,
    /// KVM could not go on (emulation failure, failed entry, ...).
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("Creating vCPU {id}: {source}")]
    Create {
        id: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Configuring vCPU {id} ({what}): {source}")]
    Configure {
        id: u64,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: KVM accepted {set} of {wanted} MSRs")]
    Msrs { id: u64, set: usize, wanted: usize },
    #[error("Starting the thread of vCPU {id}: {source}")]
    Thread {
        id: u64,
        #[source]
        source: std::io::Error,
    },
}

/// The initial state of a vCPU.
pub struct VcpuConfig {
    pub cpuid: CpuId,
    pub msrs: Msrs,
    /// Register state for the boot vCPU; the others keep KVM's reset state and wait for
    /// INIT/SIPI from it.
    pub boot: Option<(kvm_regs, kvm_sregs, kvm_fpu)>,
}

pub struct Vcpu {
    id: u64,
    fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &VmFd, id: u64) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(id)
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Vcpu { id, fd })
    }

    /// The vCPU's special registers as KVM created them (APIC base and
    /// the rest), for the boot code to adjust.
    pub fn sregs(&self) -> Result<kvm_sregs, VcpuError> {
        self.fd.get_sregs().map_err(|source| VcpuError::Configure {
            id: self.id,
            what: "reading special registers",
            source,
        })
    }

    pub fn configure(&self, config: &VcpuConfig) -> Result<(), VcpuError> {
        let id = self.id;
        let err = |what| move |source| VcpuError::Configure { id, what, source };
        self.fd.set_cpuid2(&config.cpuid).map_err(err("CPUID"))?;
        let set = self.fd.set_msrs(&config.msrs).map_err(err("MSRs"))?;
        let wanted = config.msrs.as_slice().len();
        if set != wanted {
            return Err(VcpuError::Msrs { id, set, wanted });
        }
        // Every vCPU, BSP or not: LINT0 ExtINT, LINT1 NMI, as the MP table says.
        let mut lapic = self.fd.get_lapic().map_err(err("reading the local APIC"))?;
        lapic::set_lint_delivery_modes(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(err("local APIC"))?;
        if let Some((regs, sregs, fpu)) = &config.boot {
            self.fd.set_sregs(sregs).map_err(err("special registers"))?;
            self.fd.set_regs(regs).map_err(err("registers"))?;
            self.fd.set_fpu(fpu).map_err(err("FPU"))?;
        }
        Ok(())
    }

    /// Runs the vCPU on its own thread, confined by `filter` (see
    /// `crate::seccomp`) before it first enters the guest.
    pub fn start(
        self,
        handler: Arc<dyn ExitHandler>,
        filter: Option<Arc<BpfProgram>>,
    ) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let id = self.id;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                seccomp::confine_current_thread(ThreadKind::Vcpu, filter.as_deref());
                self.run(handler.as_ref(), &thread_stop)
            })
            .map_err(|source| VcpuError::Thread { id, source })?;
        Ok(VcpuHandle { thread, stop })
    }

    /// The registers that say where a crashed guest was, for the message.
    fn whereabouts(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(regs), Ok(sregs)) => format!(
                "vcpu {} rip {:#x} rsp {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
                self.id, regs.rip, regs.rsp, sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer
            ),
            (Err(err), _) | (_, Err(err)) => {
                format!("vcpu {} (registers unreadable: {err})", self.id)
            }
        }
    }

    fn run(mut self, handler: &dyn ExitHandler, stop: &AtomicBool) -> VcpuStop {
        loop {
            if stop.load(Ordering::SeqCst) {
                return VcpuStop::Stopped;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => handler.pio_read(port, data),
                Ok(VcpuExit::IoOut(port, data)) => {
                    if handler.pio_write(port, data) {
                        return VcpuStop::Reset;
                    }
                }
                Ok(VcpuExit::MmioRead(address, data)) => handler.mmio_read(address, data),
                Ok(VcpuExit::MmioWrite(address, data)) => handler.mmio_write(address, data),
                Ok(VcpuExit::Hlt) => return VcpuStop::Halted,
                Ok(VcpuExit::Shutdown) => return VcpuStop::TripleFault(self.whereabouts()),
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    tracing::info!(vcpu = self.id, kind, "system event");
                    return VcpuStop::Reset;
                }
                Ok(VcpuExit::InternalError) => {
                    return VcpuStop::Failed(
                        "KVM internal error (on PVM hosts: an instruction KVM cannot emulate)"
                            .into(),
                    )
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return VcpuStop::Failed(format!(
                        "KVM entry failed on cpu {cpu}: reason {reason:#x}"
                    ))
                }
                Ok(other) => {
                    return VcpuStop::Failed(format!("unexpected vCPU exit {other:?}"));
                }
                Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(err) => return VcpuStop::Failed(format!("KVM_RUN: {err}")),
            }
        }
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: JoinHandle<VcpuStop>,
    stop: Arc<AtomicBool>,
}

/// The signal that interrupts KVM_RUN when the VMM stops a vCPU.
fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn ignore(_: libc::c_int) {}
        // SAFETY: installs a handler that does nothing; its only effect is
        // that KVM_RUN returns EINTR on the thread that receives it.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

impl VcpuHandle {
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the vCPU to end by itself.
    pub fn join(self) -> VcpuStop {
        self.thread
            .join()
            .unwrap_or_else(|_| VcpuStop::Failed("vCPU thread panicked".into()))
    }

    /// Stops the vCPU: sets its stop flag and kicks it out of KVM_RUN until
    /// its thread ends (a kick can land just before it enters KVM_RUN, so it
    /// is repeated).
    pub fn stop(self) -> VcpuStop {
        use std::os::unix::thread::JoinHandleExt;
        self.stop.store(true, Ordering::SeqCst);
        while !self.thread.is_finished() {
            // SAFETY: the thread is alive (not finished) and its pthread_t
            // stays valid until it is joined below.
            unsafe { libc::pthread_kill(self.thread.as_pthread_t(), kick_signal()) };
            std::thread::sleep(Duration::from_millis(5));
        }
        self.join()
    }
}
