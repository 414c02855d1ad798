//! Strict YAML decoding for user-facing files, with serde-saphyr.
//!
//! serde-saphyr is chosen over the archived serde_yaml (and its forks) because it is pure Rust,
//! panic-free on malformed input, bounds alias expansion and nesting with a budget, and reports
//! line and column. serde_path_to_error adds the field path, so an error reads
//! `manifest.yaml:12:7: spec.components.runc.source.format: unknown variant ...`.

use serde::de::DeserializeOwned;

use crate::error::Error;

/// Largest YAML document kiln reads; manifests and node configs are a few KiB.
pub const MAX_YAML_BYTES: usize = 4 << 20;

pub fn from_str<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, Error> {
    if text.len() > MAX_YAML_BYTES {
        return Err(Error::bundle(
            origin,
            format!("the document is larger than {MAX_YAML_BYTES} bytes"),
        ));
    }
    let options = serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    let mut field = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        let mut message = strip_location(&e.to_string());
        if !field.is_empty() && field != "." {
            message = format!("{field}: {message}");
        }
        Error::Parse {
            origin: origin.to_string(),
            line,
            column,
            message,
        }
    })
}

/// serde-saphyr appends " at line L, column C"; kiln prints the position up front instead.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
