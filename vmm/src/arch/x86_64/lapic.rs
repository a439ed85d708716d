//! The local interrupt pins of a vCPU's local APIC, wired as the MP table describes them
//! and as on a PC: LINT0 takes the 8259 PIC's interrupts (ExtINT), LINT1 the NMI line.
//!
//! Only the delivery mode changes; the mask bits stay as KVM reset them (LINT0 of the
//! BSP open for the PIC, the rest masked until the guest sets up its APICs).

use kvm_bindings::kvm_lapic_state;

/// Offsets of the LVT LINT0 and LINT1 registers in the APIC register page.
pub const APIC_LVT0: usize = 0x350;
pub const APIC_LVT1: usize = 0x360;

/// Bits 8..=10 of an LVT register: its delivery mode.
const DELIVERY_MODE_MASK: u32 = 0x700;
pub const DELIVERY_MODE_NMI: u32 = 0x4 << 8;
pub const DELIVERY_MODE_EXTINT: u32 = 0x7 << 8;

/// Sets LINT0 to ExtINT and LINT1 to NMI in `lapic`, as read with KVM_GET_LAPIC.
pub fn set_lint_delivery_modes(lapic: &mut kvm_lapic_state) {
    let lvt0 = register(lapic, APIC_LVT0);
    set_register(
        lapic,
        APIC_LVT0,
        (lvt0 & !DELIVERY_MODE_MASK) | DELIVERY_MODE_EXTINT,
    );
    let lvt1 = register(lapic, APIC_LVT1);
    set_register(
        lapic,
        APIC_LVT1,
        (lvt1 & !DELIVERY_MODE_MASK) | DELIVERY_MODE_NMI,
    );
}

/// The 32-bit APIC register at `offset`.
pub fn register(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_register(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (slot, byte) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *slot = byte as libc::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASKED: u32 = 1 << 16;

    #[test]
    fn lint0_becomes_extint_and_lint1_nmi_keeping_the_mask_and_the_rest() {
        let mut lapic = kvm_lapic_state::default();
        // As KVM resets an application processor: both masked, fixed delivery.
        set_register(&mut lapic, APIC_LVT0, MASKED);
        set_register(&mut lapic, APIC_LVT1, MASKED | DELIVERY_MODE_EXTINT);
        set_register(&mut lapic, 0x340, 0xdead_beef);
        set_register(&mut lapic, 0x370, 0x1234_5678);
        set_lint_delivery_modes(&mut lapic);
        assert_eq!(register(&lapic, APIC_LVT0), MASKED | 0x700);
        assert_eq!(register(&lapic, APIC_LVT1), MASKED | 0x400);
        assert_eq!(register(&lapic, 0x340), 0xdead_beef);
        assert_eq!(register(&lapic, 0x370), 0x1234_5678);

        // The BSP as KVM resets it: LINT0 already ExtINT and open.
        set_register(&mut lapic, APIC_LVT0, DELIVERY_MODE_EXTINT);
        set_lint_delivery_modes(&mut lapic);
        assert_eq!(register(&lapic, APIC_LVT0), 0x700);
    }
}
