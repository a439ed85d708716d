//! State of a VM: its guest RAM (a shared memfd), the KVM VM itself (memory
//! slots, in-kernel irqchip and PIT) and its vCPUs. The only place in Hull
//! that issues KVM ioctls.

pub mod memory;
pub mod vcpu;
pub mod vm;
