//! `spec.verity`: the bundle's files as an uncompressed erofs image with a dm-verity hash tree
//! appended, written beside the bundle (see [`kiln_bundle::verity`]). Both tools are told every
//! input that would otherwise vary (file times, owners, the filesystem UUID, the salt), so the same
//! bundle gives the same image.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use fs_err as fs;
use kiln_bundle::digest::hash_file;
use kiln_bundle::index::{EntryKind, Index, INDEX_NAME};
use kiln_bundle::verity::{self, VerityRecord, BLOCK_SIZE, FILESYSTEM, HASH_ALGORITHM};
use kiln_bundle::writer::Content;

use crate::process;

/// An image built in a work directory, not yet in place.
pub struct Built {
    pub image: PathBuf,
    pub record: VerityRecord,
    /// Removed when dropped.
    _work: tempfile::TempDir,
}

impl Built {
    /// Move the image to `dest` (the same filesystem: the work directory is beside it).
    pub fn install(self, dest: &Path) -> Result<()> {
        fs::rename(&self.image, dest)?;
        Ok(())
    }
}

/// Build the image of `index`'s files (whose bytes are `contents`) in a work directory under
/// `out_dir`.
pub fn build(index: &Index, contents: &BTreeMap<String, Content>, out_dir: &Path) -> Result<Built> {
    let work = tempfile::Builder::new()
        .prefix(".kiln-verity-")
        .tempdir_in(out_dir)
        .with_context(|| format!("cannot create a work directory in {}", out_dir.display()))?;
    let tree = work.path().join("tree");
    let inner = index.without_verity();
    materialize(&inner, contents, &tree)?;
    let (salt, uuid) = verity::salt_and_uuid(&inner.to_json());
    let image = work.path().join("image");
    let epoch = index.build.source_date_epoch.to_string();
    process::run(
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(format!("-T{epoch}"))
            .arg(format!("-U{uuid}"))
            .arg("--all-root")
            // No xattrs: the work directory's (SELinux labels, say) are not the bundle's.
            .arg("-x-1")
            .arg(&image)
            .arg(&tree),
    )
    .map_err(|e| tool_error(e, "mkfs.erofs", "erofs-utils"))?;
    let data_size = fs::metadata(&image)?.len();
    if data_size == 0 || data_size % u64::from(BLOCK_SIZE) != 0 {
        bail!("mkfs.erofs wrote {data_size} bytes, not a whole number of {BLOCK_SIZE}-byte blocks");
    }
    let out = process::run(
        Command::new("veritysetup")
            .arg("format")
            .arg(&image)
            .arg(&image)
            .arg(format!("--hash-offset={data_size}"))
            .arg(format!("--data-block-size={BLOCK_SIZE}"))
            .arg(format!("--hash-block-size={BLOCK_SIZE}"))
            .arg(format!("--hash={HASH_ALGORITHM}"))
            .arg(format!("--salt={salt}"))
            .arg(format!("--uuid={uuid}")),
    )
    .map_err(|e| tool_error(e, "veritysetup", "cryptsetup-bin"))?;
    let root_hash = root_hash(&String::from_utf8_lossy(&out.stdout))?;
    let (sha256, size) = hash_file(&image)?;
    let record = VerityRecord {
        filesystem: FILESYSTEM.into(),
        size,
        sha256,
        data_size,
        hash_algorithm: HASH_ALGORITHM.into(),
        data_block_size: BLOCK_SIZE,
        hash_block_size: BLOCK_SIZE,
        salt,
        root_hash,
    };
    record.validate(&image.display().to_string())?;
    Ok(Built {
        image,
        record,
        _work: work,
    })
}

/// Check the image beside `bundle` against the index's record: present, and the same bytes.
pub fn check_beside(bundle: &Path, record: &VerityRecord) -> Result<PathBuf> {
    let path = verity::verity_path(bundle);
    let (digest, size) =
        hash_file(&path).with_context(|| "the bundle's index records a verity image, which is written beside it")?;
    if digest != record.sha256 || size != record.size {
        bail!(
            "{}: sha256 {digest} ({size} bytes) does not match the index's {} ({} bytes); it is not this bundle's verity image",
            path.display(),
            record.sha256,
            record.size
        );
    }
    Ok(path)
}

fn tool_error(e: process::ProcessError, tool: &str, package: &str) -> anyhow::Error {
    match e {
        process::ProcessError::Spawn { .. } => {
            anyhow::anyhow!("spec.verity: {e} (install Debian's {package}, which has {tool})")
        }
        _ => anyhow::anyhow!("spec.verity: {e}"),
    }
}

/// `Root hash:` from `veritysetup format`'s report.
fn root_hash(report: &str) -> Result<String> {
    report
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:").map(|h| h.trim().to_string()))
        .with_context(|| format!("veritysetup format printed no root hash:\n{report}"))
}

/// Write the bundle's tree as unpacking would: every file with its mode, every link, and the index
/// (without the verity record).
fn materialize(index: &Index, contents: &BTreeMap<String, Content>, tree: &Path) -> Result<()> {
    fs::create_dir_all(tree)?;
    for d in index.directories() {
        fs::create_dir_all(tree.join(d))?;
    }
    fs::write(tree.join(INDEX_NAME), index.to_json())?;
    for f in &index.files {
        let p = tree.join(&f.path);
        match f.kind {
            EntryKind::File => {
                match contents.get(&f.path) {
                    Some(Content::Bytes(b)) => fs::write(&p, b)?,
                    Some(Content::File(src)) => {
                        fs::copy(src, &p)?;
                    }
                    None => bail!("`{}` is in the index but has no content", f.path),
                }
                fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode.0))?;
            }
            EntryKind::Symlink => {
                let target = f.target.as_deref().unwrap_or_default();
                fs::os::unix::fs::symlink(target, &p)?;
            }
        }
    }
    for d in index.directories() {
        fs::set_permissions(tree.join(d), std::fs::Permissions::from_mode(0o755))?;
    }
    fs::set_permissions(tree, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_hash_is_read_from_the_report() {
        let report = "VERITY header information for x\nUUID:            \t1\nHash algorithm:  \tsha256\nSalt:            \t00\nRoot hash:      \tded4ba59\n";
        assert_eq!(root_hash(report).unwrap(), "ded4ba59");
        assert!(root_hash("nothing").unwrap_err().to_string().contains("no root hash"));
    }
}
