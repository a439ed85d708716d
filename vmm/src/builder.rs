//! Assembles a VM in a fixed, readable order and runs it until the guest
//! halts, resets or is stopped: host check → memory (a shared memfd) → KVM
//! VM → legacy devices → virtio-mmio devices (vsock, block, fs, which
//! connects to its virtiofsd here, net, which opens its tap here) → kernel,
//! initrd, command line, MP table → vCPUs (`build`, which opens every host
//! resource and starts no thread), then the event loop and the vCPU threads
//! (`BuiltVm::start`). The jail (`crate::jail`) goes in between.

use std::fs::File;
use std::sync::{Arc, Mutex};

use kvm_bindings::Msrs;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::mptable::{self, MpTableError};
use crate::arch::x86_64::{cpuid, layout, msr};
use crate::config::{TapSource, VmConfig};
use crate::device_manager::{Bus, LegacyDeviceManager, MmioDeviceManager};
use crate::devices::legacy::{COM1_IRQ, I8042_PORT, I8042_PORT_LEN};
use crate::devices::virtio::balloon::BalloonDevice;
use crate::devices::virtio::block::BlockDevice;
use crate::devices::virtio::fs::{FsDevice, FsError};
use crate::devices::virtio::net::{NetDevice, Tap};
use crate::devices::virtio::vsock::{VsockConfig, VsockMmioDevice};
use crate::devices::{EventFdInterrupt, Interrupt};
use crate::event_loop::{EventLoop, EventLoopHandle};
use crate::host::Virtualization;
use crate::loader;
use crate::seccomp::{ThreadFilters, ThreadKind};
use crate::vstate::memory;
use crate::vstate::vcpu::{ExitHandler, Vcpu, VcpuConfig, VcpuHandle, VcpuStop};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "This host's KVM is PVM ({0}), which cannot boot an ordinary Linux kernel: it would stop in KVM's instruction emulator. Use Hull's QEMU backend (hypervisor = \"qemu\", accelerator = \"tcg\"), or set machine.pvm_capable = true for a PVM-aware guest"
    )]
    PvmHost(&'static str),
    #[error("No usable KVM on this host: {0}")]
    NoKvm(&'static str),
    #[error("Allocating {mib} MiB of guest memory: {message}")]
    Memory { mib: u32, message: String },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("Opening {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    #[error("Setting up {device}: {source}")]
    Device {
        device: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("CPUID: {0}")]
    Cpuid(String),
    #[error(transparent)]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    #[error("Event loop: {0}")]
    EventLoop(#[source] std::io::Error),
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest halted or asked for a reset/power-off.
    GuestStopped(VcpuStop),
    /// The VMM was asked to stop it.
    Stopped,
    /// A vCPU failed.
    Failed(String),
}

/// Exits of the vCPUs go to the port and MMIO buses.
struct Buses {
    io: Bus,
    mmio: Bus,
    reset: EventFd,
}

impl ExitHandler for Buses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.io.read(port.into(), data) {
            data.fill(0xff);
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        self.io.write(port.into(), data);
        let i8042 = u64::from(I8042_PORT)..u64::from(I8042_PORT) + I8042_PORT_LEN;
        i8042.contains(&u64::from(port)) && self.reset.read().is_ok()
    }

    fn mmio_read(&self, address: u64, data: &mut [u8]) {
        if !self.mmio.read(address, data) {
            data.fill(0xff);
        }
    }

    fn mmio_write(&self, address: u64, data: &[u8]) {
        self.mmio.write(address, data);
    }
}

/// A VM whose host resources are all open and whose vCPUs are configured,
/// with no thread started yet.
pub struct BuiltVm {
    vcpus: Vec<Vcpu>,
    buses: Arc<Buses>,
    /// The devices' host fds, gathered; the thread starts in `start`.
    event_loop: EventLoop,
    vm: Vm,
    memory: GuestMemoryMmap,
}

/// A running VM.
pub struct RunningVm {
    vcpus: Vec<VcpuHandle>,
    event_loop: EventLoopHandle,
    // Kept alive for as long as the vCPUs run.
    _vm: Vm,
    _memory: GuestMemoryMmap,
}

/// `map_err` for a device that could not be set up: which one, and why.
fn device_error<E: std::error::Error + Send + Sync + 'static>(
    device: impl Into<String>,
) -> impl FnOnce(E) -> BuildError {
    let device = device.into();
    move |source| BuildError::Device {
        device,
        source: Box::new(source),
    }
}

/// The taps passed as open descriptors, at the index of their net device.
fn take_passed_taps(config: &VmConfig) -> Result<Vec<Option<Tap>>, BuildError> {
    config
        .net
        .iter()
        .map(|net| match net.source() {
            Ok(TapSource::Fd(fd)) => Tap::from_fd(fd).map(Some).map_err(device_error("net")),
            Ok(TapSource::Name(_)) => Ok(None),
            Err(e) => Err(device_error("net")(e)),
        })
        .collect()
}

fn append(path: &std::path::Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Builds the VM `config` describes, up to the point where its threads
/// would start.
pub fn build(config: &VmConfig) -> Result<BuiltVm, BuildError> {
    // Before anything else is opened, so that a descriptor the caller did not pass cannot be
    // one of the VMM's own by the time it is looked at.
    let mut passed_taps = take_passed_taps(config)?;
    check_host(config, Virtualization::detect())?;

    let mib = config.machine.memory_mib;
    let size = mib as usize * 1024 * 1024;
    let memory = memory::create_guest_memory(&layout::memory_regions(size)).map_err(|e| {
        BuildError::Memory {
            mib,
            message: e.to_string(),
        }
    })?;
    let vm = Vm::new()?;
    vm.register_memory(&memory)?;

    let irq = |gsi: u32| -> std::io::Result<Arc<dyn Interrupt>> {
        let event = EventFd::new(EFD_NONBLOCK)?;
        vm.register_irqfd(&event, gsi)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Arc::new(EventFdInterrupt::new(event)))
    };

    // Appended to: whoever started the VMM may send its standard error to the same file.
    let serial_out: Box<dyn std::io::Write + Send> = match &config.serial.log {
        Some(path) => Box::new(append(path).map_err(|source| BuildError::Open {
            what: "serial log",
            path: path.clone(),
            source,
        })?),
        None => Box::new(std::io::sink()),
    };
    let reset = EventFd::new(EFD_NONBLOCK).map_err(device_error("the reset eventfd"))?;
    let legacy = LegacyDeviceManager::new(
        serial_out,
        irq(COM1_IRQ).map_err(device_error("the serial port"))?,
        reset
            .try_clone()
            .map_err(device_error("the reset eventfd"))?,
    )
    .map_err(device_error("the legacy devices"))?;

    let mut mmio = MmioDeviceManager::new(
        GuestMemoryAtomic::new(memory.clone()),
        layout::VIRTIO_MMIO_BASE,
        layout::VIRTIO_MMIO_MAX_DEVICES * layout::VIRTIO_MMIO_DEVICE_SIZE,
        layout::IRQ_BASE..=layout::IRQ_MAX,
    );
    let mut event_loop = EventLoop::new().map_err(BuildError::EventLoop)?;
    if let Some(vsock) = &config.vsock {
        let device = VsockMmioDevice::new(&VsockConfig {
            guest_cid: vsock.guest_cid,
            uds_path: vsock.uds_path.clone(),
        })
        .map_err(device_error("vsock"))?;
        let device = Arc::new(Mutex::new(device));
        mmio.register_virtio_device(device.clone(), irq)
            .map_err(device_error("vsock"))?;
        event_loop.add(device).map_err(BuildError::EventLoop)?;
    }
    for block in &config.block {
        let what = || format!("block {}", block.path.display());
        let device =
            BlockDevice::open(&block.path, block.read_only).map_err(device_error(what()))?;
        mmio.register_virtio_device(Arc::new(Mutex::new(device)), irq)
            .map_err(device_error(what()))?;
    }
    for fs in &config.fs {
        // Connects now: a missing virtiofsd fails the start, not the guest's mount.
        let device = FsDevice::connect(&fs.into(), &memory)?;
        let device = Arc::new(Mutex::new(device));
        mmio.register_virtio_device(device.clone(), irq)
            .map_err(device_error(format!("fs {}", fs.tag)))?;
        event_loop.add(device).map_err(BuildError::EventLoop)?;
    }
    for (index, net) in config.net.iter().enumerate() {
        let source = net.source().map_err(device_error("net"))?;
        // A named tap is opened (or created) now, while the VMM still has its capabilities;
        // a passed one was opened by the caller, in whatever network namespace it lives.
        let tap = match source {
            TapSource::Name(name) => Tap::open(name).map_err(device_error("net"))?,
            TapSource::Fd(_) => passed_taps[index].take().expect("taken at the start"),
        };
        let device = Arc::new(Mutex::new(NetDevice::new(tap, net.guest_mac(index))));
        mmio.register_virtio_device(device.clone(), irq)
            .map_err(device_error(format!("net {source}")))?;
        event_loop.add(device).map_err(BuildError::EventLoop)?;
    }

    // Free page reporting, so memory the guest frees leaves the VMM (devices/virtio/balloon.rs).
    mmio.register_virtio_device(Arc::new(Mutex::new(BalloonDevice::new())), irq)
        .map_err(device_error("balloon"))?;

    let mut kernel = File::open(&config.boot.kernel).map_err(|source| BuildError::Open {
        what: "kernel",
        path: config.boot.kernel.clone(),
        source,
    })?;
    let mut boot = loader::load_kernel(&memory, &mut kernel)?;
    if let Some(path) = &config.boot.initrd {
        let mut initrd = File::open(path).map_err(|source| BuildError::Open {
            what: "initrd",
            path: path.clone(),
            source,
        })?;
        loader::load_initrd(&memory, &mut boot, &mut initrd)?;
    }
    let devices: Vec<(GuestAddress, u32)> = mmio
        .devices()
        .iter()
        .map(|d| (GuestAddress(d.addr), d.irq))
        .collect();
    let cmdline = loader::build_cmdline(&config.boot.cmdline, &devices)?;
    let boot_state = loader::configure_boot(&memory, &boot, &cmdline)?;
    mptable::write_mptable(&memory, config.machine.vcpus)?;

    let supported = vm.supported_cpuid()?;
    let count = config.machine.vcpus;
    let buses = Arc::new(Buses {
        io: legacy.io_bus().clone(),
        mmio: mmio.bus().clone(),
        reset,
    });
    let mut vcpus = Vec::new();
    for id in 0..count {
        let vcpu = Vcpu::new(vm.fd(), id.into())?;
        let cpuid = cpuid::normalize_cpuid(&supported, id, count)
            .map_err(|e| BuildError::Cpuid(e.to_string()))?;
        let msrs = Msrs::from_entries(&msr::boot_msr_entries())
            .map_err(|e| BuildError::Cpuid(format!("MSR list: {e:?}")))?;
        let boot_registers = if id == 0 {
            let mut sregs = vcpu.sregs()?;
            boot_state.apply_sregs(&mut sregs);
            Some((boot_state.regs, sregs, boot_state.fpu))
        } else {
            None
        };
        vcpu.configure(&VcpuConfig {
            cpuid,
            msrs,
            boot: boot_registers,
        })?;
        vcpus.push(vcpu);
    }
    Ok(BuiltVm {
        vcpus,
        buses,
        event_loop,
        vm,
        memory,
    })
}

impl BuiltVm {
    /// Starts the event loop and the vCPUs. With `filters`, each of them
    /// confines itself (`crate::seccomp`) before doing anything else.
    pub fn start(self, filters: Option<&ThreadFilters>) -> Result<RunningVm, BuildError> {
        let event_loop = self
            .event_loop
            .spawn(filters.map(|f| f.get(ThreadKind::EventLoop)))
            .map_err(BuildError::EventLoop)?;
        let vcpu_filter = filters.map(|f| f.get(ThreadKind::Vcpu));
        let handles = self
            .vcpus
            .into_iter()
            .map(|vcpu| vcpu.start(self.buses.clone(), vcpu_filter.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RunningVm {
            vcpus: handles,
            event_loop,
            _vm: self.vm,
            _memory: self.memory,
        })
    }
}

/// On PVM, only a guest declared PVM-capable may run: anything else would
/// spin in KVM's instruction emulator instead of booting.
pub fn check_host(config: &VmConfig, host: Virtualization) -> Result<(), BuildError> {
    match host {
        Virtualization::Hardware => Ok(()),
        Virtualization::Pvm if config.machine.pvm_capable => Ok(()),
        Virtualization::Pvm => Err(BuildError::PvmHost(host.describe())),
        Virtualization::None => Err(BuildError::NoKvm(host.describe())),
    }
}

impl RunningVm {
    /// Waits until a vCPU ends (the guest halted, reset, or failed), then
    /// stops the others.
    pub fn wait(mut self) -> VmOutcome {
        let outcome = loop {
            if let Some(index) = self.vcpus.iter().position(VcpuHandle::is_finished) {
                let stop = self.vcpus.swap_remove(index).join();
                break match stop {
                    VcpuStop::Failed(why) => VmOutcome::Failed(why),
                    other => VmOutcome::GuestStopped(other),
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        self.shutdown();
        outcome
    }

    /// Stops the VM from outside.
    pub fn stop(mut self) -> VmOutcome {
        self.shutdown();
        VmOutcome::Stopped
    }

    /// `wait`, or stop when `stop` receives (or its sender goes away after
    /// sending nothing, which leaves the VM running).
    pub fn wait_or(self, stop: std::sync::mpsc::Receiver<()>) -> VmOutcome {
        loop {
            if self.vcpus.iter().any(VcpuHandle::is_finished) {
                return self.wait();
            }
            if stop.try_recv().is_ok() {
                return self.stop();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn shutdown(&mut self) {
        for vcpu in self.vcpus.drain(..) {
            vcpu.stop();
        }
        self.event_loop.stop();
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootConfig, MachineConfig, SerialConfig};

    fn config(pvm_capable: bool) -> VmConfig {
        VmConfig {
            machine: MachineConfig {
                pvm_capable,
                ..Default::default()
            },
            boot: BootConfig {
                kernel: "/k".into(),
                initrd: None,
                cmdline: String::new(),
            },
            serial: SerialConfig::default(),
            vsock: None,
            block: Vec::new(),
            fs: Vec::new(),
            jail: None,
            net: Vec::new(),
        }
    }

    #[test]
    fn pvm_hosts_refuse_guests_not_declared_pvm_capable() {
        let err = check_host(&config(false), Virtualization::Pvm)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PVM") && err.contains("qemu"), "{err}");
        assert!(check_host(&config(true), Virtualization::Pvm).is_ok());
        assert!(check_host(&config(false), Virtualization::Hardware).is_ok());
        assert!(check_host(&config(true), Virtualization::None).is_err());
    }
}
