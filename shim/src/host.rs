//! What this host offers a VM. Telling KVM from PVM lives with the VMM
//! (`hull_vmm::host`); the shim adds what only QEMU/TCG needs.

pub use hull_vmm::host::Virtualization;

/// The host's TSC frequency in kHz, when the TSC runs at a constant rate.
///
/// Under TCG the guest's TSC ticks at the host's rate, and a guest that has
/// to calibrate it against the emulated PIT gets it wrong on a busy host
/// (and then hangs calibrating against a timer it cannot trust). Hull hands
/// the frequency to the guest kernel instead (`tsc_early_khz=`).
pub fn tsc_khz() -> Option<u64> {
    tsc_khz_from(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn tsc_khz_from(cpuinfo: &str) -> Option<u64> {
    let first_cpu = cpuinfo.split("\n\n").next()?;
    let field = |name: &str| {
        first_cpu.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let constant = field("flags")?
        .split_whitespace()
        .any(|flag| flag == "constant_tsc");
    if !constant {
        return None;
    }
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_frequency_needs_a_constant_tsc() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2445.406\nflags\t\t: fpu tsc constant_tsc\n\nprocessor\t: 1\n";
        assert_eq!(tsc_khz_from(info), Some(2_445_406));
        let variable = "cpu MHz\t\t: 2445.406\nflags\t\t: fpu tsc\n";
        assert_eq!(tsc_khz_from(variable), None);
        assert_eq!(tsc_khz_from("flags : constant_tsc\n"), None);
    }
}
