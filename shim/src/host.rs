//! What this host offers a VM: KVM with hardware virtualization, KVM that is
//! PVM (which cannot boot an ordinary Linux guest), or nothing.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Virtualization {
    /// /dev/kvm backed by VT-x or AMD-V.
    Hardware,
    /// /dev/kvm backed by the `kvm_pvm` module: only PVM-aware guest kernels
    /// run; an ordinary kernel stops in KVM's instruction emulator.
    Pvm,
    /// No usable /dev/kvm.
    None,
}

impl Virtualization {
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/"))
    }

    /// Detection against a root directory, so tests can fake a host.
    pub fn detect_in(root: &Path) -> Self {
        if !root.join("dev/kvm").exists() {
            return Virtualization::None;
        }
        if root.join("sys/module/kvm_pvm").exists() {
            return Virtualization::Pvm;
        }
        let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        let hardware = cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .any(|line| line.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if hardware {
            Virtualization::Hardware
        } else {
            Virtualization::None
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Virtualization::Hardware => "KVM with hardware virtualization (VT-x/AMD-V)",
            Virtualization::Pvm => "KVM is PVM (kvm_pvm): it cannot boot an ordinary Linux guest",
            Virtualization::None => "no usable KVM",
        }
    }
}

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

    fn fake_host(kvm: bool, pvm: bool, flags: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("dev")).unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        if kvm {
            std::fs::write(root.path().join("dev/kvm"), "").unwrap();
        }
        if pvm {
            std::fs::create_dir_all(root.path().join("sys/module/kvm_pvm")).unwrap();
        }
        std::fs::write(
            root.path().join("proc/cpuinfo"),
            format!("flags\t\t: fpu {flags}\n"),
        )
        .unwrap();
        root
    }

    #[test]
    fn tells_hardware_pvm_and_none_apart() {
        let cases = [
            (true, false, "vmx sse", Virtualization::Hardware),
            (true, false, "svm", Virtualization::Hardware),
            (true, true, "sse", Virtualization::Pvm),
            (true, false, "sse", Virtualization::None),
            (false, false, "vmx", Virtualization::None),
        ];
        for (kvm, pvm, flags, want) in cases {
            let root = fake_host(kvm, pvm, flags);
            assert_eq!(Virtualization::detect_in(root.path()), want, "{flags}");
        }
    }
}
