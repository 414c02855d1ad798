//! Checks on the OCI image archives a manifest preloads: the archive is an OCI image layout (or a
//! Docker archive) in a tar, and it names the image the way the manifest does, since containerd
//! names an imported image by the archive's own annotation, not by anything kiln says.

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Result};

/// Largest `index.json` / `manifest.json` read: an index lists a few manifests.
const MAX_INDEX: u64 = 1 << 20;

/// The image names an archive declares (OCI `io.containerd.image.name` and
/// `org.opencontainers.image.ref.name` annotations that are full references, Docker `RepoTags`).
pub fn names(archive: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(archive).map_err(|e| anyhow!("cannot open it: {e}"))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(f));
    let mut names = Vec::new();
    let mut layout = false;
    for entry in tar.entries().map_err(|e| anyhow!("not a tar archive: {e}"))? {
        let mut entry = entry.map_err(|e| anyhow!("not a tar archive: {e}"))?;
        let path = entry.path()?.into_owned();
        let path = path.to_string_lossy().trim_start_matches("./").to_string();
        if path != "index.json" && path != "manifest.json" {
            continue;
        }
        if entry.size() > MAX_INDEX {
            bail!("{path} is larger than {MAX_INDEX} bytes");
        }
        let mut text = String::new();
        entry
            .by_ref()
            .take(MAX_INDEX)
            .read_to_string(&mut text)
            .map_err(|e| anyhow!("cannot read {path}: {e}"))?;
        let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{path}: not JSON: {e}"))?;
        layout = true;
        if path == "index.json" {
            for m in doc["manifests"].as_array().into_iter().flatten() {
                for key in ["io.containerd.image.name", "org.opencontainers.image.ref.name"] {
                    if let Some(n) = m["annotations"][key].as_str() {
                        names.push(n.to_string());
                    }
                }
            }
        } else {
            for m in doc.as_array().into_iter().flatten() {
                for t in m["RepoTags"].as_array().into_iter().flatten() {
                    if let Some(t) = t.as_str() {
                        names.push(t.to_string());
                    }
                }
            }
        }
    }
    if !layout {
        bail!("not an OCI image layout or Docker archive (no index.json or manifest.json)");
    }
    Ok(names)
}

/// The archive at `archive` names image `name`.
pub fn check_names(archive: &Path, name: &str) -> Result<()> {
    let names = names(archive)?;
    if names.iter().any(|n| n == name) {
        return Ok(());
    }
    Err(if names.is_empty() {
        anyhow!("the archive names no image; containerd would not import it as `{name}`")
    } else {
        anyhow!(
            "the archive names {}, not `{name}` (containerd names an imported image after the archive)",
            names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        )
    })
}
