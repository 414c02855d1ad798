//! Inputs the fuzzers found, kept as regression tests.

use std::path::Path;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz")
            .join(name),
    )
    .unwrap()
}

#[test]
fn an_abandoned_unpack_joins_its_fsync_thread() {
    // bundle_archive: LeakSanitizer saw the fsync thread outlive an Unpack dropped after a bad bundle.
    let data = fixture("bundle_archive-thread-leak");
    let dir = tempfile::tempdir().unwrap();
    let stage = dir.path().join("stage");
    let mut sink = kiln_firstboot::activate::unpack::Unpack::new(&stage).unwrap();
    let _ = kiln_bundle::reader::read_bundle(&data[..], "fuzz", &Default::default(), &mut sink);
    drop(sink); // joins the thread: removing the directory right after is safe
    std::fs::remove_dir_all(&stage).unwrap();
}

#[test]
fn user_data_with_a_multibyte_character_at_the_mime_probe() {
    // user_data: slicing the first 12 bytes panicked inside a multi-byte character.
    let mut cfg = kiln_firstboot::config::NodeConfig::default();
    assert!(kiln_firstboot::userdata::apply(&fixture("user_data-char-boundary"), "fuzz", &mut cfg).is_err());
}
