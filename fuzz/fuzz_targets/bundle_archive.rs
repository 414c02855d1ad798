//! Whole bundles through the streaming verifier and kiln-firstboot's unpacking sink: never a panic,
//! and nothing is ever written outside the staging directory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let stage = dir.path().join("stage");
    let mut sink = kiln_firstboot::activate::unpack::Unpack::new(&stage).unwrap();
    let expect = kiln_bundle::reader::Expect::default();
    let _ = kiln_bundle::reader::read_bundle(data, "fuzz", &expect, &mut sink);
    // Only the staging directory exists beside where it was made.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, ["stage"], "a write escaped the staging directory");
});
