//! `file://` URLs and paths relative to the manifest.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_bundle::digest::{HashingWriter, Sha256};

use crate::cache::Cache;

/// The local path a `file://` URL or a relative path refers to, relative to `base` (the manifest's
/// directory). `None` for URLs with another scheme.
pub fn local_path(url: &str, base: &Path) -> Option<PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        return Some(base.join(p));
    }
    if url.contains("://") {
        return None;
    }
    Some(base.join(url))
}

pub fn fetch(path: &Path, expected: &Sha256, cache: &Cache, what: &str) -> Result<()> {
    let src = File::open(path).with_context(|| format!("{what}: cannot open {}", path.display()))?;
    let tmp = cache.temp()?;
    let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp.as_file()));
    io::copy(&mut io::BufReader::with_capacity(1 << 20, src), &mut w)
        .with_context(|| format!("{what}: cannot copy {}", path.display()))?;
    let (actual, _, mut out) = w.finish();
    out.flush()?;
    drop(out);
    if &actual != expected {
        return Err(super::mismatch(what, &path.display().to_string(), expected, &actual));
    }
    cache.commit(tmp, &actual)?;
    Ok(())
}
