//! The streaming bundle reader and verifier.
//!
//! One pass over the compressed bytes does everything: the outer sha256 and the minisign signature
//! are computed over the raw stream while it is decompressed, the index (first member) is parsed,
//! and each following member is checked against it (path, type, mode, size, digest) as it streams
//! past. Members that fail a structural check are never handed to the [`Sink`]; a digest mismatch is
//! only known after the bytes went by, so a sink that writes must stage its output and discard it
//! unless the [`Report`] is clean. Every problem is collected, so `kiln verify` can report them all.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::digest::{HashingReader, Sha256};
use crate::error::{Error, IoContext, Result};
use crate::index::{EntryKind, FileRecord, Index, INDEX_NAME, MAX_INDEX_BYTES};
use crate::mode::Mode;
use crate::path::check_relative;

/// What the caller expects of the raw bundle bytes.
#[derive(Default)]
pub struct Expect<'a> {
    /// The outer digest, from the `.sha256` beside the bundle or a trusted source.
    pub sha256: Option<Sha256>,
    /// A minisign public key and the bundle's signature.
    pub signature: Option<(&'a minisign_verify::PublicKey, &'a minisign_verify::Signature)>,
}

/// Receives the members that passed the structural checks, in archive order.
pub trait Sink {
    fn begin(&mut self, _index: &Index) -> Result<()> {
        Ok(())
    }
    fn dir(&mut self, _path: &str) -> Result<()> {
        Ok(())
    }
    /// `data` yields exactly `rec.size` bytes; what the sink leaves unread is drained and hashed.
    fn file(&mut self, _rec: &FileRecord, _data: &mut dyn Read) -> Result<()> {
        Ok(())
    }
    fn symlink(&mut self, _rec: &FileRecord, _target: &str) -> Result<()> {
        Ok(())
    }
}

/// A sink that only verifies.
pub struct VerifyOnly;
impl Sink for VerifyOnly {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The member concerned, if any.
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{}: {}", p.escape_debug(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug)]
pub struct Report {
    pub index: Option<Index>,
    pub problems: Vec<Problem>,
    /// sha256 of the raw bytes read.
    pub sha256: Sha256,
    pub size: u64,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.index.is_some()
    }

    /// The first problem as an error naming `origin`, if any.
    pub fn into_result(self, origin: &str) -> Result<Report> {
        if let Some(p) = self.problems.first() {
            let more = match self.problems.len() {
                1 => String::new(),
                n => format!(" (and {} more problems)", n - 1),
            };
            return Err(Error::bundle(origin, format!("{p}{more}")));
        }
        if self.index.is_none() {
            return Err(Error::bundle(origin, "no index was read"));
        }
        Ok(self)
    }
}

/// Hashes and signature-checks the raw stream as it is read.
struct RawTap<'a, R> {
    inner: HashingReader<R>,
    verifier: Option<minisign_verify::StreamVerifier<'a>>,
}

impl<R: Read> Read for RawTap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(v) = &mut self.verifier {
            v.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Remembers the first read error, so a failure while the sink reads is reported as a problem of
/// the archive rather than of the sink.
struct ReadTrap<R> {
    inner: R,
    error: Option<String>,
}

impl<R: Read> Read for ReadTrap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            self.error.get_or_insert_with(|| e.to_string());
        })
    }
}

/// Verify a bundle file; see [`read_bundle`].
pub fn verify_file(path: &Path, expect: &Expect, sink: &mut dyn Sink) -> Result<Report> {
    let f = File::open(path).at(path)?;
    read_bundle(
        BufReader::with_capacity(1 << 20, f),
        &path.display().to_string(),
        expect,
        sink,
    )
}

/// Read a bundle from `raw`, checking it against `expect` and its own index, and hand each good
/// member to `sink`. Problems with the bundle are collected in the report; an `Err` means the sink
/// failed (for example, the disk it writes to is full).
pub fn read_bundle(raw: impl Read, origin: &str, expect: &Expect, sink: &mut dyn Sink) -> Result<Report> {
    let mut problems = Vec::new();
    let verifier = match expect.signature {
        Some((pk, sig)) => match pk.verify_stream(sig) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(Problem {
                    path: None,
                    message: format!("signature: {e}"),
                });
                None
            }
        },
        None => None,
    };
    let has_verifier = verifier.is_some();
    let mut tap = RawTap {
        inner: HashingReader::new(raw),
        verifier,
    };

    let index = match zstd::stream::read::Decoder::new(&mut tap) {
        Ok(decoder) => read_members(decoder, origin, sink, &mut problems)?,
        Err(e) => {
            problems.push(Problem {
                path: None,
                message: format!("cannot start zstd decoding: {e}"),
            });
            None
        }
    };
    // Hash whatever the decoder did not need, so the digest covers the whole file.
    if let Err(e) = io::copy(&mut tap, &mut io::sink()) {
        problems.push(Problem {
            path: None,
            message: format!("read error: {e}"),
        });
    }
    let RawTap { inner, verifier } = tap;
    let (sha256, size, _) = inner.finish();
    if let Some(expected) = expect.sha256 {
        if expected != sha256 {
            problems.push(Problem {
                path: None,
                message: format!("outer digest mismatch: expected sha256 {expected}, got {sha256}"),
            });
        }
    }
    if let Some(mut v) = verifier {
        if let Err(e) = v.finalize() {
            problems.push(Problem {
                path: None,
                message: format!("signature does not verify: {e}"),
            });
        }
    } else if expect.signature.is_some() && !has_verifier {
        // Already reported above.
    }
    Ok(Report {
        index,
        problems,
        sha256,
        size,
    })
}

fn read_members<R: Read>(
    decoder: R,
    origin: &str,
    sink: &mut dyn Sink,
    problems: &mut Vec<Problem>,
) -> Result<Option<Index>> {
    let fatal = |problems: &mut Vec<Problem>, message: String| problems.push(Problem { path: None, message });
    let mut archive = tar::Archive::new(decoder);
    let mut entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            fatal(problems, format!("not a tar stream: {e}"));
            return Ok(None);
        }
    };

    // The index comes first.
    let index = match entries.next() {
        None => {
            fatal(problems, "the bundle is empty".into());
            return Ok(None);
        }
        Some(Err(e)) => {
            fatal(problems, format!("corrupt or truncated archive: {e}"));
            return Ok(None);
        }
        Some(Ok(mut entry)) => {
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if name != INDEX_NAME || entry.header().entry_type() != tar::EntryType::Regular {
                fatal(
                    problems,
                    format!("the first member is `{name}`, not the index {INDEX_NAME}"),
                );
                return Ok(None);
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            if size > MAX_INDEX_BYTES {
                fatal(
                    problems,
                    format!("{INDEX_NAME} is {size} bytes, more than the limit of {MAX_INDEX_BYTES}"),
                );
                return Ok(None);
            }
            let mut buf = Vec::with_capacity(size as usize);
            if let Err(e) = entry.read_to_end(&mut buf) {
                fatal(problems, format!("corrupt or truncated archive in {INDEX_NAME}: {e}"));
                return Ok(None);
            }
            match Index::from_json(&buf, origin) {
                Ok(i) => i,
                Err(e) => {
                    fatal(problems, e.to_string());
                    return Ok(None);
                }
            }
        }
    };
    sink.begin(&index)?;

    let dirs: BTreeSet<String> = index.directories().into_iter().map(str::to_string).collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                fatal(problems, format!("corrupt or truncated archive: {e}"));
                return Ok(Some(index));
            }
        };
        let raw_name = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        let Ok(name) = String::from_utf8(raw_name.clone()) else {
            problems.push(Problem {
                path: Some(String::from_utf8_lossy(&raw_name).into_owned()),
                message: "the name is not UTF-8".into(),
            });
            continue;
        };
        let path = if kind == tar::EntryType::Directory {
            name.trim_end_matches('/').to_string()
        } else {
            name.clone()
        };
        let mut problem = |message: String| {
            problems.push(Problem {
                path: Some(name.clone()),
                message,
            })
        };
        if let Err(e) = check_relative(&path) {
            problem(format!("refused: {e}"));
            continue;
        }
        if !seen.insert(path.clone()) {
            problem("appears more than once".into());
            continue;
        }
        let mode = Mode(entry.header().mode().unwrap_or(0) & 0o7777);
        match kind {
            tar::EntryType::Directory => {
                if !dirs.contains(&path) {
                    problem("directory is not in the index".into());
                    continue;
                }
                if mode != Mode::DIR {
                    problem(format!("directory mode {mode} is not {}", Mode::DIR));
                    continue;
                }
                sink.dir(&path)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let Some(rec) = index.file(&path) else {
                    problem("is not in the index".into());
                    continue;
                };
                if rec.kind != EntryKind::File {
                    problem(format!("is a regular file but the index says {:?}", rec.kind));
                    continue;
                }
                if mode != rec.mode {
                    let what = if mode.is_setid() && !rec.mode.is_setid() {
                        "setuid/setgid bit not in the index: "
                    } else {
                        ""
                    };
                    problem(format!("{what}mode {mode} differs from the index ({})", rec.mode));
                    continue;
                }
                let size = entry.header().size().unwrap_or(u64::MAX);
                if size != rec.size {
                    problem(format!("is {size} bytes but the index says {}", rec.size));
                    continue;
                }
                let mut hr = HashingReader::new(ReadTrap {
                    inner: &mut entry,
                    error: None,
                });
                let sunk = sink.file(rec, &mut hr);
                let drained = io::copy(&mut hr, &mut io::sink());
                let (digest, count, trap) = hr.finish();
                // A read error inside the sink is the archive's fault, not the sink's.
                if let Some(e) = trap.error {
                    problem(format!("corrupt or truncated archive: {e}"));
                    return Ok(Some(index));
                }
                sunk?;
                if let Err(e) = drained {
                    problem(format!("corrupt or truncated archive: {e}"));
                    return Ok(Some(index));
                }
                if count != rec.size {
                    problem(format!("truncated: {count} of {} bytes", rec.size));
                    return Ok(Some(index));
                }
                let expected = rec.sha256.expect("validated index: files have digests");
                if digest != expected {
                    problem(format!(
                        "content does not match the index: expected sha256 {expected}, got {digest}"
                    ));
                }
            }
            tar::EntryType::Symlink => {
                let Some(rec) = index.file(&path) else {
                    problem("is not in the index".into());
                    continue;
                };
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                if rec.kind != EntryKind::Symlink || target.as_deref() != rec.target.as_deref() {
                    problem(format!(
                        "symlink to {:?} does not match the index",
                        target.unwrap_or_default()
                    ));
                    continue;
                }
                sink.symlink(rec, rec.target.as_deref().unwrap_or_default())?;
            }
            tar::EntryType::Link => problem("refused: hard links are not allowed in a bundle".into()),
            tar::EntryType::Char | tar::EntryType::Block => {
                problem("refused: device nodes are not allowed in a bundle".into())
            }
            tar::EntryType::Fifo => problem("refused: FIFOs are not allowed in a bundle".into()),
            other => problem(format!("refused: unsupported member type {other:?}")),
        }
    }
    for f in &index.files {
        if !seen.contains(&f.path) {
            problems.push(Problem {
                path: Some(f.path.clone()),
                message: "is in the index but missing from the archive".into(),
            });
        }
    }
    // The rest of the decompressed stream is tar padding; reading it checks the zstd frame checksum.
    let mut rest = archive.into_inner();
    if let Err(e) = io::copy(&mut rest, &mut io::sink()) {
        problems.push(Problem {
            path: None,
            message: format!("corrupt compressed stream after the last member: {e}"),
        });
    }
    Ok(Some(index))
}

/// Read only the index of a bundle (its first member), without verifying the rest.
pub fn read_index(path: &Path) -> Result<Index> {
    let origin = path.display().to_string();
    let f = File::open(path).at(path)?;
    let decoder = zstd::stream::read::Decoder::new(f).at(path)?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries().at(path)?;
    let mut entry = match entries.next() {
        Some(Ok(e)) => e,
        Some(Err(e)) => return Err(Error::bundle(origin, format!("corrupt archive: {e}"))),
        None => return Err(Error::bundle(origin, "the bundle is empty")),
    };
    if &*entry.path_bytes() != INDEX_NAME.as_bytes() {
        return Err(Error::bundle(origin, format!("the first member is not {INDEX_NAME}")));
    }
    if entry.header().size().unwrap_or(u64::MAX) > MAX_INDEX_BYTES {
        return Err(Error::bundle(
            origin,
            format!("{INDEX_NAME} is larger than {MAX_INDEX_BYTES} bytes"),
        ));
    }
    let mut buf = Vec::new();
    entry
        .read_to_end(&mut buf)
        .map_err(|e| Error::bundle(&origin, format!("corrupt archive in {INDEX_NAME}: {e}")))?;
    Index::from_json(&buf, &origin)
}
