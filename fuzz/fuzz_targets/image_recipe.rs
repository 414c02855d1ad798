//! Image recipes: YAML parsing, validation and the partition layout never panic, and an accepted
//! recipe always has a layout with a usable ESP and root.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(r) = kiln_builder::image::Recipe::parse(text, "fuzz.yaml") {
            let l = r.layout().expect("a parsed recipe has a layout");
            assert!(l.esp >= 64 << 20 && l.root >= 256 << 20);
            let _ = (r.digest(), r.base_digest(None));
        }
    }
});
