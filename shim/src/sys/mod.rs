//! Host primitives the rest of the shim builds on: descriptor-relative file
//! and mount operations for directories the guest can write to, id-mapping
//! user namespaces, and what the shim does to the processes it starts and
//! how it watches them.

pub mod child;
pub mod fs;
pub mod mount;
pub mod process;
pub mod sk_lookup;
pub mod userns;
