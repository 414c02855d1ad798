//! The `current` and `node` links: where they point, flipping them, and whether the active bundle
//! is already the one asked for.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::state::{BundleId, State, Status};
use crate::system::System;

use super::*;

/// The current targets of the `current` and `node` links.
pub(crate) fn links(root: &Path) -> Option<(String, String)> {
    let cur = fs::read_link(root.join(CURRENT)).ok()?;
    let node = fs::read_link(root.join(NODE)).ok()?;
    Some((cur.to_string_lossy().into_owned(), node.to_string_lossy().into_owned()))
}

/// Point `node` and `current` at new targets (relative to /var/lib/kiln), each by an atomic rename.
pub fn flip(root: &Path, current: &str, node: &str) -> Result<()> {
    for (link, target) in [(NODE, node), (CURRENT, current)] {
        let path = root.join(link);
        kiln_bundle::atomic::replace_symlink(&path, Path::new(target))
            .with_context(|| format!("cannot flip {}", path.display()))?;
    }
    kiln_bundle::atomic::sync_dir(&root.join(kiln_bundle::layout::root::STATE_DIR))?;
    Ok(())
}

pub(crate) fn already_active(
    root: &Path,
    state: &Option<State>,
    id: &BundleId,
    config_digest: &str,
    sys: &mut dyn System,
) -> Option<String> {
    let s = state.as_ref()?;
    if s.result != Status::Ok || &s.bundle != id || s.config_digest != config_digest {
        return None;
    }
    let (cur, node) = links(root)?;
    if cur != format!("bundles/{}", s.version) || node != format!("rendered/{}", s.rendered) {
        return None;
    }
    if !root.join(CURRENT).join(kiln_bundle::index::INDEX_NAME).is_file() {
        return None;
    }
    let kubelet = root.join(CURRENT).join("bin/kubelet").exists();
    use kiln_bundle::layout::units;
    if !sys.is_active(units::CONTAINERD) || (kubelet && !sys.is_active(units::KUBELET)) {
        return None;
    }
    Some(s.version.clone())
}
