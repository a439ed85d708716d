//! Confinement of the VMM's threads: each drops every capability and then
//! installs its own seccomp filter as its first action, so a guest that
//! takes over a vCPU or a device can only make the system calls that
//! thread needs to run (see docs/vmm.md, "Confinement").
//!
//! The lists below were taken from `strace -f` of the KVM test guests (boot,
//! serial, vsock ping/pong, API stop), and extended by the paths a test guest
//! does not take but a real one can: a guest-initiated vsock connection
//! (`socket` and `connect` on a vCPU thread), log lines, and the teardown
//! order, which decides which thread drops the last reference to a device.
//! A system call outside the list kills the whole process with SIGSYS.
//!
//! The vsock backend (`hull-vmm vsock`) has a filter of its own
//! ([`ThreadKind::VsockBackend`]), installed once before its threads exist and inherited
//! by all of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The kinds of thread the VMM runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread and the thread that waits for the vCPUs and stops
    /// them: both only run once the VM is built.
    Main,
    /// A vCPU: KVM_RUN and the devices on the port and MMIO buses.
    Vcpu,
    /// The event loop for the devices' host fds (vsock sockets, taps, virtio-fs call
    /// eventfds and vhost-user sockets).
    EventLoop,
    /// The API socket.
    Api,
    /// Every thread of `hull-vmm vsock`, the vsock device served to QEMU over vhost-user:
    /// its main thread installs the filter before the backend starts, and the threads the
    /// vhost-user daemon then starts (its request loop and vring worker, which run no code of
    /// ours first) inherit it.
    VsockBackend,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::Api,
        ThreadKind::VsockBackend,
    ];

    fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::EventLoop => "event loop",
            ThreadKind::Api => "API",
            ThreadKind::VsockBackend => "vsock backend",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Building a filter failed (a bug in the rules below).
    #[error("Building the seccomp filter of the {thread} thread: {source}")]
    Build {
        thread: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("Dropping the capabilities of the {thread} thread: {source}")]
    Capabilities {
        thread: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Installing the seccomp filter of the {thread} thread (run with --no-seccomp on a kernel without seccomp): {source}"
    )]
    Install {
        thread: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// The compiled filters of hull-vmm's thread kinds, built once at start-up so a
/// broken rule stops the VMM before it builds anything.
#[derive(Debug, Clone)]
pub struct ThreadFilters {
    main: Arc<BpfProgram>,
    vcpu: Arc<BpfProgram>,
    event_loop: Arc<BpfProgram>,
    api: Arc<BpfProgram>,
}

impl ThreadFilters {
    pub fn new() -> Result<Self, SeccompError> {
        Ok(ThreadFilters {
            main: Arc::new(compile(ThreadKind::Main)?),
            vcpu: Arc::new(compile(ThreadKind::Vcpu)?),
            event_loop: Arc::new(compile(ThreadKind::EventLoop)?),
            api: Arc::new(compile(ThreadKind::Api)?),
        })
    }

    /// The filter of one of hull-vmm's own thread kinds.
    pub fn get(&self, kind: ThreadKind) -> Arc<BpfProgram> {
        match kind {
            ThreadKind::Main => self.main.clone(),
            ThreadKind::Vcpu => self.vcpu.clone(),
            ThreadKind::EventLoop => self.event_loop.clone(),
            ThreadKind::Api => self.api.clone(),
            ThreadKind::VsockBackend => unreachable!("hull-vmm runs no vsock backend thread"),
        }
    }
}

/// A thread's first action: drop all capabilities, then install `filter`
/// (none with `--no-seccomp`). Confinement that fails is fatal: the VMM
/// exits with status 1 rather than run a guest unconfined.
pub fn confine_current_thread(kind: ThreadKind, filter: Option<&BpfProgram>) {
    if let Err(err) = try_confine_current_thread(kind, filter) {
        eprintln!("hull-vmm: {err}");
        std::process::exit(1);
    }
}

pub fn try_confine_current_thread(
    kind: ThreadKind,
    filter: Option<&BpfProgram>,
) -> Result<(), SeccompError> {
    drop_capabilities().map_err(|source| SeccompError::Capabilities {
        thread: kind.name(),
        source,
    })?;
    if let Some(filter) = filter {
        let install = |filter: &BpfProgram| {
            seccompiler::apply_filter(filter).map_err(|source| SeccompError::Install {
                thread: kind.name(),
                source,
            })
        };
        if kind == ThreadKind::VsockBackend {
            install(&compile_clone3_fallback()?)?;
        }
        install(filter)?;
    }
    Ok(())
}

/// A second filter for threads that start threads: `clone3` fails with ENOSYS, so glibc
/// falls back to `clone`, whose flags (unlike `clone3`'s, behind a pointer) a filter can
/// check. Of two filters the kernel takes the stronger verdict, so ENOSYS beats the main
/// filter's allow.
fn compile_clone3_fallback() -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build {
        thread: "clone3 fallback",
        source,
    };
    let filter = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

/// The filter of `kind`, compiled for x86_64.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build {
        thread: kind.name(),
        source,
    };
    let filter = SeccompFilter::new(
        rules(kind).map_err(build)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;
type RuleResult<T> = Result<T, seccompiler::BackendError>;

/// Allowed system calls of `kind`: an empty rule list allows a call with
/// any arguments, otherwise one of the rules must match.
fn rules(kind: ThreadKind) -> RuleResult<Rules> {
    let mut rules = common()?;
    match kind {
        ThreadKind::Main => main(&mut rules)?,
        ThreadKind::Vcpu => vcpu(&mut rules)?,
        ThreadKind::EventLoop => event_loop(&mut rules)?,
        ThreadKind::Api => api(&mut rules)?,
        ThreadKind::VsockBackend => vsock_backend(&mut rules)?,
    }
    Ok(rules)
}

/// What every thread needs: memory allocation (never executable), locks
/// (`futex`; std's channels back off with `sched_yield`), `clock_gettime`
/// where the vDSO falls back to the kernel, reads and writes on fds it
/// already holds (log lines go to stderr), closing them, and the end of a
/// thread (Rust's runtime takes down its signal stack, glibc returns the
/// stack) or of the process.
fn common() -> RuleResult<Rules> {
    let mut rules = Rules::new();
    for nr in [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_close,
        libc::SYS_futex,
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_madvise,
        libc::SYS_mremap,
        libc::SYS_clock_gettime,
        libc::SYS_sched_yield,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ] {
        rules.insert(nr, vec![]);
    }
    // No new executable memory: a guest that gets code execution in the
    // VMM cannot map more of its own.
    let not_exec = || -> RuleResult<Vec<SeccompRule>> {
        Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?])?])
    };
    rules.insert(libc::SYS_mmap, not_exec()?);
    rules.insert(libc::SYS_mprotect, not_exec()?);
    // Debug builds of Rust's std check with F_GETFD that an fd is open
    // before closing it.
    rules.insert(libc::SYS_fcntl, vec![fcntl(libc::F_GETFD)?]);
    Ok(rules)
}

/// Waiting for the vCPUs (sleeps), kicking them out of KVM_RUN
/// (`pthread_kill` = `getpid` + `tgkill` with the kick signal), joining the
/// threads, removing the API and vsock socket files and tearing down the VM.
fn main(rules: &mut Rules) -> RuleResult<()> {
    for nr in [
        libc::SYS_clock_nanosleep,
        libc::SYS_getpid,
        libc::SYS_unlink,
    ] {
        rules.insert(nr, vec![]);
    }
    rules.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::SIGRTMIN() as u64,
        )?])?],
    );
    Ok(())
}

/// KVM_RUN on the vCPU fd, and reading its registers when the guest
/// triple-faults (to say where), the kick signal's return,
/// the serial log and the irqfds (`write`), and the vsock device when the
/// guest notifies a queue: reads, writes and epoll re-arming on its host
/// sockets, and connections the guest opens to `<uds>_<port>`; the
/// virtio-blk devices, which read, write and flush their image files when
/// the guest notifies their queue; the virtio-fs devices, which speak
/// vhost-user to virtiofsd (`sendmsg`/`recvmsg`, with fds attached) when
/// the guest activates or resets them, and write a kick eventfd when it
/// notifies a queue; the virtio-net devices, which send frames to their
/// taps (`writev`) and take frames from them (`read`); and the balloon,
/// which frees the guest pages the guest reports (`madvise`, in `common`).
fn vcpu(rules: &mut Rules) -> RuleResult<()> {
    let ioctl = |request| -> RuleResult<SeccompRule> {
        SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            request,
        )?])
    };
    rules.insert(
        libc::SYS_ioctl,
        vec![ioctl(KVM_RUN)?, ioctl(KVM_GET_REGS)?, ioctl(KVM_GET_SREGS)?],
    );
    for nr in [
        libc::SYS_rt_sigreturn,
        libc::SYS_writev,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_shutdown,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_connect,
        // virtio-blk requests on the image file.
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_fdatasync,
        // virtio-fs: vhost-user requests to virtiofsd.
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
    ] {
        rules.insert(nr, vec![]);
    }
    rules.insert(libc::SYS_socket, unix_stream_socket()?);
    Ok(())
}

/// Host clients of the vsock device: accepting them (and making them
/// non-blocking with FIONBIO), reading and writing them, and the epoll set;
/// virtio-fs's call eventfds (`read`, then `write` to the irqfd) and the
/// `shutdown` of a vhost-user socket whose virtiofsd hung up; frames
/// arriving on the net devices' taps (`read`).
fn event_loop(rules: &mut Rules) -> RuleResult<()> {
    for nr in [
        libc::SYS_epoll_wait,
        libc::SYS_epoll_ctl,
        libc::SYS_accept4,
        libc::SYS_writev,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_shutdown,
        libc::SYS_unlink,
    ] {
        rules.insert(nr, vec![]);
    }
    rules.insert(
        libc::SYS_ioctl,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::FIONBIO,
        )?])?],
    );
    Ok(())
}

/// Accepting API clients and answering them line by line (`try_clone`
/// duplicates the stream with `fcntl(F_DUPFD_CLOEXEC)`).
fn api(rules: &mut Rules) -> RuleResult<()> {
    rules.insert(libc::SYS_accept4, vec![]);
    rules.insert(libc::SYS_recvfrom, vec![]);
    rules.insert(libc::SYS_sendto, vec![]);
    rules
        .entry(libc::SYS_fcntl)
        .or_default()
        .push(fcntl(libc::F_DUPFD_CLOEXEC)?);
    Ok(())
}

/// The vsock backend, found by running it under `strace -f` (vmm/tests/vsock_backend.rs):
/// - threads (the serving thread, the vhost-user daemon's request loop and vring worker):
///   `clone` with exactly glibc's thread flags, never a process (`clone3` is answered
///   ENOSYS by a second filter, so glibc falls back to `clone`); glibc's handler for its
///   set-uid broadcast signal, installed at the first `pthread_create`
///   (`rt_sigaction(SIGRT_1)` only); each new thread registers its robust futex list and
///   `rseq`, sets its name (`prctl(PR_SET_NAME)` only), and Rust's runtime asks for its
///   CPU affinity and thread id; hash maps seed themselves with `getrandom`;
/// - vhost-user with QEMU: `accept4` of the frontend, `recvmsg`/`sendmsg` with the memory
///   table's and vrings' descriptors attached (regions are mapped shared, never
///   executable, as every thread's `mmap` is), `fcntl(F_DUPFD_CLOEXEC)` for a second handle
///   on the connection, eventfds (`eventfd2`) for the workers' exit, `poll` for QEMU (or
///   the backend's stop) before the `accept4`, `shutdown` of the connection at the end;
/// - the vring worker: `epoll_create1`, `epoll_ctl` and `epoll_wait` on the kick eventfds,
///   the exit eventfd and the muxer's epoll fd; `read` and `write` on eventfds;
/// - hybrid vsock: `accept4` of host clients, made non-blocking with `ioctl(FIONBIO)`,
///   `recvfrom`/`sendto`/`writev`/`shutdown` on the streams, and `socket(AF_UNIX,
///   SOCK_STREAM)` with `connect` for connections the guest opens to `<uds>_<port>`;
/// - the main thread: `poll` on the signalfd and the backend's end eventfd, then stopping
///   the backend (`write` to an eventfd) and joining the threads (`futex`).
fn vsock_backend(rules: &mut Rules) -> RuleResult<()> {
    for nr in [
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
        libc::SYS_gettid,
        libc::SYS_getrandom,
        libc::SYS_clone3,
        libc::SYS_accept4,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_eventfd2,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_writev,
        libc::SYS_shutdown,
        libc::SYS_connect,
        libc::SYS_poll,
    ] {
        rules.insert(nr, vec![]);
    }
    let only = |argument, len, value| -> RuleResult<Vec<SeccompRule>> {
        Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
            argument,
            len,
            SeccompCmpOp::Eq,
            value,
        )?])?])
    };
    rules.insert(
        libc::SYS_clone,
        only(0, SeccompCmpArgLen::Qword, GLIBC_THREAD_FLAGS)?,
    );
    rules.insert(
        libc::SYS_rt_sigaction,
        only(0, SeccompCmpArgLen::Dword, GLIBC_SIGSETXID)?,
    );
    rules.insert(
        libc::SYS_prctl,
        only(0, SeccompCmpArgLen::Dword, libc::PR_SET_NAME as u64)?,
    );
    rules.insert(
        libc::SYS_ioctl,
        only(1, SeccompCmpArgLen::Dword, libc::FIONBIO)?,
    );
    rules.insert(libc::SYS_socket, unix_stream_socket()?);
    rules
        .entry(libc::SYS_fcntl)
        .or_default()
        .push(fcntl(libc::F_DUPFD_CLOEXEC)?);
    Ok(())
}

/// The real-time signal glibc keeps for itself to change the credentials of every thread
/// (`SIGSETXID`, the kernel's 33; glibc's `SIGRTMIN` is 34).
const GLIBC_SIGSETXID: u64 = 33;

/// The flags glibc's `pthread_create` passes to `clone`: a thread sharing everything, never
/// a new process.
const GLIBC_THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// `fcntl(fd, command, ...)`.
fn fcntl(command: libc::c_int) -> RuleResult<SeccompRule> {
    SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        command as u64,
    )?])
}

/// `socket(AF_UNIX, SOCK_STREAM | any flags, 0)`.
fn unix_stream_socket() -> RuleResult<Vec<SeccompRule>> {
    Ok(vec![SeccompRule::new(vec![
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?,
        SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(0xf),
            libc::SOCK_STREAM as u64,
        )?,
    ])?])
}

/// `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`.
const KVM_GET_REGS: u64 = kvm_read_ioctl(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
/// `_IOR(KVMIO, 0x83, struct kvm_sregs)`.
const KVM_GET_SREGS: u64 = kvm_read_ioctl(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

/// `_IOR(KVMIO, nr, size)`: direction "read" (2) in bits 30-31, the size
/// in bits 16-29.
const fn kvm_read_ioctl(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | ((kvm_bindings::KVMIO as u64) << 8) | nr
}

/// Drops every capability of the calling thread: the bounding set (so an
/// `execve` could not bring them back), the ambient set, then the
/// effective, permitted and inheritable sets. Capabilities belong to a
/// thread, which is why every thread does this itself.
pub fn drop_capabilities() -> std::io::Result<()> {
    drop_bounding_set()?;
    // SAFETY: prctl with integer arguments only. EINVAL means a kernel
    // without ambient capabilities, where there is nothing to clear.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(err);
        }
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and data are valid for the kernel's version 3 layout
    // (one header, two data words), and pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Empties the calling thread's bounding set. It can only shrink while
/// CAP_SETPCAP is held; without it (an unprivileged or jailed VMM, whose
/// jail emptied the set before giving up root) there is nothing to drop.
pub fn drop_bounding_set() -> std::io::Result<()> {
    if has_effective_capability(CAP_SETPCAP)? {
        for cap in 0..=last_capability() {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The calling thread's effective capabilities, low and high word.
pub fn effective_capabilities() -> std::io::Result<u64> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: as in `drop_capabilities`; the kernel fills `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

fn has_effective_capability(cap: u32) -> std::io::Result<bool> {
    Ok(effective_capabilities()? & (1 << cap) != 0)
}

/// The highest capability this kernel knows.
fn last_capability() -> libc::c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

const CAP_SETPCAP: u32 = 8;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The environment variable that makes the main thread try `fork` once it
/// is confined, to show that the filter is in force: with filters the
/// process dies of SIGSYS, with `--no-seccomp` the child exits at once and
/// a line on stderr says so. Only the tests set it, and only debug builds
/// (what `cargo test` runs) look at it: the release binary has no such hook.
pub const SELFTEST_ENV: &str = "HULL_VMM_SECCOMP_SELFTEST";

/// Tries a system call no filter allows (see [`SELFTEST_ENV`]).
pub fn run_selftest_if_asked() {
    if !cfg!(debug_assertions) || std::env::var_os(SELFTEST_ENV).is_none() {
        return;
    }
    // SAFETY: the child only calls `_exit`, which is async-signal-safe.
    match unsafe { libc::fork() } {
        0 => unsafe { libc::_exit(0) },
        -1 => eprintln!(
            "hull-vmm: seccomp self-test: fork failed: {}",
            std::io::Error::last_os_error()
        ),
        child => {
            let mut status = 0;
            // SAFETY: waits for the child forked just above.
            unsafe { libc::waitpid(child, &mut status, 0) };
            eprintln!("hull-vmm: seccomp self-test: fork was allowed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_for_x86_64() {
        for kind in ThreadKind::ALL {
            let program = compile(kind).unwrap();
            assert!(!program.is_empty(), "{kind:?}");
            // The kernel refuses programs over BPF_MAXINSNS instructions.
            assert!(program.len() <= 4096, "{kind:?}: {}", program.len());
        }
        assert!(!compile_clone3_fallback().unwrap().is_empty());
        let filters = ThreadFilters::new().unwrap();
        assert_eq!(
            *filters.get(ThreadKind::Vcpu),
            compile(ThreadKind::Vcpu).unwrap()
        );
    }

    fn only(argument: u8, len: SeccompCmpArgLen, value: u64) -> Vec<SeccompRule> {
        vec![SeccompRule::new(vec![SeccompCondition::new(
            argument,
            len,
            SeccompCmpOp::Eq,
            value,
        )
        .unwrap()])
        .unwrap()]
    }

    #[test]
    fn only_the_vcpu_may_run_kvm_and_nobody_may_fork_or_exec() {
        for kind in ThreadKind::ALL {
            let rules = rules(kind).unwrap();
            for forbidden in [
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_ptrace,
                libc::SYS_setuid,
                libc::SYS_capset,
                libc::SYS_unshare,
                libc::SYS_setns,
            ] {
                assert!(
                    !rules.contains_key(&forbidden),
                    "{kind:?} allows {forbidden}"
                );
            }
            if kind == ThreadKind::VsockBackend {
                // Threads, never processes: clone with exactly the thread flags, clone3
                // answered ENOSYS by the second filter; prctl only to name a thread.
                assert_eq!(
                    rules[&libc::SYS_clone],
                    only(0, SeccompCmpArgLen::Qword, GLIBC_THREAD_FLAGS)
                );
                assert_eq!(
                    rules[&libc::SYS_prctl],
                    only(0, SeccompCmpArgLen::Dword, libc::PR_SET_NAME as u64)
                );
            } else {
                for forbidden in [libc::SYS_clone, libc::SYS_clone3, libc::SYS_prctl] {
                    assert!(
                        !rules.contains_key(&forbidden),
                        "{kind:?} allows {forbidden}"
                    );
                }
            }
            let ioctl_restricted = rules.get(&libc::SYS_ioctl).is_none_or(|r| !r.is_empty());
            assert!(ioctl_restricted, "{kind:?} allows every ioctl");
            let socket_restricted = rules.get(&libc::SYS_socket).is_none_or(|r| !r.is_empty());
            assert!(socket_restricted, "{kind:?} allows every socket");
        }
        // KVM_RUN, and two reads of the vCPU's registers; nothing that
        // changes the VM.
        let vcpu_ioctls: Vec<SeccompRule> = [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS]
            .into_iter()
            .flat_map(|request| only(1, SeccompCmpArgLen::Dword, request))
            .collect();
        assert_eq!(
            rules(ThreadKind::Vcpu).unwrap()[&libc::SYS_ioctl],
            vcpu_ioctls
        );
    }

    #[test]
    fn only_the_vcpu_does_block_io() {
        for nr in [libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync] {
            for kind in ThreadKind::ALL {
                let allowed = rules(kind).unwrap().get(&nr).is_some_and(Vec::is_empty);
                assert_eq!(allowed, kind == ThreadKind::Vcpu, "{kind:?} and {nr}");
            }
        }
    }

    #[test]
    fn only_the_vcpu_and_the_vsock_backend_speak_vhost_user() {
        for nr in [libc::SYS_sendmsg, libc::SYS_recvmsg] {
            for kind in ThreadKind::ALL {
                let allowed = rules(kind).unwrap().get(&nr).is_some_and(Vec::is_empty);
                let expected = matches!(kind, ThreadKind::Vcpu | ThreadKind::VsockBackend);
                assert_eq!(allowed, expected, "{kind:?} and {nr}");
            }
        }
    }

    #[test]
    fn kvm_run_is_the_request_kvm_ioctls_uses() {
        assert_eq!(KVM_RUN, u64::from(kvm_bindings::KVMIO) << 8 | 0x80);
    }

    #[test]
    fn register_reads_are_the_kernels_request_numbers() {
        // From <linux/kvm.h> on x86_64: struct kvm_regs is 144 bytes,
        // struct kvm_sregs 312.
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    }
}
