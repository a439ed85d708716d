//! Architecture-specific boot support: guest memory layout, boot information, initial
//! register state, MSRs and CPUID. Plain functions over values and guest memory; applying
//! them to a vCPU is the job of `vstate`.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
