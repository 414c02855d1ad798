//! kiln's shared model of a node bundle.
//!
//! Everything that both the builder (`kiln`) and the first-boot activator (`kiln-firstboot`) must agree
//! on lives here: the manifest types, the bundle index (`kiln-bundle.json`), path safety rules, the
//! reproducible writer and the streaming reader/verifier. The dependency set is kept small on purpose,
//! because the first-boot binary links this crate.

pub mod atomic;
pub mod backoff;
pub mod digest;
pub mod error;
pub mod index;
pub mod layout;
pub mod manifest;
pub mod mode;
pub mod path;
pub mod placeholder;
pub mod process;
pub mod reader;
pub mod signature;
pub mod term;
pub mod time;
pub mod verity;
pub mod writer;
pub mod yaml;

pub use digest::Sha256;
pub use error::{Error, Result};
pub use index::{ComponentRecord, EntryKind, FileRecord, Index};
pub use manifest::{Arch, Manifest};

/// File name of a bundle for `name`, `version` and `arch`.
pub fn bundle_file_name(name: &str, version: &str, arch: Arch) -> String {
    format!("{name}-{version}-{arch}.kiln.tar.zst")
}
