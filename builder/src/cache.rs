//! The content-addressed cache (`$KILN_CACHE`, by default `~/.cache/kiln`).
//!
//! ```text
//! blobs/sha256/<hex>      artifacts and the files unpacked from them, by digest
//! members/<hex>.json      the member list of artifact <hex>, so a warm build never re-reads archives
//! apt/                    kiln's private apt lists (the host's sources and keys, its own state)
//! tmp/                    in-progress downloads, renamed into blobs/ once verified
//! ```
//! Nothing enters `blobs/` without having been hashed on the way in, so a rebuild works offline.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_bundle::digest::{HashingWriter, Sha256};

pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// Open (and create) the cache at `root`, or at the default location.
    pub fn open(root: Option<PathBuf>) -> Result<Cache> {
        let root = match root {
            Some(r) => r,
            None => dirs::cache_dir()
                .context("no cache directory: set KILN_CACHE or --cache")?
                .join("kiln"),
        };
        for sub in ["blobs/sha256", "members", "apt", "tmp"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("cannot create cache directory {}", d.display()))?;
        }
        Ok(Cache { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob(&self, digest: &Sha256) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has(&self, digest: &Sha256) -> bool {
        self.blob(digest).is_file()
    }

    pub fn members_path(&self, artifact: &Sha256) -> PathBuf {
        self.root.join("members").join(format!("{}.json", artifact.hex()))
    }

    pub fn apt_dir(&self) -> PathBuf {
        self.root.join("apt")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A temporary file in the cache, to be handed to [`Cache::commit`].
    pub fn temp(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(self.tmp_dir())
            .with_context(|| format!("cannot create a file in {}", self.tmp_dir().display()))
    }

    /// Copy `r` into the cache, returning its digest and size.
    pub fn insert(&self, mut r: impl Read) -> Result<(Sha256, u64)> {
        let tmp = self.temp()?;
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp.as_file()));
        io::copy(&mut r, &mut w).with_context(|| format!("cannot write {}", tmp.path().display()))?;
        let (digest, size, mut buf) = w.finish();
        buf.flush()?;
        drop(buf);
        self.commit(tmp, &digest)?;
        Ok((digest, size))
    }

    /// Move a fully written and verified temporary file to its blob path.
    pub fn commit(&self, tmp: tempfile::NamedTempFile, digest: &Sha256) -> Result<PathBuf> {
        let dest = self.blob(digest);
        if dest.is_file() {
            return Ok(dest);
        }
        tmp.persist(&dest)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot store {}", dest.display()))?;
        Ok(dest)
    }
}
