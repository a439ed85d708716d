//! virtio-vsock packets: the 44-byte header and its transfer through descriptor chains.
//!
//! A driver may put the header and the data in one descriptor (recent Linux) or spread them over
//! any number of descriptors, so chains are handled as scatter-gather lists of guest memory
//! segments. Everything a guest controls is validated here, before the muxer sees it.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions};

use virtio_queue::desc::split::Descriptor;

/// Size of the packet header on the wire.
pub const HEADER_SIZE: usize = 44;

/// Largest data payload accepted in one packet (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PACKET_DATA: usize = 64 * 1024;

/// The only socket type virtio-vsock defines for connections.
pub const TYPE_STREAM: u16 = 1;

/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection refused or torn down.
pub const OP_RST: u16 = 3;
/// Half or full close, see `SHUTDOWN_*` flags.
pub const OP_SHUTDOWN: u16 = 4;
/// Stream data.
pub const OP_RW: u16 = 5;
/// Unsolicited credit information.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Ask the peer for a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// The sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// The sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Errors from reading or writing packets in guest memory.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("Descriptor chain holds {0} bytes, fewer than the 44-byte packet header")]
    ChainTooShort(usize),
    #[error("Device-writable descriptor in a TX chain")]
    WriteOnlyTxDescriptor,
    #[error("Device-readable descriptor in an RX chain")]
    ReadOnlyRxDescriptor,
    #[error("Descriptor at {addr:#x} of {len} bytes lies outside guest memory")]
    BadAddress {
        /// Guest physical address of the descriptor buffer.
        addr: u64,
        /// Length of the descriptor buffer.
        len: u32,
    },
    #[error("Packet announces {len} data bytes but its chain holds {available}")]
    DataBeyondChain {
        /// `len` from the header.
        len: u32,
        /// Bytes the chain holds after the header.
        available: usize,
    },
    #[error("Packet announces {0} data bytes, more than the 64 KiB maximum")]
    DataTooLarge(u32),
    #[error("Packet of {len} data bytes does not fit an RX chain with room for {capacity}")]
    RxChainTooSmall {
        /// Bytes to write after the header.
        len: usize,
        /// Data capacity of the chain.
        capacity: usize,
    },
    #[error("Guest memory access failed")]
    Memory(#[from] GuestMemoryError),
}

/// The virtio-vsock packet header (all fields little-endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Number of data bytes following the header.
    pub len: u32,
    /// Socket type, `TYPE_STREAM`.
    pub type_: u16,
    /// Operation, one of `OP_*`.
    pub op: u16,
    /// Operation flags (`SHUTDOWN_*` for `OP_SHUTDOWN`).
    pub flags: u32,
    /// Receive buffer size of the sender.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far.
    pub fwd_cnt: u32,
}

impl PacketHeader {
    /// Decodes a header from its wire form.
    pub fn from_bytes(bytes: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
        PacketHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header into its wire form.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.type_.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }
}

/// One descriptor's buffer, already checked to lie inside guest memory.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// The validated buffers of a descriptor chain, in chain order.
#[derive(Debug)]
struct ScatterGather {
    segments: Vec<Segment>,
    total: usize,
}

impl ScatterGather {
    /// Collects the chain's buffers, requiring every descriptor to have the given direction.
    fn collect<M: GuestMemory>(
        mem: &M,
        descriptors: impl Iterator<Item = Descriptor>,
        device_writable: bool,
    ) -> Result<Self, PacketError> {
        let mut segments = Vec::new();
        let mut total = 0usize;
        for desc in descriptors {
            if desc.is_write_only() != device_writable {
                return Err(if device_writable {
                    PacketError::ReadOnlyRxDescriptor
                } else {
                    PacketError::WriteOnlyTxDescriptor
                });
            }
            let len = desc.len() as usize;
            let access = if device_writable {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !mem.check_range(desc.addr(), len, access) {
                return Err(PacketError::BadAddress {
                    addr: desc.addr().0,
                    len: desc.len(),
                });
            }
            if len > 0 {
                segments.push(Segment {
                    addr: desc.addr(),
                    len,
                });
                total += len;
            }
        }
        if total < HEADER_SIZE {
            return Err(PacketError::ChainTooShort(total));
        }
        Ok(ScatterGather { segments, total })
    }

    /// Calls `f(guest_address, range_in_buffer)` for each piece of `[offset, offset + len)`.
    fn for_each_piece(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), PacketError>,
    ) -> Result<(), PacketError> {
        let mut skip = offset;
        let mut done = 0;
        for seg in &self.segments {
            if done == len {
                break;
            }
            if skip >= seg.len {
                skip -= seg.len;
                continue;
            }
            let n = (seg.len - skip).min(len - done);
            // `collect` checked the whole segment, so this cannot overflow.
            f(seg.addr.unchecked_add(skip as u64), done..done + n)?;
            done += n;
            skip = 0;
        }
        debug_assert_eq!(
            done, len,
            "caller checked the range against the chain length"
        );
        Ok(())
    }

    fn read<M: GuestMemory>(
        &self,
        mem: &M,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), PacketError> {
        self.for_each_piece(offset, buf.len(), |addr, range| {
            mem.read_slice(&mut buf[range], addr)?;
            Ok(())
        })
    }

    fn write<M: GuestMemory>(&self, mem: &M, offset: usize, buf: &[u8]) -> Result<(), PacketError> {
        self.for_each_piece(offset, buf.len(), |addr, range| {
            mem.write_slice(&buf[range], addr)?;
            Ok(())
        })
    }
}

/// A TX chain (guest to device) whose header has been read.
#[derive(Debug)]
pub struct TxChain {
    header: PacketHeader,
    sg: ScatterGather,
}

impl TxChain {
    /// Validates a TX chain (all descriptors device-readable, inside guest memory, at least a
    /// header long) and reads its header.
    pub fn parse<M: GuestMemory>(
        mem: &M,
        descriptors: impl Iterator<Item = Descriptor>,
    ) -> Result<Self, PacketError> {
        let sg = ScatterGather::collect(mem, descriptors, false)?;
        let mut raw = [0u8; HEADER_SIZE];
        sg.read(mem, 0, &mut raw)?;
        Ok(TxChain {
            header: PacketHeader::from_bytes(&raw),
            sg,
        })
    }

    /// The packet header.
    pub fn header(&self) -> &PacketHeader {
        &self.header
    }

    /// Copies the `header.len` data bytes into `out` (replacing its contents).
    pub fn read_data<M: GuestMemory>(&self, mem: &M, out: &mut Vec<u8>) -> Result<(), PacketError> {
        let len = self.header.len;
        if len as usize > MAX_PACKET_DATA {
            return Err(PacketError::DataTooLarge(len));
        }
        let available = self.sg.total - HEADER_SIZE;
        if len as usize > available {
            return Err(PacketError::DataBeyondChain { len, available });
        }
        out.clear();
        out.resize(len as usize, 0);
        self.sg.read(mem, HEADER_SIZE, out)
    }
}

/// An RX chain (device to guest) ready to receive one packet.
#[derive(Debug)]
pub struct RxChain {
    sg: ScatterGather,
}

impl RxChain {
    /// Validates an RX chain: all descriptors device-writable, inside guest memory, room for at
    /// least a header.
    pub fn parse<M: GuestMemory>(
        mem: &M,
        descriptors: impl Iterator<Item = Descriptor>,
    ) -> Result<Self, PacketError> {
        Ok(RxChain {
            sg: ScatterGather::collect(mem, descriptors, true)?,
        })
    }

    /// Data bytes the chain can take after the header.
    pub fn data_capacity(&self) -> usize {
        self.sg.total - HEADER_SIZE
    }

    /// Writes `header` (with `len` set to `data.len()`) and `data`; returns the bytes written.
    pub fn write_packet<M: GuestMemory>(
        &self,
        mem: &M,
        header: &PacketHeader,
        data: &[u8],
    ) -> Result<u32, PacketError> {
        if data.len() > self.data_capacity() || data.len() > MAX_PACKET_DATA {
            return Err(PacketError::RxChainTooSmall {
                len: data.len(),
                capacity: self.data_capacity(),
            });
        }
        let header = PacketHeader {
            len: data.len() as u32,
            ..*header
        };
        self.sg.write(mem, 0, &header.to_bytes())?;
        self.sg.write(mem, HEADER_SIZE, data)?;
        Ok((HEADER_SIZE + data.len()) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, writable: bool) -> Descriptor {
        let flags = if writable {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        Descriptor::new(addr, len, flags, 0)
    }

    fn sample_header(len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 1024,
            len,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 0x40000,
            fwd_cnt: 77,
        }
    }

    #[test]
    fn header_wire_layout_is_little_endian_at_fixed_offsets() {
        let h = sample_header(9);
        let raw = h.to_bytes();
        assert_eq!(&raw[0..8], &3u64.to_le_bytes());
        assert_eq!(&raw[16..20], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&raw[24..28], &9u32.to_le_bytes());
        assert_eq!(&raw[28..30], &1u16.to_le_bytes());
        assert_eq!(&raw[30..32], &5u16.to_le_bytes());
        assert_eq!(&raw[40..44], &77u32.to_le_bytes());
        assert_eq!(PacketHeader::from_bytes(&raw), h);
    }

    #[test]
    fn tx_data_spread_over_segments_is_gathered_in_order() {
        let mem = memory();
        let data: Vec<u8> = (0..100u8).collect();
        let mut raw = sample_header(100).to_bytes().to_vec();
        raw.extend_from_slice(&data);
        // Split at odd places: inside the header, at its end, and inside the data.
        mem.write_slice(&raw[..10], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&raw[10..50], GuestAddress(0x2000)).unwrap();
        mem.write_slice(&raw[50..], GuestAddress(0x3000)).unwrap();
        let descs = [
            desc(0x1000, 10, false),
            desc(0x2000, 40, false),
            desc(0x3000, 94, false),
        ];
        let tx = TxChain::parse(&mem, descs.into_iter()).unwrap();
        assert_eq!(*tx.header(), sample_header(100));
        let mut out = Vec::new();
        tx.read_data(&mem, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn rx_packet_is_scattered_over_segments() {
        let mem = memory();
        let descs = [
            desc(0x1000, 20, true),
            desc(0x2000, 30, true),
            desc(0x3000, 100, true),
        ];
        let rx = RxChain::parse(&mem, descs.into_iter()).unwrap();
        assert_eq!(rx.data_capacity(), 150 - HEADER_SIZE);
        let data = b"scatter me please";
        let written = rx.write_packet(&mem, &sample_header(0), data).unwrap();
        assert_eq!(written as usize, HEADER_SIZE + data.len());
        let mut raw = vec![0u8; 20];
        mem.read_slice(&mut raw, GuestAddress(0x1000)).unwrap();
        let mut part = vec![0u8; 30];
        mem.read_slice(&mut part, GuestAddress(0x2000)).unwrap();
        raw.extend_from_slice(&part);
        let mut part = vec![0u8; written as usize - 50];
        mem.read_slice(&mut part, GuestAddress(0x3000)).unwrap();
        raw.extend_from_slice(&part);
        let header = PacketHeader::from_bytes(raw[..HEADER_SIZE].try_into().unwrap());
        assert_eq!(header.len as usize, data.len());
        assert_eq!(&raw[HEADER_SIZE..], data);
    }

    #[test]
    fn malformed_chains_are_rejected() {
        let mem = memory();
        mem.write_slice(&sample_header(10).to_bytes(), GuestAddress(0x1000))
            .unwrap();
        let short = TxChain::parse(&mem, [desc(0x1000, 43, false)].into_iter());
        assert!(matches!(short, Err(PacketError::ChainTooShort(43))));

        let wrong_dir = TxChain::parse(
            &mem,
            [desc(0x1000, 44, false), desc(0x2000, 10, true)].into_iter(),
        );
        assert!(matches!(wrong_dir, Err(PacketError::WriteOnlyTxDescriptor)));

        let rx_wrong_dir = RxChain::parse(&mem, [desc(0x1000, 64, false)].into_iter());
        assert!(matches!(
            rx_wrong_dir,
            Err(PacketError::ReadOnlyRxDescriptor)
        ));

        let outside = TxChain::parse(&mem, [desc(0xfff0, 44, false)].into_iter());
        assert!(matches!(outside, Err(PacketError::BadAddress { .. })));

        let wrapping = TxChain::parse(&mem, [desc(u64::MAX - 4, 44, false)].into_iter());
        assert!(matches!(wrapping, Err(PacketError::BadAddress { .. })));

        // The header claims 10 data bytes, the chain has only 4 after it.
        let tx = TxChain::parse(&mem, [desc(0x1000, 48, false)].into_iter()).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            tx.read_data(&mem, &mut out),
            Err(PacketError::DataBeyondChain {
                len: 10,
                available: 4
            })
        ));

        mem.write_slice(
            &sample_header(MAX_PACKET_DATA as u32 + 1).to_bytes(),
            GuestAddress(0x1000),
        )
        .unwrap();
        let tx = TxChain::parse(&mem, [desc(0x1000, 0x8000, false)].into_iter()).unwrap();
        assert!(matches!(
            tx.read_data(&mem, &mut out),
            Err(PacketError::DataTooLarge(_))
        ));

        let rx = RxChain::parse(&mem, [desc(0x1000, 50, true)].into_iter()).unwrap();
        assert!(matches!(
            rx.write_packet(&mem, &sample_header(0), &[0u8; 7]),
            Err(PacketError::RxChainTooSmall {
                len: 7,
                capacity: 6
            })
        ));
    }
}
