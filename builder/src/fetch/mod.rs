//! Getting artifacts into the cache: HTTP(S), local files and Debian packages through apt.
//! Every artifact is checked against its expected sha256 before it is stored; a mismatch stores
//! nothing.

pub mod apt;
pub mod file;
pub mod http;

use kiln_bundle::digest::Sha256;

/// The error for an artifact whose digest differs from the pinned one.
pub fn mismatch(what: &str, location: &str, expected: &Sha256, actual: &Sha256) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: digest mismatch for {location}: expected sha256 {expected}, got {actual}; nothing was written"
    )
}
