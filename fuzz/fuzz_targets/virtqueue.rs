//! The vsock device draining a TX virtqueue that a guest filled with any
//! bytes: descriptor table, available ring and packets all come from the
//! input, so chains may loop, overlap, point outside memory or lie about
//! their lengths. The device must return every chain and never panic.
#![no_main]

use std::sync::Mutex;
use std::sync::OnceLock;

use hull_vmm::devices::virtio::vsock::{VsockConfig, VsockDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEMORY: usize = 0x10000;
const QUEUE_SIZE: u16 = 16;

fn device() -> &'static Mutex<VsockDevice> {
    static DEVICE: OnceLock<Mutex<VsockDevice>> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let uds = std::env::temp_dir().join(format!("hull-fuzz-vsock-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&uds);
        Mutex::new(
            VsockDevice::new(&VsockConfig {
                guest_cid: 3,
                uds_path: uds,
            })
            .expect("vsock device"),
        )
    })
}

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
    let mut device = device().lock().unwrap();
    let _ = device.process_tx(&mem, &mut queue);
    let _ = device.process_rx(&mem, &mut queue);
});
