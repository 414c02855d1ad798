//! Loading minisign public keys and signatures for verification (ed25519, prehashed), with errors that
//! name the file. Signing lives in the builder; the first-boot side only ever verifies.

use std::path::Path;

use crate::error::{Error, IoContext, Result};

pub use minisign_verify::{PublicKey, Signature};

pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let text = std::fs::read_to_string(path).at(path)?;
    parse_public_key(&text).map_err(|e| Error::Signature(format!("{}: not a minisign public key: {e}", path.display())))
}

/// A public key as the `.pub` file's two lines, or the bare base64 line.
pub fn parse_public_key(text: &str) -> std::result::Result<PublicKey, minisign_verify::Error> {
    let trimmed = text.trim();
    if trimmed.lines().count() == 1 {
        PublicKey::from_base64(trimmed)
    } else {
        PublicKey::decode(trimmed)
    }
}

pub fn load_signature(path: &Path) -> Result<Signature> {
    let text = std::fs::read_to_string(path).at(path)?;
    Signature::decode(&text).map_err(|e| Error::Signature(format!("{}: not a minisign signature: {e}", path.display())))
}
