//! kiln-bundle.json: JSON parsing and structural validation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = kiln_bundle::Index::from_json(data, "fuzz") {
        // A valid index round-trips.
        let again = kiln_bundle::Index::from_json(&index.to_json(), "fuzz").expect("a valid index re-parses");
        assert_eq!(again, index);
    }
});
