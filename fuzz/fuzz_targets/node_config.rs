//! The kernel command line and node.yaml-style sections.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kiln_firstboot::datasource::parse_cmdline(text);
        let _: Result<kiln_firstboot::config::NodeSection, _> = kiln_bundle::yaml::from_str(text, "fuzz");
        let _ = kiln_bundle::placeholder::scan(text);
    }
});
