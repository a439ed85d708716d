//! The virtio-fs device against a real virtiofsd (/usr/local/bin/virtiofsd, installed by
//! scripts/install-deps.sh): guest RAM in a memfd as the VMM makes it, the device driven
//! through the virtio-mmio registers as a guest driver would, the VMM's own event loop
//! relaying virtiofsd's interrupts, and FUSE requests on the request queue.

use std::path::Path;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::test_support::fs::{
    FsGuest, HIPRIO, IN_BUF, MEM_SIZE, OUT_BUF, QUEUE_SIZE, REQUEST, TAG, TIMEOUT,
};
use crate::devices::virtio::test_support::fuse::{
    FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_ROOT_ID,
};
use crate::devices::virtio::test_support::{
    DriverQueue, CONFIG, CONFIG_GENERATION, DEVICE_ID, INT_CONFIG, NEEDS_RESET, QUEUE_NUM_MAX,
    QUEUE_SEL, STATUS,
};
use crate::vstate::memory::create_guest_memory;

// Shared with the tests that run hull-vmm with a guest (vmm/tests/).
#[path = "../../../../tests/common/virtiofsd.rs"]
mod virtiofsd;
use virtiofsd::VirtiofsdProcess;

#[test]
fn fuse_init_and_lookup_through_virtiofsd() {
    let mut virtiofsd = VirtiofsdProcess::start();
    std::fs::write(virtiofsd.share().join("hello.txt"), vec![b'h'; 1234]).unwrap();
    let mut guest = FsGuest::connect(&virtiofsd.socket()).unwrap();

    assert_eq!(guest.driver.read(DEVICE_ID), 26);
    let mut tag = TAG.as_bytes().to_vec();
    tag.resize(36, 0);
    assert_eq!(guest.driver.read_config(0, 36), tag);
    assert_eq!(guest.driver.read(CONFIG + 36), 1, "num_request_queues");
    for (index, ring) in [(HIPRIO, "hiprio"), (REQUEST, "request")] {
        guest.driver.write(QUEUE_SEL, index);
        assert_eq!(
            guest.driver.read(QUEUE_NUM_MAX),
            u32::from(QUEUE_SIZE),
            "{ring}"
        );
    }
    // virtiofsd's ring features reach the guest; its vhost-user-only bits do not.
    let offered = guest.driver.device_features();
    assert_eq!(
        offered,
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    );
    assert_eq!(guest.probe(), 0xf, "DRIVER_OK without DEVICE_NEEDS_RESET");
    assert!(guest.driver.device().is_active());

    let init = guest.init();
    assert_eq!(init.major, FUSE_KERNEL_VERSION);
    assert!(init.minor >= FUSE_KERNEL_MINOR_VERSION, "{init:?}");
    assert!(init.max_write > 0, "{init:?}");

    let entry = guest.lookup(FUSE_ROOT_ID, b"hello.txt").unwrap();
    assert_eq!(entry.attr.size, 1234);
    assert_ne!(entry.nodeid, 0);
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(
        guest.lookup(FUSE_ROOT_ID, b"missing.txt").unwrap_err(),
        -libc::ENOENT
    );

    // The driver resets the device (rings stopped in virtiofsd) and sets it up again on
    // fresh rings; the FUSE session lives on in virtiofsd.
    guest.driver.write(STATUS, 0);
    assert!(!guest.driver.device().is_active());
    guest.hiprio = DriverQueue::new(0x1_0000, QUEUE_SIZE);
    guest.request = DriverQueue::new(0x1_4000, QUEUE_SIZE);
    assert_eq!(guest.probe(), 0xf);
    std::fs::write(virtiofsd.share().join("later.txt"), b"1234567").unwrap();
    assert_eq!(
        guest.lookup(FUSE_ROOT_ID, b"later.txt").unwrap().attr.size,
        7
    );

    // Dropping the device ends the session, and virtiofsd with it: a VMM leaves none behind.
    drop(guest);
    let status = virtiofsd.wait_exit(TIMEOUT);
    assert!(status.success(), "{status}: {}", virtiofsd.log());
}

#[test]
fn virtiofsd_dying_sets_needs_reset_without_hanging() {
    let mut virtiofsd = VirtiofsdProcess::start();
    let mut guest = FsGuest::connect(&virtiofsd.socket()).unwrap();
    assert_eq!(guest.probe(), 0xf);
    assert_eq!(guest.init().major, FUSE_KERNEL_VERSION);

    virtiofsd.kill();
    let deadline = Instant::now() + TIMEOUT;
    while guest.status() & NEEDS_RESET == 0 {
        assert!(Instant::now() < deadline, "no DEVICE_NEEDS_RESET");
        std::thread::sleep(Duration::from_millis(1));
    }
    guest.driver.wait_and_ack_interrupt(INT_CONFIG, TIMEOUT);
    assert_eq!(guest.driver.read(CONFIG_GENERATION), 1);
    assert!(guest.driver.device().backend_gone());

    // A request now goes nowhere, but notifying and resetting return at once.
    let started = Instant::now();
    guest.request.add_chain(
        &guest.driver.mem,
        &[(IN_BUF, 40, false), (OUT_BUF, 16, true)],
    );
    guest.driver.notify(REQUEST);
    guest.driver.write(STATUS, 0);
    assert_eq!(guest.status(), 0);
    // The driver tries again: activation fails, and says so.
    guest.hiprio = DriverQueue::new(0x1_0000, QUEUE_SIZE);
    guest.request = DriverQueue::new(0x1_4000, QUEUE_SIZE);
    let status = guest.probe();
    assert_ne!(status & NEEDS_RESET, 0, "{status:#x}");
    assert!(!guest.driver.device().is_active());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn virtiofsd_dying_before_the_driver_comes_fails_activation() {
    let mut virtiofsd = VirtiofsdProcess::start();
    let mut guest = FsGuest::connect(&virtiofsd.socket()).unwrap();
    virtiofsd.kill();
    let status = guest.probe();
    assert_ne!(status & NEEDS_RESET, 0, "{status:#x}");
    assert!(!guest.driver.device().is_active());
    assert!(guest.driver.device().backend_gone());
}

#[test]
fn connecting_needs_virtiofsd_and_shared_memory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.sock");
    let memory = create_guest_memory(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let config = |socket: &Path| FsConfig {
        socket: socket.to_owned(),
        tag: TAG.into(),
        queue_size: QUEUE_SIZE,
    };
    let err = FsDevice::connect(&config(&missing), &memory)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("virtiofsd"),
        "{err}"
    );

    let mut virtiofsd = VirtiofsdProcess::start();
    let anonymous = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let err = FsDevice::connect(&config(&virtiofsd.socket()), &anonymous)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not backed by a file"), "{err}");
    // The refused session ended: virtiofsd exits as it does after any frontend.
    virtiofsd.wait_exit(TIMEOUT);

    let err = FsDevice::connect(
        &FsConfig {
            tag: String::new(),
            ..config(&missing)
        },
        &memory,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tag"), "{err}");
}

#[test]
fn fuse_requests_that_change_the_tree_reach_the_share() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let virtiofsd = VirtiofsdProcess::start();
    let share = virtiofsd.share();
    let mut guest = FsGuest::mount(&virtiofsd.socket()).unwrap();

    let dir = guest.mkdir(FUSE_ROOT_ID, b"dir", 0o750).unwrap();
    assert_eq!(dir.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    let (file, open) = guest
        .create(dir.nodeid, b"file", libc::O_WRONLY as u32, 0o640)
        .unwrap();
    assert_eq!(guest.write(file.nodeid, open.fh, 0, b"written").unwrap(), 7);
    guest.release(file.nodeid, open.fh).unwrap();
    assert_eq!(std::fs::read(share.join("dir/file")).unwrap(), b"written");

    guest
        .mknod(dir.nodeid, b"fifo", libc::S_IFIFO | 0o600, 0)
        .unwrap();
    assert!(std::fs::metadata(share.join("dir/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    guest.symlink(FUSE_ROOT_ID, b"link", b"dir/file").unwrap();
    assert_eq!(
        std::fs::read_link(share.join("link")).unwrap(),
        Path::new("dir/file")
    );
    let hard = guest.link(file.nodeid, FUSE_ROOT_ID, b"hard").unwrap();
    assert_eq!(hard.attr.nlink, 2);
    assert_eq!(std::fs::metadata(share.join("hard")).unwrap().nlink(), 2);

    guest
        .rename(dir.nodeid, b"file", FUSE_ROOT_ID, b"moved")
        .unwrap();
    assert_eq!(std::fs::read(share.join("moved")).unwrap(), b"written");
    guest
        .rename2(
            FUSE_ROOT_ID,
            b"moved",
            FUSE_ROOT_ID,
            b"link",
            libc::RENAME_EXCHANGE,
        )
        .unwrap();
    assert_eq!(std::fs::read(share.join("link")).unwrap(), b"written");
    assert!(std::fs::symlink_metadata(share.join("moved"))
        .unwrap()
        .is_symlink());
    assert_eq!(
        guest.rename2(
            FUSE_ROOT_ID,
            b"hard",
            FUSE_ROOT_ID,
            b"link",
            libc::RENAME_NOREPLACE
        ),
        Err(-libc::EEXIST)
    );

    assert_eq!(guest.rmdir(FUSE_ROOT_ID, b"dir"), Err(-libc::ENOTEMPTY));
    guest.unlink(dir.nodeid, b"fifo").unwrap();
    guest.rmdir(FUSE_ROOT_ID, b"dir").unwrap();
    for name in [&b"moved"[..], b"link", b"hard"] {
        guest.unlink(FUSE_ROOT_ID, name).unwrap();
    }
    assert_eq!(std::fs::read_dir(&share).unwrap().count(), 0);
    assert_eq!(
        guest.lookup(FUSE_ROOT_ID, b"dir").unwrap_err(),
        -libc::ENOENT
    );
}
