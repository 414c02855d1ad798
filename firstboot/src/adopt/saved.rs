//! The worker's files as they were before adoption, kept under
//! `/var/lib/kiln/adoption/saved/<their path>`, and put back by a rollback. Nothing is deleted:
//! a file adoption moves aside (a drop-in) or kiln's activation overwrites (a unit) is copied
//! first; a path that did not exist is removed again.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use kiln_bundle::layout::root::ADOPTION_SAVED;

/// One path adoption or the activation may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedPath {
    /// Relative to the root.
    pub path: String,
    /// Whether it existed (and so has a copy).
    pub existed: bool,
    /// Whether adoption itself removes it (a drop-in that would apply to kiln's unit too).
    pub moved: bool,
}

/// The directories on the way to `paths` that do not exist: a rollback removes them again, once
/// empty. Deepest first.
pub fn absent_dirs(root: &Path, paths: &[(String, bool)]) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for (rel, _) in paths {
        let mut dir = Path::new(rel).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            if !root.join(d).exists() {
                out.insert(d.display().to_string());
            }
            dir = d.parent();
        }
    }
    let mut v: Vec<String> = out.into_iter().collect();
    v.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    v
}

/// Remove the directories `absent_dirs` found missing, where they are empty again.
pub fn remove_created_dirs(root: &Path, dirs: &[String]) {
    for d in dirs {
        // Not empty: something else wrote there since; left alone.
        let _ = fs::remove_dir(root.join(d));
    }
}

/// Copy each existing path of `paths` into the saved tree (symlinks as symlinks).
pub fn save(root: &Path, paths: &[(String, bool)]) -> Result<Vec<SavedPath>> {
    let saved = root.join(ADOPTION_SAVED);
    if saved.exists() {
        // Left by a run killed before it wrote its record: those copies are of the same files.
        fs::remove_dir_all(&saved).with_context(|| format!("cannot remove {}", saved.display()))?;
    }
    let mut out = Vec::new();
    for (rel, moved) in paths {
        let src = root.join(rel);
        let existed = fs::symlink_metadata(&src).is_ok();
        if existed {
            copy(&src, &saved.join(rel))?;
        }
        out.push(SavedPath {
            path: rel.clone(),
            existed,
            moved: *moved,
        });
    }
    kiln_bundle::atomic::sync_dir(&root.join(kiln_bundle::layout::root::STATE_DIR))?;
    Ok(out)
}

fn copy(src: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest.parent().expect("a parent"))
        .with_context(|| format!("cannot create the directory of {}", dest.display()))?;
    let md = fs::symlink_metadata(src).with_context(|| format!("cannot stat {}", src.display()))?;
    if md.file_type().is_symlink() {
        let target = fs::read_link(src).with_context(|| format!("cannot read {}", src.display()))?;
        kiln_bundle::atomic::replace_symlink(dest, &target)?;
    } else {
        let bytes = fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
        use std::os::unix::fs::PermissionsExt;
        kiln_bundle::atomic::write_file(dest, &bytes, md.permissions().mode() & 0o7777)?;
    }
    Ok(())
}

fn remove(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(_) => fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display())),
        Err(_) => Ok(()),
    }
}

/// Remove the paths adoption moves aside (their copies are saved).
pub fn move_aside(root: &Path, saved: &[SavedPath]) -> Result<()> {
    for s in saved.iter().filter(|s| s.moved) {
        remove(&root.join(&s.path))?;
    }
    Ok(())
}

/// Put every path back as it was.
pub fn restore(root: &Path, saved: &[SavedPath]) -> Result<()> {
    let copies = root.join(ADOPTION_SAVED);
    for s in saved {
        let p = root.join(&s.path);
        if s.existed {
            remove(&p)?;
            copy(&copies.join(&s.path), &p)?;
        } else {
            remove(&p)?;
        }
    }
    Ok(())
}
