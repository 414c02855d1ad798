//! `kiln migrate` input: YAML maps, kubelet command lines and systemd units.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(old) = kiln_builder::migrate::parse(text, "fuzz") {
            let _ = kiln_builder::migrate::migrate(&old, "1.36.4");
        }
    }
});
