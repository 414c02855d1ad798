//! The reproducible bundle writer.
//!
//! Same index and contents in, bit-identical `.kiln.tar.zst` out: members sorted by path, the index
//! first, uid/gid 0 with empty owner names, one fixed mtime (`SOURCE_DATE_EPOCH`), no atime, ctime
//! or xattrs, and zstd's multi-threaded mode, whose output does not depend on the worker count.
//! The file is written under a temporary name and renamed, so a failure leaves nothing behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::atomic;
use crate::digest::{sha256sum_line, HashingWriter, Sha256};
use crate::error::{Error, IoContext, Result};
use crate::index::{EntryKind, Index, INDEX_NAME};
use crate::mode::Mode;

/// zstd level; 3 is zstd's default and matches `zstd -3`.
pub const ZSTD_LEVEL: i32 = 3;
const BUF: usize = 1 << 20;

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Vec<u8>),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub sha256: Sha256,
    pub size: u64,
}

/// zstd workers: every core, but at least one, so the multi-threaded (and thread-count independent)
/// format is always used.
pub fn default_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
        .max(1)
}

/// How to write a bundle.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions<'a> {
    /// zstd worker threads; the output is the same for any count.
    pub workers: u32,
    /// Checked between members: when set (by a SIGINT handler), writing stops with an error and the
    /// temporary file is removed, so Ctrl-C leaves nothing behind.
    pub cancel: Option<&'a AtomicBool>,
}

impl Default for WriteOptions<'_> {
    fn default() -> Self {
        WriteOptions {
            workers: default_workers(),
            cancel: None,
        }
    }
}

/// Write `index` and the files it lists into `dir/<index.file_name()>`, plus its `.sha256`.
/// `contents` maps every regular file's path to its bytes; the caller vouches that they match the
/// digests in the index (the builder takes them from its content-addressed cache).
pub fn write_bundle(
    dir: &Path,
    index: &Index,
    contents: &BTreeMap<String, Content>,
    opts: WriteOptions,
) -> Result<Written> {
    let workers = opts.workers;
    let dest = dir.join(index.file_name());
    // The writer refuses what the verifier would: nothing is written for a bad index.
    index.validate(&dest.display().to_string())?;
    let mut tmp = atomic::temp_beside(&dest)?;
    let tmp_path = tmp.path().to_path_buf();
    let sink = HashingWriter::new(BufWriter::with_capacity(BUF, tmp.as_file_mut()));
    let mut enc = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL).at(&tmp_path)?;
    enc.include_checksum(true).at(&tmp_path)?;
    enc.multithread(workers.max(1)).at(&tmp_path)?;
    let mut tar = tar::Builder::new(enc);
    let mtime = index.build.source_date_epoch;

    let index_json = index.to_json();
    append(
        &mut tar,
        INDEX_NAME,
        tar::EntryType::Regular,
        Mode::FILE,
        mtime,
        index_json.len() as u64,
        &index_json[..],
    )
    .at(&tmp_path)?;

    // Directories and files in one sorted sequence: a directory sorts before its contents.
    let dirs = index.directories();
    let mut names: Vec<(&str, Option<usize>)> = dirs.iter().map(|d| (*d, None)).collect();
    names.extend(index.files.iter().enumerate().map(|(i, f)| (f.path.as_str(), Some(i))));
    names.sort();
    for (path, file) in names {
        if opts.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Err(Error::bundle(
                dest.display().to_string(),
                "interrupted; nothing was written",
            ));
        }
        let Some(i) = file else {
            append(
                &mut tar,
                &format!("{path}/"),
                tar::EntryType::Directory,
                Mode::DIR,
                mtime,
                0,
                io::empty(),
            )
            .at(&tmp_path)?;
            continue;
        };
        let rec = &index.files[i];
        match rec.kind {
            EntryKind::Symlink => {
                let mut h = header(tar::EntryType::Symlink, rec.mode, mtime, 0);
                let target = rec.target.as_deref().unwrap_or_default();
                tar.append_link(&mut h, path, target).at(&tmp_path)?;
            }
            EntryKind::File => {
                let content = contents
                    .get(path)
                    .ok_or_else(|| Error::bundle(dest.display().to_string(), format!("no content for `{path}`")))?;
                match content {
                    Content::Bytes(b) => {
                        check_size(path, b.len() as u64, rec.size, &dest)?;
                        append(
                            &mut tar,
                            path,
                            tar::EntryType::Regular,
                            rec.mode,
                            mtime,
                            rec.size,
                            &b[..],
                        )
                        .at(&tmp_path)?;
                    }
                    Content::File(src) => {
                        let f = File::open(src).at(src)?;
                        let len = f.metadata().at(src)?.len();
                        check_size(path, len, rec.size, &dest)?;
                        let r = BufReader::with_capacity(BUF, f);
                        append(&mut tar, path, tar::EntryType::Regular, rec.mode, mtime, rec.size, r).at(src)?;
                    }
                }
            }
        }
    }
    let enc = tar.into_inner().at(&tmp_path)?;
    let sink = enc.finish().at(&tmp_path)?;
    let (sha256, size, mut buf) = sink.finish();
    buf.flush().at(&tmp_path)?;
    drop(buf);
    // Temporary files are created 0600; a bundle is for everyone to read.
    std::fs::set_permissions(&tmp_path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).at(&tmp_path)?;
    atomic::persist(tmp, &dest)?;

    let sum_path = sha256_path(&dest);
    atomic::write_file(&sum_path, sha256sum_line(&sha256, &index.file_name()).as_bytes(), 0o644)?;
    Ok(Written {
        path: dest,
        sha256,
        size,
    })
}

/// `BUNDLE.sha256` beside a bundle.
pub fn sha256_path(bundle: &Path) -> PathBuf {
    let mut s = bundle.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// The digest in `BUNDLE.sha256` beside a bundle; `None` when there is no such file. Errors name
/// the file.
pub fn read_sha256_beside(bundle: &Path) -> Result<Option<Sha256>> {
    let p = sha256_path(bundle);
    match std::fs::read_to_string(&p) {
        Ok(text) => crate::digest::parse_sha256sum(&text)
            .map(Some)
            .map_err(|e| Error::bundle(p.display().to_string(), e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// `BUNDLE.minisig` beside a bundle.
pub fn minisig_path(bundle: &Path) -> PathBuf {
    let mut s = bundle.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

fn check_size(path: &str, actual: u64, indexed: u64, dest: &Path) -> Result<()> {
    if actual != indexed {
        return Err(Error::bundle(
            dest.display().to_string(),
            format!("`{path}` is {actual} bytes but the index says {indexed}; the source changed while building"),
        ));
    }
    Ok(())
}

fn header(kind: tar::EntryType, mode: Mode, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode.0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    // Empty owner names, as `tar --owner=0 --group=0 --numeric-owner` writes them.
    let _ = h.set_username("");
    let _ = h.set_groupname("");
    h
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    kind: tar::EntryType,
    mode: Mode,
    mtime: u64,
    size: u64,
    data: impl io::Read,
) -> io::Result<()> {
    let mut h = header(kind, mode, mtime, size);
    tar.append_data(&mut h, path, data)
}
