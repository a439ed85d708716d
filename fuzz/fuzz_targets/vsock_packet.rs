//! vsock packets as a guest can shape them: any bytes in guest memory, any
//! descriptor chain over it (addresses, lengths, directions), parsed as a TX
//! chain and read, and as an RX chain and written. Nothing may panic.
#![no_main]

use hull_vmm::devices::virtio::vsock::packet::{PacketHeader, RxChain, TxChain};
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEMORY: usize = 0x10000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let count = (data[0] % 8) as usize + 1;
    let table_len = count * 12;
    if data.len() < 1 + table_len {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap();
    let contents = &data[1 + table_len..];
    let _ = mem.write_slice(&contents[..contents.len().min(MEMORY)], GuestAddress(0));
    let descriptors: Vec<Descriptor> = data[1..1 + table_len]
        .chunks(12)
        .map(|d| {
            let addr = u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]]));
            let len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
            let flags = u16::from_le_bytes([d[8], d[9]]);
            Descriptor::new(addr, len, flags, u16::from(d[10]))
        })
        .collect();
    if let Ok(chain) = TxChain::parse(&mem, descriptors.clone().into_iter()) {
        let mut out = Vec::new();
        let _ = chain.read_data(&mem, &mut out);
    }
    if let Ok(chain) = RxChain::parse(&mem, descriptors.into_iter()) {
        let header = PacketHeader::from_bytes(&[0; 44]);
        let payload = vec![0x5a; contents.len().min(4096)];
        let _ = chain.write_packet(&mem, &header, &payload);
    }
});
