//! The agent as PID 1 of the guest: the system set-up a container runtime
//! needs, done once before any thread starts, and the sandbox-wide settings
//! (hostname, shared filesystems, clock).

use std::path::Path;

use anyhow::{Context, Result};
use hull_protocols::agent::CreateSandboxRequest;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode as FileMode;

use crate::server::Mode;

/// The variable the kernel hands PID 1 from a `hull_raw_boot=1` parameter:
/// `hull bench` times a boot of this kernel and initrd that ends as soon as
/// PID 1 runs, the floor under a sandbox's start-up.
const RAW_BOOT_ENV: &str = "hull_raw_boot";

pub fn main() -> Result<()> {
    if std::env::var_os(RAW_BOOT_ENV).is_some() {
        power_off();
    }
    let result = setup_system().and_then(|()| crate::serve(Mode::Guest));
    if let Err(err) = &result {
        eprintln!("hull-agent: {err:#}");
    }
    power_off();
}

/// Leaves the initramfs and mounts the pseudo filesystems.
fn setup_system() -> Result<()> {
    leave_initramfs()?;
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", nodev, None),
        ("sysfs", "/sys", nodev, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        (
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        ("cgroup2", "/sys/fs/cgroup", nodev, Some("nsdelegate")),
    ];
    for (fstype, target, flags, data) in mounts {
        std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
        mount(Some(fstype), target, Some(fstype), flags, data)
            .with_context(|| format!("mounting {fstype} on {target}"))?;
    }
    let _ = std::fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").context("linking /dev/ptmx")?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    // Hand every controller to child cgroups, so containers get limits and
    // statistics. One at a time: a controller the kernel lacks is skipped.
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
        .context("reading the cgroup controllers")?;
    for controller in controllers.split_whitespace() {
        let _ = std::fs::write(
            "/sys/fs/cgroup/cgroup.subtree_control",
            format!("+{controller}"),
        );
    }
    report_free_pages_from_2_mib();
    Ok(())
}

/// Free page reporting (the VMM's balloon) hands the host back free blocks
/// of at least this order. The kernel takes its pageblock order, 4 MiB in a
/// kernel without huge pages like Hull's, and a block that size is seldom
/// wholly free once a tmpfs file is removed: of 50 MB freed in a container,
/// 36 MiB left QEMU at order 10 and 44 MiB at order 9 (2 MiB, the
/// pageblock order of kernels with huge pages). The kernel sets the order as
/// the balloon registers, before PID 1 runs, so it is set here, not on the
/// command line. A guest without a balloon (hull-vmm) reports nothing
/// whatever the order.
fn report_free_pages_from_2_mib() {
    const ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
    if let Err(err) = std::fs::write(ORDER, "9") {
        eprintln!("hull-agent: setting {ORDER}: {err}");
    }
}

/// The initramfs root cannot be pivoted away from (pivot_root needs a root
/// that is a mount with a parent), and every container start pivots. So the
/// agent moves a tmpfs over `/` and chroots into it, as switch_root does.
/// The running binary stays reachable as /proc/self/exe.
fn leave_initramfs() -> Result<()> {
    let new_root = Path::new("/newroot");
    std::fs::create_dir_all(new_root).context("creating /newroot")?;
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mounting the root tmpfs")?;
    for dir in ["proc", "sys", "dev", "run", "tmp", "etc"] {
        nix::unistd::mkdir(&new_root.join(dir), FileMode::from_bits_truncate(0o755))
            .with_context(|| format!("creating /{dir}"))?;
    }
    std::env::set_current_dir(new_root).context("entering the new root")?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .context("moving the new root over /")?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    std::env::set_current_dir("/").context("entering /")?;
    Ok(())
}

/// Sandbox-wide settings from CreateSandbox.
pub fn configure_sandbox(request: &CreateSandboxRequest) -> Result<()> {
    if !request.hostname.is_empty() {
        nix::unistd::sethostname(&request.hostname)
            .with_context(|| format!("setting the hostname to {}", request.hostname))?;
    }
    if request.host_time_unix_nanos > 0 {
        set_clock(request.host_time_unix_nanos).context("setting the clock")?;
    }
    for share in &request.shares {
        std::fs::create_dir_all(&share.mount_point)
            .with_context(|| format!("creating {}", share.mount_point))?;
        mount(
            Some(share.tag.as_str()),
            share.mount_point.as_str(),
            Some("virtiofs"),
            MsFlags::MS_NODEV,
            None::<&str>,
        )
        .with_context(|| {
            format!(
                "mounting virtio-fs tag {} on {}",
                share.tag, share.mount_point
            )
        })?;
    }
    Ok(())
}

fn set_clock(unix_nanos: i64) -> nix::Result<()> {
    use nix::sys::time::TimeSpec;
    use nix::time::{clock_settime, ClockId};
    let spec = TimeSpec::new(
        unix_nanos.div_euclid(1_000_000_000),
        unix_nanos.rem_euclid(1_000_000_000),
    );
    clock_settime(ClockId::CLOCK_REALTIME, spec)
}

/// Ends the VM. PID 1 must never exit (the kernel would panic).
///
/// By a restart, not a power-off: both VMMs end the VM when the guest resets
/// (QEMU runs with `-no-reboot`; hull-vmm stops on the i8042 reset line the
/// kernel pulls with `reboot=k`), while a power-off needs ACPI, which
/// hull-vmm does not have: there the guest would halt and the VMM wait.
fn power_off() -> ! {
    // What was written to the console (a failure's message) sits in the
    // UART's buffer until the driver sends it; a restart now would drop it.
    // SAFETY: tcdrain on our own stderr, no pointers.
    unsafe { libc::tcdrain(libc::STDERR_FILENO) };
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    loop {
        std::thread::park();
    }
}
