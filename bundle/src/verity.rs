//! The read-only runtime layer: the bundle's files in an uncompressed erofs image followed by its
//! dm-verity hash tree, one file written beside the bundle (`BUNDLE.verity`). The index records the
//! tree's root hash, so the bundle's digest and signature cover it; the image itself is outside
//! them on purpose: the kernel checks every block against the root hash as it is read, so a changed
//! byte fails that read (EIO) instead of a whole-file check at activation.
//!
//! The image's tree is the unpacked bundle's, with `kiln-bundle.json` holding the index without
//! this record (an image cannot contain its own root hash).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::error::{Error, Result};

/// The filesystem of the image: erofs, uncompressed, so file data is block-aligned and read without
/// decompression, and the image is as large as the unpacked tree it replaces on the node.
pub const FILESYSTEM: &str = "erofs";
/// dm-verity's data and hash block size, and erofs's block size.
pub const BLOCK_SIZE: u32 = 4096;
/// The hash dm-verity uses.
pub const HASH_ALGORITHM: &str = "sha256";

/// The image's record in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerityRecord {
    /// The filesystem inside (`erofs`).
    pub filesystem: String,
    /// The whole file: filesystem, then hash tree.
    pub size: u64,
    /// sha256 of the whole file, for the builder and `kiln image` to check a copy; the node relies
    /// on the root hash.
    pub sha256: Sha256,
    /// The filesystem's size; the hash tree (with its superblock) starts here.
    pub data_size: u64,
    pub hash_algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// Hex, derived from the bundle, so a rebuild gives the same tree.
    pub salt: String,
    /// Hex: what the kernel checks every block against.
    pub root_hash: String,
}

impl VerityRecord {
    /// Structural checks. The salt and root hash become arguments of veritysetup on the node, so
    /// they must be exactly hex.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| Error::bundle(origin, format!("verity: {msg}"));
        if self.filesystem != FILESYSTEM {
            return Err(bad(format!(
                "filesystem `{}` is not supported (only {FILESYSTEM})",
                self.filesystem
            )));
        }
        if self.hash_algorithm != HASH_ALGORITHM {
            return Err(bad(format!(
                "hash algorithm `{}` is not supported (only {HASH_ALGORITHM})",
                self.hash_algorithm
            )));
        }
        if self.data_block_size != BLOCK_SIZE || self.hash_block_size != BLOCK_SIZE {
            return Err(bad(format!(
                "block sizes {}/{} are not supported (only {BLOCK_SIZE})",
                self.data_block_size, self.hash_block_size
            )));
        }
        if self.data_size == 0 || self.data_size % u64::from(BLOCK_SIZE) != 0 || self.data_size >= self.size {
            return Err(bad(format!(
                "data size {} must be a non-zero multiple of {BLOCK_SIZE} below the image's size {}",
                self.data_size, self.size
            )));
        }
        match check_hex("root hash", &self.root_hash, 64).or_else(|| check_hex("salt", &self.salt, 64)) {
            Some(problem) => Err(bad(problem)),
            None => Ok(()),
        }
    }
}

/// The problem with `s` as `len` lowercase hex digits, if it has one.
fn check_hex(what: &str, s: &str, len: usize) -> Option<String> {
    let hex = s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (!hex).then(|| format!("{what} `{s}` is not {len} lowercase hex digits"))
}

/// `BUNDLE.verity` beside a bundle.
pub fn verity_path(bundle: &Path) -> PathBuf {
    let mut s = bundle.as_os_str().to_owned();
    s.push(".verity");
    PathBuf::from(s)
}

/// The device-mapper name of bundle `version`'s verity device (`/dev/mapper/kiln-<version>`).
pub fn device_name(version: &str) -> String {
    format!("kiln-{version}")
}

/// The salt and filesystem UUID of a bundle's image, both derived from `seed` (the index's bytes
/// without this record), so the same bundle always gets the same image.
pub fn salt_and_uuid(seed: &[u8]) -> (String, String) {
    let h = Sha256::of(seed).hex();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    (h, uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> VerityRecord {
        VerityRecord {
            filesystem: FILESYSTEM.into(),
            size: 3 * 4096,
            sha256: Sha256::of(b"x"),
            data_size: 2 * 4096,
            hash_algorithm: HASH_ALGORITHM.into(),
            data_block_size: BLOCK_SIZE,
            hash_block_size: BLOCK_SIZE,
            salt: "ab".repeat(32),
            root_hash: "0f".repeat(32),
        }
    }

    #[test]
    fn a_good_record_passes() {
        record().validate("b").unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = fn(&mut VerityRecord);
        let cases: Vec<(Mutation, &str)> = vec![
            (|r| r.filesystem = "squashfs".into(), "filesystem `squashfs`"),
            (|r| r.hash_algorithm = "sha1".into(), "hash algorithm `sha1`"),
            (|r| r.data_block_size = 512, "block sizes 512/4096"),
            (|r| r.data_size = 4095, "data size 4095"),
            (|r| r.data_size = r.size, "data size 12288"),
            (|r| r.root_hash = "--verbose".into(), "root hash `--verbose`"),
            (|r| r.root_hash = "0F".repeat(32), "root hash"),
            (|r| r.salt = "ab".into(), "salt `ab`"),
        ];
        for (mutate, want) in cases {
            let mut r = record();
            mutate(&mut r);
            let e = r.validate("b.kiln.tar.zst").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("b.kiln.tar.zst"), "{want}: {e}");
        }
    }

    #[test]
    fn salt_and_uuid_are_derived() {
        let (salt, uuid) = salt_and_uuid(b"index");
        assert_eq!(salt, Sha256::of(b"index").hex());
        assert_eq!(uuid.len(), 36);
        assert!(salt.starts_with(&uuid[..8]));
        assert_ne!(salt_and_uuid(b"other").0, salt);
    }

    #[test]
    fn paths_and_names() {
        assert_eq!(
            verity_path(Path::new("/o/n-1-amd64.kiln.tar.zst")),
            PathBuf::from("/o/n-1-amd64.kiln.tar.zst.verity")
        );
        assert_eq!(device_name("1.0.0"), "kiln-1.0.0");
    }
}
