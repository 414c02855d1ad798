//! User data as a datasource returns it (cloud-config, MIME multipart, gzip, base64, IMDS bodies).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cfg = kiln_firstboot::config::NodeConfig::default();
    if kiln_firstboot::userdata::apply(data, "fuzz", &mut cfg).is_ok() {
        for wf in &cfg.write_files {
            assert!(wf.path.starts_with('/') && !wf.path.split('/').any(|c| c == ".."));
        }
    }
});
