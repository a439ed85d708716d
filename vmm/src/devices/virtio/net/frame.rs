//! One Ethernet frame between a descriptor chain and the tap (virtio 1.x, 5.1.6).
//!
//! Every frame is preceded by a 12-byte `struct virtio_net_hdr_v1`, in the chain as on the
//! tap. The header may share a descriptor with the frame or not, and the frame may be spread
//! over any number of descriptors. The device negotiates no offloads, so the header carries
//! nothing either side needs: the driver's is skipped and the tap gets a zeroed one; the tap's
//! is dropped and the driver gets a zeroed one with `num_buffers = 1`, as the spec requires
//! without `VIRTIO_NET_F_MRG_RXBUF`.
//!
//! Nothing in a chain is trusted: a descriptor in the wrong direction, outside guest memory,
//! or a chain too short for the header or too long for any frame is refused whole.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

pub use hull_vmm_api::net::VNET_HDR_SIZE;

/// An Ethernet header: destination, source, EtherType.
pub const ETH_HLEN: usize = 14;
/// The longest frame either side carries: the largest MTU Linux gives a tap or a virtio-net
/// interface without offloads (65535), an Ethernet header and a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_535 + ETH_HLEN + 4;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("A transmit chain has a device-writable descriptor")]
    WritableInTx,
    #[error("A receive chain has a device-readable descriptor")]
    ReadableInRx,
    #[error("A descriptor of {len} bytes at {addr:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("The chain holds {len} bytes, too few for the {VNET_HDR_SIZE}-byte header")]
    NoRoomForHeader { len: usize },
    #[error("The frame of {len} bytes is shorter than an Ethernet header")]
    FrameTooShort { len: usize },
    #[error("The frame is longer than {MAX_FRAME_LEN} bytes")]
    FrameTooLong,
}

/// The header the tap gets with every frame: no checksum or segmentation work.
pub const TAP_HEADER: [u8; VNET_HDR_SIZE] = [0; VNET_HDR_SIZE];

/// The header the driver gets with every frame: no offloads, and the frame in one chain.
pub fn guest_header() -> [u8; VNET_HDR_SIZE] {
    let mut header = [0u8; VNET_HDR_SIZE];
    header[NUM_BUFFERS_OFFSET..].copy_from_slice(&1u16.to_le_bytes());
    header
}

fn in_memory<M: GuestMemory>(mem: &M, desc: &Descriptor, access: Permissions) -> bool {
    usize::try_from(desc.len()).is_ok_and(|len| mem.check_range(desc.addr(), len, access))
}

fn outside_memory(desc: &Descriptor) -> ChainError {
    ChainError::OutsideMemory {
        addr: desc.addr().0,
        len: desc.len(),
    }
}

/// Copies the frame a transmit chain carries into `frame` (emptied first), without the
/// driver's header.
pub fn gather_tx_frame<M: GuestMemory>(
    mem: &M,
    descriptors: impl Iterator<Item = Descriptor>,
    frame: &mut Vec<u8>,
) -> Result<(), ChainError> {
    frame.clear();
    let mut header_left = VNET_HDR_SIZE;
    for desc in descriptors {
        if desc.is_write_only() {
            return Err(ChainError::WritableInTx);
        }
        if !in_memory(mem, &desc, Permissions::Read) {
            return Err(outside_memory(&desc));
        }
        let len = desc.len() as usize;
        let skip = header_left.min(len);
        header_left -= skip;
        let take = len - skip;
        if take == 0 {
            continue;
        }
        // Checked before allocating: a descriptor may claim up to 4 GiB.
        if frame.len() + take > MAX_FRAME_LEN {
            return Err(ChainError::FrameTooLong);
        }
        let start = frame.len();
        frame.resize(start + take, 0);
        let addr = GuestAddress(desc.addr().0 + skip as u64);
        mem.read_slice(&mut frame[start..], addr)
            .map_err(|_| outside_memory(&desc))?;
    }
    if header_left > 0 {
        return Err(ChainError::NoRoomForHeader {
            len: VNET_HDR_SIZE - header_left,
        });
    }
    if frame.len() < ETH_HLEN {
        return Err(ChainError::FrameTooShort { len: frame.len() });
    }
    Ok(())
}

/// The device-writable buffers of a receive chain, checked: all writable, all in guest
/// memory, with room at least for the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxBuffers {
    segments: Vec<(GuestAddress, usize)>,
    capacity: usize,
}

impl RxBuffers {
    pub fn parse<M: GuestMemory>(
        mem: &M,
        descriptors: impl Iterator<Item = Descriptor>,
    ) -> Result<Self, ChainError> {
        let mut segments = Vec::new();
        let mut capacity: usize = 0;
        for desc in descriptors {
            if !desc.is_write_only() {
                return Err(ChainError::ReadableInRx);
            }
            if !in_memory(mem, &desc, Permissions::Write) {
                return Err(outside_memory(&desc));
            }
            let len = desc.len() as usize;
            if len > 0 {
                segments.push((desc.addr(), len));
                capacity = capacity.saturating_add(len);
            }
        }
        if capacity < VNET_HDR_SIZE {
            return Err(ChainError::NoRoomForHeader { len: capacity });
        }
        Ok(RxBuffers { segments, capacity })
    }

    /// Bytes the buffers hold, header included.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a frame of `len` bytes fits behind the header.
    pub fn fits(&self, len: usize) -> bool {
        len <= self.capacity - VNET_HDR_SIZE
    }

    /// Writes the header, then `frame`, across the buffers; returns the used length.
    /// The caller checks [`Self::fits`] first.
    pub fn write_frame<M: GuestMemory>(&self, mem: &M, frame: &[u8]) -> Result<u32, ChainError> {
        if !self.fits(frame.len()) {
            return Err(ChainError::FrameTooLong);
        }
        let header = guest_header();
        let mut parts = [&header[..], frame];
        for &(addr, len) in &self.segments {
            let mut done = 0;
            while done < len {
                let Some(part) = parts.iter_mut().find(|p| !p.is_empty()) else {
                    break;
                };
                let take = part.len().min(len - done);
                mem.write_slice(&part[..take], GuestAddress(addr.0 + done as u64))
                    .map_err(|_| ChainError::OutsideMemory {
                        addr: addr.0,
                        len: len as u32,
                    })?;
                *part = &part[take..];
                done += take;
            }
        }
        // Both fit (checked above), and a frame is at most MAX_FRAME_LEN.
        Ok((VNET_HDR_SIZE + frame.len()) as u32)
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::GuestMemoryMmap;

    use super::*;

    const MEM_SIZE: usize = 0x10_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn desc(addr: u64, len: u32, writable: bool) -> Descriptor {
        let flags = if writable {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        Descriptor::new(addr, len, flags, 0)
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Writes `header` + `frame` at `addr` and returns the bytes.
    fn put_packet(mem: &GuestMemoryMmap, addr: u64, frame: &[u8]) -> Vec<u8> {
        let mut packet = vec![0xee; VNET_HDR_SIZE];
        packet.extend_from_slice(frame);
        mem.write_slice(&packet, GuestAddress(addr)).unwrap();
        packet
    }

    #[test]
    fn tx_frames_come_out_without_the_header_however_the_chain_is_cut() {
        let mem = mem();
        let data = frame(100);
        put_packet(&mem, 0x1000, &data);
        let mut out = Vec::new();
        for cuts in [
            // Header and frame in one descriptor.
            vec![112],
            // Header alone, then the frame.
            vec![12, 100],
            // Header split, and the frame starting inside the header's second piece.
            vec![5, 10, 1, 96],
            // Empty descriptors along the way.
            vec![0, 12, 0, 50, 50],
        ] {
            let mut addr = 0x1000;
            let descs: Vec<_> = cuts
                .iter()
                .map(|&len| {
                    let d = desc(addr, len, false);
                    addr += u64::from(len);
                    d
                })
                .collect();
            gather_tx_frame(&mem, descs.into_iter(), &mut out).unwrap();
            assert_eq!(out, data, "{cuts:?}");
        }
    }

    #[test]
    fn malformed_tx_chains_are_refused() {
        let mem = mem();
        put_packet(&mem, 0x1000, &frame(64));
        let mut out = vec![1, 2, 3];
        let gather = |descs: Vec<Descriptor>, out: &mut Vec<u8>| {
            gather_tx_frame(&mem, descs.into_iter(), out)
        };
        assert_eq!(
            gather(
                vec![desc(0x1000, 12, false), desc(0x100c, 64, true)],
                &mut out
            ),
            Err(ChainError::WritableInTx)
        );
        assert_eq!(
            gather(vec![desc(0x1000, 8, false)], &mut out),
            Err(ChainError::NoRoomForHeader { len: 8 })
        );
        assert_eq!(
            gather(vec![], &mut out),
            Err(ChainError::NoRoomForHeader { len: 0 })
        );
        assert_eq!(
            gather(vec![desc(0x1000, 12 + 13, false)], &mut out),
            Err(ChainError::FrameTooShort { len: 13 })
        );
        let end = MEM_SIZE as u64;
        assert_eq!(
            gather(
                vec![desc(0x1000, 12, false), desc(end - 10, 20, false)],
                &mut out
            ),
            Err(ChainError::OutsideMemory {
                addr: end - 10,
                len: 20
            })
        );
        assert_eq!(
            gather(vec![desc(u64::MAX - 4, 12, false)], &mut out),
            Err(ChainError::OutsideMemory {
                addr: u64::MAX - 4,
                len: 12
            })
        );
        // A descriptor claiming 4 GiB.
        assert_eq!(
            gather(
                vec![desc(0x1000, 12, false), desc(0, u32::MAX, false)],
                &mut out
            ),
            Err(ChainError::OutsideMemory {
                addr: 0,
                len: u32::MAX
            })
        );
        let big = MAX_FRAME_LEN as u32;
        assert_eq!(
            gather(
                vec![
                    desc(0x1000, 12, false),
                    desc(0, big, false),
                    desc(0, 1, false)
                ],
                &mut out
            ),
            Err(ChainError::FrameTooLong)
        );
        // The longest frame is fine.
        assert_eq!(
            gather(vec![desc(0x1000, 12, false), desc(0, big, false)], &mut out),
            Ok(())
        );
        assert_eq!(out.len(), MAX_FRAME_LEN);
    }

    #[test]
    fn rx_frames_are_written_behind_a_zeroed_header_with_one_buffer() {
        let mem = mem();
        let data = frame(300);
        let header = guest_header();
        assert_eq!(header, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        for cuts in [vec![2048], vec![12, 2036], vec![7, 9, 100, 2000]] {
            mem.write_slice(&[0xaa; 4096], GuestAddress(0x2000))
                .unwrap();
            // Scatter the chain's buffers with gaps of 16 between them.
            let mut addr = 0x2000;
            let mut placed = Vec::new();
            let descs: Vec<_> = cuts
                .iter()
                .map(|&len| {
                    let d = desc(addr, len, true);
                    placed.push((addr, len as usize));
                    addr += u64::from(len) + 16;
                    d
                })
                .collect();
            let buffers = RxBuffers::parse(&mem, descs.into_iter()).unwrap();
            assert_eq!(buffers.capacity(), cuts.iter().sum::<u32>() as usize);
            assert_eq!(buffers.write_frame(&mem, &data), Ok(12 + 300));
            let mut written = Vec::new();
            for (addr, len) in placed {
                let mut part = vec![0u8; len];
                mem.read_slice(&mut part, GuestAddress(addr)).unwrap();
                written.extend_from_slice(&part);
            }
            assert_eq!(&written[..12], &header, "{cuts:?}");
            assert_eq!(&written[12..312], &data[..], "{cuts:?}");
            assert!(written[312..].iter().all(|&b| b == 0xaa), "{cuts:?}");
        }
    }

    #[test]
    fn rx_frames_that_do_not_fit_are_refused_and_nothing_is_written() {
        let mem = mem();
        mem.write_slice(&[0xaa; 64], GuestAddress(0x3000)).unwrap();
        let buffers = RxBuffers::parse(
            &mem,
            [desc(0x3000, 12, true), desc(0x300c, 50, true)].into_iter(),
        )
        .unwrap();
        assert!(buffers.fits(50));
        assert!(!buffers.fits(51));
        assert_eq!(
            buffers.write_frame(&mem, &frame(51)),
            Err(ChainError::FrameTooLong)
        );
        let mut back = [0u8; 64];
        mem.read_slice(&mut back, GuestAddress(0x3000)).unwrap();
        assert_eq!(back, [0xaa; 64]);
        assert_eq!(buffers.write_frame(&mem, &frame(50)), Ok(62));
    }

    #[test]
    fn malformed_rx_chains_are_refused() {
        let mem = mem();
        let parse = |descs: Vec<Descriptor>| RxBuffers::parse(&mem, descs.into_iter());
        assert_eq!(
            parse(vec![desc(0x1000, 12, true), desc(0x2000, 1500, false)]),
            Err(ChainError::ReadableInRx)
        );
        assert_eq!(
            parse(vec![desc(0x1000, 11, true)]),
            Err(ChainError::NoRoomForHeader { len: 11 })
        );
        assert_eq!(parse(vec![]), Err(ChainError::NoRoomForHeader { len: 0 }));
        let end = MEM_SIZE as u64;
        assert_eq!(
            parse(vec![desc(0x1000, 12, true), desc(end - 100, 1500, true)]),
            Err(ChainError::OutsideMemory {
                addr: end - 100,
                len: 1500
            })
        );
        assert_eq!(
            parse(vec![desc(u64::MAX, 12, true)]),
            Err(ChainError::OutsideMemory {
                addr: u64::MAX,
                len: 12
            })
        );
    }
}
