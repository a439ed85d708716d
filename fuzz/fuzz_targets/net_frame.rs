//! The virtio-net device's chain handling on chains a guest filled with any
//! bytes: every chain of the available ring is read as a transmit chain and
//! as a receive chain. Whatever the chain, reading it must not panic, an
//! accepted frame must be a real Ethernet frame size, and a frame that
//! fits an accepted receive chain must be written whole, header first.
#![no_main]

use hull_vmm::devices::virtio::net::frame::{
    gather_tx_frame, RxBuffers, ETH_HLEN, MAX_FRAME_LEN, VNET_HDR_SIZE,
};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEMORY: usize = 0x10000;
const QUEUE_SIZE: u16 = 16;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY)]).unwrap();
    let _ = mem.write_slice(&data[..data.len().min(MEMORY)], GuestAddress(0));
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_size(QUEUE_SIZE);
    // Descriptor table at 0, available ring at 0x100, used ring at 0x200.
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(0x100), Some(0));
    queue.set_used_ring_address(Some(0x200), Some(0));
    queue.set_ready(true);
    let Ok(chains) = queue.iter(&mem) else {
        return;
    };
    let mut frame = Vec::new();
    for chain in chains.take(usize::from(QUEUE_SIZE)) {
        if gather_tx_frame(&mem, chain.clone(), &mut frame).is_ok() {
            assert!((ETH_HLEN..=MAX_FRAME_LEN).contains(&frame.len()));
        }
        if let Ok(buffers) = RxBuffers::parse(&mem, chain) {
            assert!(buffers.capacity() >= VNET_HDR_SIZE);
            let payload = vec![0xa5u8; (buffers.capacity() - VNET_HDR_SIZE).min(2048)];
            if buffers.fits(payload.len()) {
                // Overlapping or aliased buffers may still refuse to be
                // written, but an accepted write reports the whole frame.
                if let Ok(used) = buffers.write_frame(&mem, &payload) {
                    assert_eq!(used as usize, VNET_HDR_SIZE + payload.len());
                }
            }
        }
    }
});
