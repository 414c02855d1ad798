//! MANIFEST.lock files, and their agreement check against a manifest.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yaml.lock");
    std::fs::write(&path, data).unwrap();
    if let Ok(Some(lock)) = kiln_builder::lockfile::Lock::load(&path) {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/k8s-1.36.yaml")).unwrap();
        let m = kiln_bundle::Manifest::parse(&text, "k8s-1.36.yaml").unwrap();
        let _ = lock.disagreements(&m, &m.spec.architectures);
    }
});
