//! Source artifacts (tar.gz, tar.zst, .deb) as the builder unpacks them into its cache, within small
//! limits: never a panic, never unbounded output.
#![no_main]
use kiln_bundle::manifest::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let format = match selector % 3 {
        0 => Format::TarGz,
        1 => Format::TarZst,
        _ => Format::Deb,
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = kiln_builder::cache::Cache::open(Some(dir.path().join("cache"))).unwrap();
    let blob = dir.path().join("artifact");
    std::fs::write(&blob, body).unwrap();
    let limits = kiln_builder::archive::Limits { max_bytes: 32 << 20, max_ratio: 250, ratio_floor: 4 << 20, max_members: 10_000 };
    if let Ok(members) = kiln_builder::archive::scan(&cache, &blob, format, limits) {
        for path in members.members.keys() {
            kiln_bundle::path::check_relative(path).expect("accepted member paths are safe");
        }
    }
});
