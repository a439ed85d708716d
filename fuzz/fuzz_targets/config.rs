//! The inputs hull-vmm and the agent parse from outside: the VM
//! configuration file and the stdio stream header.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hull_vmm::config::VmConfig::parse(text, std::path::Path::new("fuzz.toml"));
        let _ = hull_protocols::stdio::StreamHeader::parse(text);
    }
});
