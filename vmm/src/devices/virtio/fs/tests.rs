//! The virtio-fs device against a real virtiofsd (/usr/local/bin/virtiofsd, installed by
//! scripts/install-deps.sh): guest RAM in a memfd as the VMM makes it, the device driven
//! through the virtio-mmio registers as a guest driver would, the VMM's own event loop
//! relaying virtiofsd's interrupts, and FUSE requests on the request queue.

use std::path::Path;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::test_support::{
    Desc, DriverQueue, MmioDriver, ACKNOWLEDGE, CONFIG, CONFIG_GENERATION, DEVICE_ID, DRIVER,
    FEATURES_OK, INT_CONFIG, INT_VRING, NEEDS_RESET, QUEUE_NUM_MAX, QUEUE_SEL, STATUS,
};
use crate::event_loop::{EventLoop, EventLoopHandle};
use crate::vstate::memory::create_guest_memory;

// Shared with the tests that run hull-vmm with a guest (vmm/tests/).
#[path = "../../../../tests/common/virtiofsd.rs"]
mod virtiofsd;
use virtiofsd::VirtiofsdProcess;

const TAG: &str = "hullfs";
const QUEUE_SIZE: u16 = 64;
const MEM_SIZE: usize = 2 << 20;
const HIPRIO: u32 = 0;
const REQUEST: u32 = 1;
/// Request and reply buffers.
const IN_BUF: u64 = 0x2_0000;
const OUT_BUF: u64 = 0x3_0000;
const OUT_LEN: u32 = 0x1000;
/// How long virtiofsd may take to answer before the test fails.
const TIMEOUT: Duration = Duration::from_secs(10);

// The FUSE protocol's structures (include/uapi/linux/fuse.h), as far as these tests need
// them. All fields are little-endian on x86_64, as is the guest.
const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;
const FUSE_ROOT_ID: u64 = 1;
const FUSE_KERNEL_VERSION: u32 = 7;
const FUSE_MINOR: u32 = 31;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FuseInHeader {
    len: u32,
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    pid: u32,
    total_extlen: u16,
    padding: u16,
}

/// `fuse_init_in` up to 7.35 (without the `flags2` extension).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FuseInitIn {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FuseOutHeader {
    len: u32,
    error: i32,
    unique: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FuseInitOut {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
    max_background: u16,
    congestion_threshold: u16,
    max_write: u32,
    time_gran: u32,
    max_pages: u16,
    map_alignment: u16,
    flags2: u32,
    max_stack_depth: u32,
    unused: [u32; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FuseAttr {
    ino: u64,
    size: u64,
    blocks: u64,
    atime: u64,
    mtime: u64,
    ctime: u64,
    atimensec: u32,
    mtimensec: u32,
    ctimensec: u32,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    blksize: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FuseEntryOut {
    nodeid: u64,
    generation: u64,
    entry_valid: u64,
    attr_valid: u64,
    entry_valid_nsec: u32,
    attr_valid_nsec: u32,
    attr: FuseAttr,
}

// SAFETY: plain repr(C) structs of integers without padding (the sizes below prove it), so
// every byte pattern is a valid value.
unsafe impl ByteValued for FuseInHeader {}
// SAFETY: as above.
unsafe impl ByteValued for FuseInitIn {}
// SAFETY: as above.
unsafe impl ByteValued for FuseOutHeader {}
// SAFETY: as above.
unsafe impl ByteValued for FuseInitOut {}
// SAFETY: as above.
unsafe impl ByteValued for FuseEntryOut {}

const _: () = {
    assert!(std::mem::size_of::<FuseInHeader>() == 40);
    assert!(std::mem::size_of::<FuseInitIn>() == 16);
    assert!(std::mem::size_of::<FuseOutHeader>() == 16);
    assert!(std::mem::size_of::<FuseInitOut>() == 64);
    assert!(std::mem::size_of::<FuseAttr>() == 88);
    assert!(std::mem::size_of::<FuseEntryOut>() == 128);
};

/// A guest driver for the device, with the VMM's event loop running for it.
struct FsGuest {
    driver: MmioDriver<FsDevice>,
    hiprio: DriverQueue,
    request: DriverQueue,
    _event_loop: EventLoopHandle,
    next_unique: u64,
}

impl FsGuest {
    fn connect(socket: &Path) -> Self {
        let mem = create_guest_memory(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let config = FsConfig {
            socket: socket.to_owned(),
            tag: TAG.into(),
            queue_size: QUEUE_SIZE,
        };
        let device = FsDevice::connect(&config, &mem).unwrap();
        let driver = MmioDriver::with_memory(mem, device);
        let mut event_loop = EventLoop::new().unwrap();
        event_loop.add(driver.device.clone()).unwrap();
        FsGuest {
            driver,
            hiprio: DriverQueue::new(0x1000, QUEUE_SIZE),
            request: DriverQueue::new(0x4000, QUEUE_SIZE),
            _event_loop: event_loop.spawn(None).unwrap(),
            next_unique: 1,
        }
    }

    /// Negotiates every feature offered but EVENT_IDX (so every used buffer interrupts, as
    /// the test's rings do not publish `used_event`), sets up both queues and DRIVER_OK.
    fn probe(&mut self) -> u32 {
        let features = self.driver.device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(
            self.driver.negotiate(features),
            ACKNOWLEDGE | DRIVER | FEATURES_OK
        );
        self.driver.setup_queue(HIPRIO, &self.hiprio);
        self.driver.setup_queue(REQUEST, &self.request);
        self.driver.driver_ok()
    }

    /// Sends one FUSE request (`body` after the header) on the request queue and returns the
    /// reply header and the bytes after it.
    fn fuse(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (FuseOutHeader, Vec<u8>) {
        let unique = self.next_unique;
        self.next_unique += 1;
        let header = FuseInHeader {
            len: (40 + body.len()) as u32,
            opcode,
            unique,
            nodeid,
            ..Default::default()
        };
        self.mem().write_obj(header, GuestAddress(IN_BUF)).unwrap();
        self.mem()
            .write_slice(body, GuestAddress(IN_BUF + 40))
            .unwrap();
        self.mem()
            .write_slice(&[0xee; OUT_LEN as usize], GuestAddress(OUT_BUF))
            .unwrap();
        // Device-readable header and body, then the reply split over two writable buffers.
        let chain: [Desc; 4] = [
            (IN_BUF, 40, false),
            (IN_BUF + 40, body.len() as u32, false),
            (OUT_BUF, 16, true),
            (OUT_BUF + 16, OUT_LEN - 16, true),
        ];
        let head = self.request.add_chain(&self.driver.mem, &chain);
        self.driver.notify(REQUEST);
        let (id, written) = self.request.wait_used(&self.driver.mem, TIMEOUT);
        assert_eq!(id, head);
        self.driver.wait_and_ack_interrupt(INT_VRING, TIMEOUT);
        let out: FuseOutHeader = self.mem().read_obj(GuestAddress(OUT_BUF)).unwrap();
        assert_eq!(out.unique, unique);
        assert_eq!(out.len, written, "the used length is the reply's");
        let mut rest = vec![0u8; written as usize - 16];
        self.mem()
            .read_slice(&mut rest, GuestAddress(OUT_BUF + 16))
            .unwrap();
        (out, rest)
    }

    fn init(&mut self) -> FuseInitOut {
        let init = FuseInitIn {
            major: FUSE_KERNEL_VERSION,
            minor: FUSE_MINOR,
            max_readahead: 128 * 1024,
            flags: 0,
        };
        let (out, body) = self.fuse(FUSE_INIT, 0, init.as_slice());
        assert_eq!(out.error, 0, "FUSE_INIT failed");
        *FuseInitOut::from_slice(&body[..64]).expect("a whole fuse_init_out")
    }

    fn lookup(&mut self, name: &str) -> Result<FuseEntryOut, i32> {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        let (out, reply) = self.fuse(FUSE_LOOKUP, FUSE_ROOT_ID, &body);
        if out.error != 0 {
            assert_eq!(reply.len(), 0);
            return Err(out.error);
        }
        Ok(*FuseEntryOut::from_slice(&reply[..128]).expect("a whole fuse_entry_out"))
    }

    fn mem(&self) -> &GuestMemoryMmap {
        &self.driver.mem
    }

    fn status(&mut self) -> u32 {
        self.driver.read(STATUS)
    }
}

#[test]
fn fuse_init_and_lookup_through_virtiofsd() {
    let mut virtiofsd = VirtiofsdProcess::start();
    std::fs::write(virtiofsd.share().join("hello.txt"), vec![b'h'; 1234]).unwrap();
    let mut guest = FsGuest::connect(&virtiofsd.socket());

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
    assert!(init.minor >= FUSE_MINOR, "{init:?}");
    assert!(init.max_write > 0, "{init:?}");

    let entry = guest.lookup("hello.txt").unwrap();
    assert_eq!(entry.attr.size, 1234);
    assert_ne!(entry.nodeid, 0);
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(guest.lookup("missing.txt").unwrap_err(), -libc::ENOENT);

    // The driver resets the device (rings stopped in virtiofsd) and sets it up again on
    // fresh rings; the FUSE session lives on in virtiofsd.
    guest.driver.write(STATUS, 0);
    assert!(!guest.driver.device().is_active());
    guest.hiprio = DriverQueue::new(0x1_0000, QUEUE_SIZE);
    guest.request = DriverQueue::new(0x1_4000, QUEUE_SIZE);
    assert_eq!(guest.probe(), 0xf);
    std::fs::write(virtiofsd.share().join("later.txt"), b"1234567").unwrap();
    assert_eq!(guest.lookup("later.txt").unwrap().attr.size, 7);

    // Dropping the device ends the session, and virtiofsd with it: a VMM leaves none behind.
    drop(guest);
    let status = virtiofsd.wait_exit(TIMEOUT);
    assert!(status.success(), "{status}: {}", virtiofsd.log());
}

#[test]
fn virtiofsd_dying_sets_needs_reset_without_hanging() {
    let mut virtiofsd = VirtiofsdProcess::start();
    let mut guest = FsGuest::connect(&virtiofsd.socket());
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
    let mut guest = FsGuest::connect(&virtiofsd.socket());
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
