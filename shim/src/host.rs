//! What this host offers a VM. Telling KVM from PVM lives with the VMM
//! (`hull_vmm::host`); the shim adds what only QEMU/TCG needs.

pub use hull_vmm_api::host::Virtualization;

/// The host's TSC frequency in kHz, as the host kernel measured it.
///
/// Under TCG the guest's TSC ticks at the host's rate, and a guest that has
/// to calibrate it against the emulated PIT gets it wrong on a busy host
/// (and then hangs calibrating against a timer it cannot trust). Hull hands
/// the frequency to the guest kernel instead (`tsc_early_khz=`). A CPU
/// whose TSC is not flagged constant gets it too: an emulated CPU (the
/// nested KVM lab's L1) has a steady TSC without the flag, and there a guest
/// left to calibrate never reached its agent ("tsc: Unable to calibrate
/// against PIT", then nothing in 240 s). A rate measured once beats none.
pub fn tsc_khz() -> Option<u64> {
    tsc_khz_from(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn tsc_khz_from(cpuinfo: &str) -> Option<u64> {
    let first_cpu = cpuinfo.split("\n\n").next()?;
    let mhz: f64 = first_cpu.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "cpu MHz").then(|| value.trim().parse().ok())?
    })?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_frequency_is_the_first_cpus_measured_rate() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2445.406\nflags\t\t: fpu tsc constant_tsc\n\nprocessor\t: 1\ncpu MHz\t\t: 1000.000\n";
        assert_eq!(tsc_khz_from(info), Some(2_445_406));
        let emulated = "cpu MHz\t\t: 2445.406\nflags\t\t: fpu tsc\n";
        assert_eq!(tsc_khz_from(emulated), Some(2_445_406));
        assert_eq!(tsc_khz_from("flags : constant_tsc\n"), None);
        assert_eq!(tsc_khz_from("cpu MHz : 0.000\n"), None);
        assert_eq!(tsc_khz_from("cpu MHz : fast\n"), None);
    }
}
