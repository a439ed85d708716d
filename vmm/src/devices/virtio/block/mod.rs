//! virtio-blk (device type 2) backed by a raw image file.
//!
//! - `request`: parsing one descriptor chain into a request and running it against the file.
//! - `device`: the [`BlockDevice`] the virtio-mmio transport drives.

mod device;
mod request;

pub use device::BlockDevice;
pub use request::{Disk, SECTOR_SIZE};
