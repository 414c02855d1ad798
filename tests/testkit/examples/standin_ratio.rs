//! Prints the zstd -3 ratio of a stand-in binary, to keep the generator honest.
fn main() {
    let data = kiln_testkit::standin::binary(32 << 20, 7);
    let c = zstd::encode_all(&data[..], 3).unwrap();
    println!(
        "{} -> {} ({:.3})",
        data.len(),
        c.len(),
        c.len() as f64 / data.len() as f64
    );
}
