//! What this host offers a VM: KVM with hardware virtualization, KVM that is
//! PVM (which cannot boot an ordinary Linux guest), or nothing. Plain file
//! reads, no ioctls, so the shim can ask too.

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

#[cfg(test)]
mod tests {
    use super::*;

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
