//! A guest's virtiofs driver for tests: the [`FsDevice`] behind virtio-mmio on guest RAM in
//! a memfd (as the VMM makes it, so virtiofsd maps it), the VMM's event loop relaying
//! virtiofsd's interrupts, and FUSE requests on the request queue. Names are sent as given,
//! NUL-terminated and otherwise untouched: a hostile guest kernel sends what it likes.

use std::mem::size_of;
use std::path::Path;
use std::time::Duration;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::fuse::*;
use super::{Desc, DriverQueue, MmioDriver, ACKNOWLEDGE, DRIVER, FEATURES_OK, INT_VRING, STATUS};
use crate::devices::virtio::fs::{FsConfig, FsDevice, FsError};
use crate::event_loop::{EventLoop, EventLoopHandle};
use crate::vstate::memory::create_guest_memory;

/// The tag the device is given; the driver does not use it.
pub const TAG: &str = "hullfs";
pub const QUEUE_SIZE: u16 = 64;
pub const MEM_SIZE: usize = 2 << 20;
pub const HIPRIO: u32 = 0;
pub const REQUEST: u32 = 1;
/// Where the rings go first; a driver that resets the device may put fresh ones elsewhere
/// below [`IN_BUF`].
const HIPRIO_RING: u64 = 0x1000;
const REQUEST_RING: u64 = 0x4000;
/// Request and reply buffers.
pub const IN_BUF: u64 = 0x2_0000;
pub const OUT_BUF: u64 = 0x3_0000;
const OUT_LEN: u32 = 0x1000;
/// How long virtiofsd may take to answer before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A FUSE reply's outcome: its body, or the (negative) errno in its header.
pub type FuseResult<T> = Result<T, i32>;

/// A guest driver for the device, with the VMM's event loop running for it. Dropping it
/// closes the vhost-user session, which ends virtiofsd.
pub struct FsGuest {
    pub driver: MmioDriver<FsDevice>,
    pub hiprio: DriverQueue,
    pub request: DriverQueue,
    _event_loop: EventLoopHandle,
    next_unique: u64,
    /// The uid and gid the requests are sent for (`fuse_in_header`).
    caller: (u32, u32),
}

impl FsGuest {
    /// Connects the device to virtiofsd at `socket`; the driver has not probed it yet.
    pub fn connect(socket: &Path) -> Result<Self, FsError> {
        let mem = create_guest_memory(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        let config = FsConfig {
            socket: socket.to_owned(),
            tag: TAG.into(),
            queue_size: QUEUE_SIZE,
        };
        let device = FsDevice::connect(&config, &mem)?;
        let driver = MmioDriver::with_memory(mem, device);
        let mut event_loop = EventLoop::new().expect("an epoll instance");
        event_loop
            .add(driver.device.clone())
            .expect("watching the device's events");
        Ok(FsGuest {
            driver,
            hiprio: DriverQueue::new(HIPRIO_RING, QUEUE_SIZE),
            request: DriverQueue::new(REQUEST_RING, QUEUE_SIZE),
            _event_loop: event_loop.spawn(None).expect("the event loop's thread"),
            next_unique: 1,
            caller: (0, 0),
        })
    }

    /// Connects, probes and sends FUSE_INIT: a session ready for requests.
    pub fn mount(socket: &Path) -> Result<Self, FsError> {
        let mut guest = Self::connect(socket)?;
        let status = guest.probe();
        assert_eq!(
            status, 0xf,
            "the device did not get ready: status {status:#x}"
        );
        let init = guest.init();
        assert_eq!(init.major, FUSE_KERNEL_VERSION, "{init:?}");
        Ok(guest)
    }

    /// Negotiates every feature offered but EVENT_IDX (so every used buffer interrupts, as
    /// the driver's rings do not publish `used_event`), sets up both queues and DRIVER_OK;
    /// returns the status read back.
    pub fn probe(&mut self) -> u32 {
        let features = self.driver.device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(
            self.driver.negotiate(features),
            ACKNOWLEDGE | DRIVER | FEATURES_OK
        );
        self.driver.setup_queue(HIPRIO, &self.hiprio);
        self.driver.setup_queue(REQUEST, &self.request);
        self.driver.driver_ok()
    }

    /// The uid and gid of the caller in the requests that follow.
    pub fn set_caller(&mut self, uid: u32, gid: u32) {
        self.caller = (uid, gid);
    }

    /// Sends one FUSE request (`body` after the header) on the request queue and returns the
    /// reply header and the bytes after it.
    pub fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (FuseOutHeader, Vec<u8>) {
        const HEADER: u32 = size_of::<FuseInHeader>() as u32;
        const OUT_HEADER: u32 = size_of::<FuseOutHeader>() as u32;
        assert!(
            body.len() as u64 <= OUT_BUF - IN_BUF - u64::from(HEADER),
            "a request body of {} bytes does not fit",
            body.len()
        );
        let unique = self.next_unique;
        self.next_unique += 1;
        let header = FuseInHeader {
            len: HEADER + body.len() as u32,
            opcode,
            unique,
            nodeid,
            uid: self.caller.0,
            gid: self.caller.1,
            ..Default::default()
        };
        self.mem().write_obj(header, GuestAddress(IN_BUF)).unwrap();
        let body_at = IN_BUF + u64::from(HEADER);
        self.mem().write_slice(body, GuestAddress(body_at)).unwrap();
        self.mem()
            .write_slice(&[0xee; OUT_LEN as usize], GuestAddress(OUT_BUF))
            .unwrap();
        // Device-readable header and body, then the reply split over two writable buffers.
        let mut chain: Vec<Desc> = vec![(IN_BUF, HEADER, false)];
        if !body.is_empty() {
            chain.push((body_at, body.len() as u32, false));
        }
        chain.push((OUT_BUF, OUT_HEADER, true));
        chain.push((OUT_BUF + u64::from(OUT_HEADER), OUT_LEN - OUT_HEADER, true));
        let head = self.request.add_chain(&self.driver.mem, &chain);
        self.driver.notify(REQUEST);
        let (id, written) = self.request.wait_used(&self.driver.mem, TIMEOUT);
        assert_eq!(id, head);
        self.driver.wait_and_ack_interrupt(INT_VRING, TIMEOUT);
        let out: FuseOutHeader = self.mem().read_obj(GuestAddress(OUT_BUF)).unwrap();
        assert_eq!(out.unique, unique);
        assert_eq!(out.len, written, "the used length is the reply's");
        let mut rest = vec![0u8; (written - OUT_HEADER) as usize];
        self.mem()
            .read_slice(&mut rest, GuestAddress(OUT_BUF + u64::from(OUT_HEADER)))
            .unwrap();
        (out, rest)
    }

    /// A request whose reply is `T` (or nothing, with `T = ()`), or an errno.
    fn call<T: Reply>(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> FuseResult<T> {
        let (out, reply) = self.request(opcode, nodeid, body);
        if out.error != 0 {
            assert!(reply.is_empty(), "an error reply with a body");
            return Err(out.error);
        }
        Ok(T::parse(&reply))
    }

    pub fn init(&mut self) -> FuseInitOut {
        let init = FuseInitIn {
            major: FUSE_KERNEL_VERSION,
            minor: FUSE_KERNEL_MINOR_VERSION,
            max_readahead: 128 * 1024,
            flags: 0,
        };
        self.call(FUSE_INIT, 0, init.as_slice())
            .expect("FUSE_INIT failed")
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> FuseResult<FuseEntryOut> {
        self.call(FUSE_LOOKUP, parent, &with_nul(name))
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32) -> FuseResult<FuseEntryOut> {
        let args = FuseMkdirIn { mode, umask: 0 };
        self.call(
            FUSE_MKDIR,
            parent,
            &[args.as_slice(), &with_nul(name)].concat(),
        )
    }

    pub fn mknod(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FuseResult<FuseEntryOut> {
        let args = FuseMknodIn {
            mode,
            rdev,
            ..Default::default()
        };
        self.call(
            FUSE_MKNOD,
            parent,
            &[args.as_slice(), &with_nul(name)].concat(),
        )
    }

    /// Creates and opens a file (`flags` as open(2)'s); its handle is in the reply.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        flags: u32,
        mode: u32,
    ) -> FuseResult<(FuseEntryOut, FuseOpenOut)> {
        let args = FuseCreateIn {
            flags,
            mode,
            ..Default::default()
        };
        self.call(
            FUSE_CREATE,
            parent,
            &[args.as_slice(), &with_nul(name)].concat(),
        )
    }

    /// Writes `data` at `offset` through the handle `fh` of `nodeid`; returns the count.
    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> FuseResult<u32> {
        let args = FuseWriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let written: FuseWriteOut =
            self.call(FUSE_WRITE, nodeid, &[args.as_slice(), data].concat())?;
        Ok(written.size)
    }

    pub fn release(&mut self, nodeid: u64, fh: u64) -> FuseResult<()> {
        let args = FuseReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(FUSE_RELEASE, nodeid, args.as_slice())
    }

    /// A symlink `name` in `parent` whose target is `target`.
    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8]) -> FuseResult<FuseEntryOut> {
        self.call(
            FUSE_SYMLINK,
            parent,
            &[with_nul(name), with_nul(target)].concat(),
        )
    }

    /// A hard link `newname` in `newparent` to `nodeid`.
    pub fn link(
        &mut self,
        nodeid: u64,
        newparent: u64,
        newname: &[u8],
    ) -> FuseResult<FuseEntryOut> {
        let args = FuseLinkIn { oldnodeid: nodeid };
        self.call(
            FUSE_LINK,
            newparent,
            &[args.as_slice(), &with_nul(newname)].concat(),
        )
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> FuseResult<()> {
        self.call(FUSE_UNLINK, parent, &with_nul(name))
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> FuseResult<()> {
        self.call(FUSE_RMDIR, parent, &with_nul(name))
    }

    pub fn rename(
        &mut self,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
    ) -> FuseResult<()> {
        let args = FuseRenameIn { newdir };
        let names = [with_nul(oldname), with_nul(newname)].concat();
        self.call(FUSE_RENAME, olddir, &[args.as_slice(), &names].concat())
    }

    /// RENAME2, `flags` as renameat2(2)'s (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    pub fn rename2(
        &mut self,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
        flags: u32,
    ) -> FuseResult<()> {
        let args = FuseRename2In {
            newdir,
            flags,
            padding: 0,
        };
        let names = [with_nul(oldname), with_nul(newname)].concat();
        self.call(FUSE_RENAME2, olddir, &[args.as_slice(), &names].concat())
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.driver.mem
    }

    pub fn status(&mut self) -> u32 {
        self.driver.read(STATUS)
    }
}

/// A name as FUSE carries it: its bytes, then a NUL.
fn with_nul(name: &[u8]) -> Vec<u8> {
    let mut bytes = name.to_vec();
    bytes.push(0);
    bytes
}

/// What a successful reply carries.
trait Reply: Sized {
    fn parse(body: &[u8]) -> Self;
}

impl Reply for () {
    fn parse(body: &[u8]) -> Self {
        assert!(
            body.is_empty(),
            "{} unexpected bytes in the reply",
            body.len()
        );
    }
}

/// Replies that are one struct.
macro_rules! struct_reply {
    ($($t:ty),*) => {
        $(impl Reply for $t {
            fn parse(body: &[u8]) -> Self {
                read_reply(body, 0)
            }
        })*
    };
}
struct_reply!(FuseInitOut, FuseEntryOut, FuseWriteOut);

impl Reply for (FuseEntryOut, FuseOpenOut) {
    fn parse(body: &[u8]) -> Self {
        (
            read_reply(body, 0),
            read_reply(body, size_of::<FuseEntryOut>()),
        )
    }
}

/// The `T` at `offset` in a reply, which must hold all of it.
fn read_reply<T: ByteValued + Default>(body: &[u8], offset: usize) -> T {
    let end = offset + size_of::<T>();
    assert!(
        body.len() >= end,
        "a reply of {} bytes has no whole {} at {offset}",
        body.len(),
        std::any::type_name::<T>()
    );
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(&body[offset..end]);
    value
}
