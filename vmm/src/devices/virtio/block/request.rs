//! One virtio-blk request: a 16-byte header (type, reserved, sector) in device-readable
//! descriptors, data descriptors, and a final device-writable status byte (virtio 1.x, 5.2.6).
//!
//! Nothing in a chain is trusted. The status is the last byte of the last descriptor, which
//! must be device-writable; without it the chain cannot be answered and is returned with
//! nothing written. Any other defect is answered with `VIRTIO_BLK_S_IOERR` (or `UNSUPP` for an
//! unknown request type).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// The unit of `sector` and of the capacity.
pub const SECTOR_SIZE: u64 = 512;
const HEADER_SIZE: usize = 16;
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Disk I/O goes through a bounce buffer of at most this size.
const CHUNK: usize = 64 * 1024;

/// The image file behind a block device.
#[derive(Debug)]
pub struct Disk {
    file: File,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Opens `path` (read-only if asked). The capacity is its size in whole sectors; the id
    /// the first 20 bytes of its file name.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let capacity = file.metadata()?.len() / SECTOR_SIZE;
        let mut id = [0u8; ID_BYTES];
        let name = path.file_name().unwrap_or_default().as_encoded_bytes();
        let len = name.len().min(ID_BYTES);
        id[..len].copy_from_slice(&name[..len]);
        Ok(Disk {
            file,
            capacity,
            read_only,
            id,
        })
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

/// A guest buffer: `len` bytes at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// A chain split into its parts.
#[derive(Debug)]
struct Request {
    kind: u32,
    sector: u64,
    /// Device-readable bytes after the header.
    readable: Vec<Segment>,
    /// Device-writable bytes before the status byte.
    writable: Vec<Segment>,
}

/// Handles one descriptor chain; returns the number of bytes written to the guest (for the
/// used ring), status byte included.
pub fn handle_chain<M: GuestMemory>(
    mem: &M,
    disk: &Disk,
    descriptors: impl Iterator<Item = Descriptor>,
) -> u32 {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut misordered = false;
    for desc in descriptors {
        let segment = Segment {
            addr: desc.addr(),
            len: u64::from(desc.len()),
        };
        if desc.is_write_only() {
            writable.push(segment);
        } else if writable.is_empty() {
            readable.push(segment);
        } else {
            misordered = true;
        }
    }
    // The status byte is the last byte of the last descriptor, which must be writable.
    let Some(last) = writable.pop() else {
        return 0;
    };
    let Some(status_addr) = last
        .len
        .checked_sub(1)
        .and_then(|offset| last.addr.0.checked_add(offset))
    else {
        return 0;
    };
    if last.len > 1 {
        writable.push(Segment {
            addr: last.addr,
            len: last.len - 1,
        });
    }
    let (status, written) = if misordered {
        (VIRTIO_BLK_S_IOERR, 0)
    } else {
        match parse(mem, readable, writable) {
            Some(request) => execute(mem, disk, &request),
            None => (VIRTIO_BLK_S_IOERR, 0),
        }
    };
    // Status values are all below 256.
    match mem.write_obj(status as u8, GuestAddress(status_addr)) {
        Ok(()) => written + 1,
        Err(_) => written,
    }
}

/// Reads the header off the front of the readable segments.
fn parse<M: GuestMemory>(
    mem: &M,
    readable: Vec<Segment>,
    writable: Vec<Segment>,
) -> Option<Request> {
    let mut header = [0u8; HEADER_SIZE];
    let mut filled = 0;
    let mut rest = Vec::new();
    for segment in readable {
        if filled < HEADER_SIZE {
            let take = (HEADER_SIZE - filled).min(segment.len as usize);
            mem.read_slice(&mut header[filled..filled + take], segment.addr)
                .ok()?;
            filled += take;
            if segment.len > take as u64 {
                rest.push(Segment {
                    addr: segment.addr.checked_add(take as u64)?,
                    len: segment.len - take as u64,
                });
            }
        } else {
            rest.push(segment);
        }
    }
    if filled < HEADER_SIZE {
        return None;
    }
    Some(Request {
        kind: u32::from_le_bytes(header[0..4].try_into().ok()?),
        sector: u64::from_le_bytes(header[8..16].try_into().ok()?),
        readable: rest,
        writable,
    })
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len).sum()
}

/// Whether every segment lies in guest memory.
fn in_memory<M: GuestMemory>(mem: &M, segments: &[Segment], access: Permissions) -> bool {
    segments
        .iter()
        .all(|s| usize::try_from(s.len).is_ok_and(|len| mem.check_range(s.addr, len, access)))
}

/// The byte offset of `len` bytes at `sector`, if they are whole sectors within the disk.
fn disk_offset(disk: &Disk, sector: u64, len: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let end = sector.checked_add(len / SECTOR_SIZE)?;
    (end <= disk.capacity).then(|| sector * SECTOR_SIZE)
}

/// Runs a request: its status and the data bytes written to the guest.
fn execute<M: GuestMemory>(mem: &M, disk: &Disk, request: &Request) -> (u32, u32) {
    match request.kind {
        VIRTIO_BLK_T_IN => {
            if !request.readable.is_empty()
                || !in_memory(mem, &request.writable, Permissions::Write)
            {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let Some(offset) = disk_offset(disk, request.sector, total(&request.writable)) else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            read_disk(mem, disk, offset, &request.writable)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only
                || !request.writable.is_empty()
                || !in_memory(mem, &request.readable, Permissions::Read)
            {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let Some(offset) = disk_offset(disk, request.sector, total(&request.readable)) else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            (write_disk(mem, disk, offset, &request.readable), 0)
        }
        VIRTIO_BLK_T_FLUSH => {
            if disk.read_only {
                return (VIRTIO_BLK_S_OK, 0);
            }
            match disk.file.sync_data() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            }
        }
        VIRTIO_BLK_T_GET_ID => {
            if !request.readable.is_empty() || request.writable.is_empty() {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let mut id = &disk.id[..];
            let mut written = 0;
            for segment in &request.writable {
                let take = id.len().min(segment.len as usize);
                if mem.write_slice(&id[..take], segment.addr).is_err() {
                    return (VIRTIO_BLK_S_IOERR, written);
                }
                written += take as u32;
                id = &id[take..];
            }
            (VIRTIO_BLK_S_OK, written)
        }
        _ => (VIRTIO_BLK_S_UNSUPP, 0),
    }
}

/// Reads the disk from `offset` into the segments, in order.
fn read_disk<M: GuestMemory>(
    mem: &M,
    disk: &Disk,
    mut offset: u64,
    segments: &[Segment],
) -> (u32, u32) {
    let mut buf = vec![0u8; CHUNK];
    let mut written: u32 = 0;
    for segment in segments {
        let mut done = 0;
        while done < segment.len {
            let len = (segment.len - done).min(CHUNK as u64) as usize;
            let ok = disk.file.read_exact_at(&mut buf[..len], offset).is_ok()
                && mem
                    .write_slice(&buf[..len], segment.addr.unchecked_add(done))
                    .is_ok();
            if !ok {
                return (VIRTIO_BLK_S_IOERR, written);
            }
            done += len as u64;
            offset += len as u64;
            written = written.saturating_add(len as u32);
        }
    }
    (VIRTIO_BLK_S_OK, written)
}

/// Writes the segments, in order, to the disk from `offset`.
fn write_disk<M: GuestMemory>(mem: &M, disk: &Disk, mut offset: u64, segments: &[Segment]) -> u32 {
    let mut buf = vec![0u8; CHUNK];
    for segment in segments {
        let mut done = 0;
        while done < segment.len {
            let len = (segment.len - done).min(CHUNK as u64) as usize;
            let ok = mem
                .read_slice(&mut buf[..len], segment.addr.unchecked_add(done))
                .is_ok()
                && disk.file.write_all_at(&buf[..len], offset).is_ok();
            if !ok {
                return VIRTIO_BLK_S_IOERR;
            }
            done += len as u64;
            offset += len as u64;
        }
    }
    VIRTIO_BLK_S_OK
}
