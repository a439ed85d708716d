//! KVM state of a VM: the VM itself (memory slots, in-kernel irqchip and
//! PIT) and its vCPUs. The only place in Hull that issues KVM ioctls.

pub mod vcpu;
pub mod vm;
