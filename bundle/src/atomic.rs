//! Atomic file replacement: write a temporary file in the same directory, fsync it, rename it over
//! the destination, fsync the directory. A crash or Ctrl-C leaves either the old file or the new one.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::error::{IoContext, Result};

/// A temporary file next to `dest`, removed on drop unless persisted.
pub fn temp_beside(dest: &Path) -> Result<NamedTempFile> {
    let dir = parent_dir(dest);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .at(dir)
}

/// fsync `tmp` and rename it to `dest`, then fsync the directory.
pub fn persist(tmp: NamedTempFile, dest: &Path) -> Result<()> {
    tmp.as_file().sync_all().at(tmp.path())?;
    tmp.persist(dest).map_err(|e| e.error).at(dest)?;
    sync_dir(parent_dir(dest))
}

/// Write `bytes` to `dest` atomically with permissions `mode`.
pub fn write_file(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = temp_beside(dest)?;
    tmp.write_all(bytes).at(tmp.path())?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .at(tmp.path())?;
    persist(tmp, dest)
}

/// Point the symlink `path` at `target` atomically: a new link beside it (`<path>.kiln-new`),
/// renamed over it, so readers see the old target or the new one, never none. True when it
/// changed; a link already pointing there is left alone. The caller fsyncs the directory when the
/// change must survive a crash.
pub fn replace_symlink(path: &Path, target: &Path) -> Result<bool> {
    if fs::read_link(path).is_ok_and(|t| t == target) {
        return Ok(false);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".kiln-new");
    let tmp = std::path::PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&tmp),
        _ => {}
    }
    std::os::unix::fs::symlink(target, &tmp).at(&tmp)?;
    fs::rename(&tmp, path).at(path)?;
    Ok(true)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_symlink_in_one_rename() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("current");
        assert!(replace_symlink(&link, Path::new("bundles/a")).unwrap());
        assert!(replace_symlink(&link, Path::new("bundles/b")).unwrap());
        assert!(!replace_symlink(&link, Path::new("bundles/b")).unwrap());
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("bundles/b"));
        // A leftover from an interrupted swap is replaced, and nothing is left beside the link.
        std::os::unix::fs::symlink("stale", d.path().join("current.kiln-new")).unwrap();
        assert!(replace_symlink(&link, Path::new("bundles/c")).unwrap());
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["current"]);
    }

    #[test]
    fn writes_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_file(&p, b"one", 0o600).unwrap();
        write_file(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left"
        );
    }

    #[test]
    fn dropped_temp_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = temp_beside(&dir.path().join("x")).unwrap();
        drop(t);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
