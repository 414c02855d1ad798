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
use std::sync::mpsc;

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

/// Check only the raw bytes of a bundle file against `expect` (outer digest, signature), without
/// decompressing it: enough to trust its index, which is all a node that mounts the verity image
/// reads of it. Errors name the file.
pub fn verify_raw(path: &Path, expect: &Expect) -> Result<Sha256> {
    let origin = path.display().to_string();
    let verifier = match expect.signature {
        Some((pk, sig)) => Some(
            pk.verify_stream(sig)
                .map_err(|e| Error::bundle(&origin, format!("signature: {e}")))?,
        ),
        None => None,
    };
    let f = File::open(path).at(path)?;
    let mut tap = RawTap {
        inner: HashingReader::new(BufReader::with_capacity(1 << 20, f)),
        verifier,
    };
    io::copy(&mut tap, &mut io::sink()).at(path)?;
    let RawTap { inner, verifier } = tap;
    let (sha256, _, _) = inner.finish();
    if let Some(expected) = expect.sha256 {
        if expected != sha256 {
            return Err(Error::bundle(
                origin,
                format!("outer digest mismatch: expected sha256 {expected}, got {sha256}"),
            ));
        }
    }
    if let Some(mut v) = verifier {
        v.finalize()
            .map_err(|e| Error::bundle(&origin, format!("signature does not verify: {e}")))?;
    }
    Ok(sha256)
}

/// Read a bundle from `raw`, checking it against `expect` and its own index, and hand each good
/// member to `sink`. Problems with the bundle are collected in the report; an `Err` means the sink
/// failed (for example, the disk it writes to is full).
///
/// Two threads share the work, as `zstd -dc | tar -x` does: one reads the raw bytes (outer digest,
/// signature), decompresses and checks each member's header against the index; the caller's thread
/// hashes each member's content and feeds the sink. Memory stays bounded: a few 1 MiB chunks are in
/// flight at a time.
pub fn read_bundle(raw: impl Read + Send, origin: &str, expect: &Expect, sink: &mut dyn Sink) -> Result<Report> {
    let (tx, rx) = mpsc::sync_channel::<Msg>(CHUNKS_IN_FLIGHT);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || produce(raw, origin, expect, tx, free_rx));
        let mut problems = Vec::new();
        let consumed = consume(&rx, &free_tx, sink, &mut problems);
        // Whatever happened, let the producer finish: it stops when the receiver is gone.
        drop(rx);
        let tail = producer.join().expect("the bundle reader thread does not panic");
        let index = consumed?;
        problems.extend(tail.problems);
        Ok(Report {
            index,
            problems,
            sha256: tail.sha256,
            size: tail.size,
        })
    })
}

const CHUNK: usize = 1 << 20;
const CHUNKS_IN_FLIGHT: usize = 4;

/// From the decoding thread to the caller's thread, in archive order.
enum Msg {
    Begin(Box<Index>),
    Dir(String),
    Symlink(usize),
    /// File `index.files[i]` follows as chunks, then `EndFile` or `ReadError`.
    File(usize),
    /// A full-size buffer and how many of its bytes are content.
    Chunk(Vec<u8>, usize),
    EndFile,
    ReadError(String),
    Problem(Problem),
}

struct Tail {
    problems: Vec<Problem>,
    sha256: Sha256,
    size: u64,
}

fn consume(
    rx: &mpsc::Receiver<Msg>,
    free: &mpsc::Sender<Vec<u8>>,
    sink: &mut dyn Sink,
    problems: &mut Vec<Problem>,
) -> Result<Option<Index>> {
    let mut index: Option<Index> = None;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Begin(i) => {
                sink.begin(&i)?;
                index = Some(*i);
            }
            Msg::Dir(p) => sink.dir(&p)?,
            Msg::Symlink(i) => {
                let rec = &index.as_ref().expect("index first").files[i];
                sink.symlink(rec, rec.target.as_deref().unwrap_or_default())?;
            }
            Msg::File(i) => {
                let rec = &index.as_ref().expect("index first").files[i];
                let mut hr = HashingReader::new(Chunks {
                    rx,
                    free,
                    current: Vec::new(),
                    len: 0,
                    pos: 0,
                    done: false,
                    error: None,
                });
                let sunk = sink.file(rec, &mut hr);
                let drained = io::copy(&mut hr, &mut io::sink());
                let (digest, count, chunks) = hr.finish();
                let problem = |message: String| Problem {
                    path: Some(rec.path.clone()),
                    message,
                };
                // A read error inside the sink is the archive's fault, not the sink's.
                if let Some(e) = chunks.error {
                    problems.push(problem(format!("corrupt or truncated archive: {e}")));
                    continue;
                }
                sunk?;
                if let Err(e) = drained {
                    problems.push(problem(format!("corrupt or truncated archive: {e}")));
                } else if count != rec.size {
                    problems.push(problem(format!("truncated: {count} of {} bytes", rec.size)));
                } else if Some(digest) != rec.sha256 {
                    let expected = rec.sha256.expect("validated index: files have digests");
                    problems.push(problem(format!(
                        "content does not match the index: expected sha256 {expected}, got {digest}"
                    )));
                }
            }
            Msg::Problem(p) => problems.push(p),
            Msg::Chunk(..) | Msg::EndFile | Msg::ReadError(_) => unreachable!("chunks only follow File"),
        }
    }
    Ok(index)
}

/// The content of one member, as the decoding thread sends it.
struct Chunks<'a> {
    rx: &'a mpsc::Receiver<Msg>,
    free: &'a mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    len: usize,
    pos: usize,
    done: bool,
    error: Option<String>,
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Chunk(c, len)) => {
                    let old = std::mem::replace(&mut self.current, c);
                    if !old.is_empty() {
                        let _ = self.free.send(old);
                    }
                    self.len = len;
                    self.pos = 0;
                }
                Ok(Msg::ReadError(e)) => {
                    self.done = true;
                    self.error = Some(e.clone());
                    return Err(io::Error::other(e));
                }
                Ok(Msg::EndFile) | Err(_) => self.done = true,
                Ok(_) => unreachable!("a member's content ends with EndFile or ReadError"),
            }
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn produce(
    raw: impl Read,
    origin: &str,
    expect: &Expect,
    tx: mpsc::SyncSender<Msg>,
    free: mpsc::Receiver<Vec<u8>>,
) -> Tail {
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
    let mut tap = RawTap {
        inner: HashingReader::new(raw),
        verifier,
    };
    match zstd::stream::read::Decoder::new(&mut tap) {
        Ok(decoder) => read_members(decoder, origin, &tx, &free),
        Err(e) => {
            let _ = tx.send(Msg::Problem(Problem {
                path: None,
                message: format!("cannot start zstd decoding: {e}"),
            }));
        }
    }
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
    }
    Tail { problems, sha256, size }
}

/// A member's tar header, as [`check_member`] judges it.
#[derive(Debug, Clone)]
pub struct MemberHeader {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub size: u64,
    pub link: Option<String>,
}

impl MemberHeader {
    fn of<R: Read>(entry: &tar::Entry<'_, R>) -> MemberHeader {
        let h = entry.header();
        MemberHeader {
            name: entry.path_bytes().into_owned(),
            kind: h.entry_type(),
            mode: h.mode().unwrap_or(0),
            size: h.size().unwrap_or(u64::MAX),
            link: entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
        }
    }
}

/// What becomes of one member, decided from its header and the index alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A directory the index lists.
    Dir(String),
    /// The index's file `i`: its content follows.
    File(usize),
    /// The index's symlink `i`.
    Symlink(usize),
    /// Refused: the problem names the member.
    Refused(Problem),
}

/// Judge one member against the index: its name, type, mode, size or link target, and whether it
/// was seen before (`seen` records it). Pure: the reader and the fuzz target share it.
pub fn check_member(index: &Index, dirs: &BTreeSet<String>, seen: &mut BTreeSet<String>, h: &MemberHeader) -> Verdict {
    let Ok(name) = String::from_utf8(h.name.clone()) else {
        return Verdict::Refused(Problem {
            path: Some(String::from_utf8_lossy(&h.name).into_owned()),
            message: "the name is not UTF-8".into(),
        });
    };
    let path = if h.kind == tar::EntryType::Directory {
        name.trim_end_matches('/').to_string()
    } else {
        name.clone()
    };
    let refuse = |message: String| {
        Verdict::Refused(Problem {
            path: Some(name.clone()),
            message,
        })
    };
    if let Err(e) = check_relative(&path) {
        return refuse(format!("refused: {e}"));
    }
    if !seen.insert(path.clone()) {
        return refuse("appears more than once".into());
    }
    let mode = Mode(h.mode & 0o7777);
    let found = || index.files.binary_search_by(|f| f.path.as_str().cmp(&path)).ok();
    match h.kind {
        tar::EntryType::Directory => {
            if !dirs.contains(&path) {
                refuse("directory is not in the index".into())
            } else if mode != Mode::DIR {
                refuse(format!("directory mode {mode} is not {}", Mode::DIR))
            } else {
                Verdict::Dir(path)
            }
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => match found().map(|i| (i, &index.files[i])) {
            None => refuse("is not in the index".into()),
            Some((_, rec)) if rec.kind != EntryKind::File => {
                refuse(format!("is a regular file but the index says {:?}", rec.kind))
            }
            Some((_, rec)) if mode != rec.mode => {
                let what = if mode.is_setid() && !rec.mode.is_setid() {
                    "setuid/setgid bit not in the index: "
                } else {
                    ""
                };
                refuse(format!("{what}mode {mode} differs from the index ({})", rec.mode))
            }
            Some((_, rec)) if h.size != rec.size => {
                refuse(format!("is {} bytes but the index says {}", h.size, rec.size))
            }
            Some((i, _)) => Verdict::File(i),
        },
        tar::EntryType::Symlink => match found() {
            None => refuse("is not in the index".into()),
            Some(i)
                if index.files[i].kind != EntryKind::Symlink
                    || h.link.as_deref() != index.files[i].target.as_deref() =>
            {
                refuse(format!(
                    "symlink to {:?} does not match the index",
                    h.link.clone().unwrap_or_default()
                ))
            }
            Some(i) => Verdict::Symlink(i),
        },
        tar::EntryType::Link => refuse("refused: hard links are not allowed in a bundle".into()),
        tar::EntryType::Char | tar::EntryType::Block => {
            refuse("refused: device nodes are not allowed in a bundle".into())
        }
        tar::EntryType::Fifo => refuse("refused: FIFOs are not allowed in a bundle".into()),
        other => refuse(format!("refused: unsupported member type {other:?}")),
    }
}

/// Why the first member is not a readable index.
#[derive(Debug, thiserror::Error)]
enum IndexMemberError {
    /// The archive has no members.
    #[error("the bundle is empty")]
    Empty,
    /// The tar stream broke before the first member.
    #[error("corrupt or truncated archive: {0}")]
    Corrupt(io::Error),
    /// The first member is something else.
    #[error("the first member is `{0}`, not the index {INDEX_NAME}")]
    NotFirst(String),
    /// The index is larger than any index kiln writes.
    #[error("{INDEX_NAME} is {0} bytes, more than the limit of {MAX_INDEX_BYTES}")]
    TooBig(u64),
    /// The tar stream broke inside the index.
    #[error("corrupt or truncated archive in {INDEX_NAME}: {0}")]
    Truncated(io::Error),
    /// The index was read but is not a valid index.
    #[error("{0}")]
    Invalid(Error),
}

/// The first member, which must be the index: read within its size limit and parsed.
fn index_member<R: Read>(
    first: Option<io::Result<tar::Entry<'_, R>>>,
    origin: &str,
) -> std::result::Result<Index, IndexMemberError> {
    let mut entry = match first {
        None => return Err(IndexMemberError::Empty),
        Some(Err(e)) => return Err(IndexMemberError::Corrupt(e)),
        Some(Ok(entry)) => entry,
    };
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if name != INDEX_NAME || entry.header().entry_type() != tar::EntryType::Regular {
        return Err(IndexMemberError::NotFirst(name));
    }
    let size = entry.header().size().unwrap_or(u64::MAX);
    if size > MAX_INDEX_BYTES {
        return Err(IndexMemberError::TooBig(size));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut buf).map_err(IndexMemberError::Truncated)?;
    Index::from_json(&buf, origin).map_err(IndexMemberError::Invalid)
}

/// Decode the members, check each header against the index, and send the good ones on. Returns
/// early (the caller's thread is gone) when a send fails.
fn read_members<R: Read>(decoder: R, origin: &str, tx: &mpsc::SyncSender<Msg>, free: &mpsc::Receiver<Vec<u8>>) {
    let send = |m: Msg| tx.send(m).is_ok();
    let fatal = |message: String| send(Msg::Problem(Problem { path: None, message }));
    let mut archive = tar::Archive::new(decoder);
    let mut entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            fatal(format!("not a tar stream: {e}"));
            return;
        }
    };
    let index = match index_member(entries.next(), origin) {
        Ok(i) => i,
        Err(e) => {
            fatal(e.to_string());
            return;
        }
    };
    if !send(Msg::Begin(Box::new(index.clone()))) {
        return;
    }

    let dirs: BTreeSet<String> = index.directories().into_iter().map(str::to_string).collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                fatal(format!("corrupt or truncated archive: {e}"));
                return;
            }
        };
        let sent = match check_member(&index, &dirs, &mut seen, &MemberHeader::of(&entry)) {
            Verdict::Refused(p) => send(Msg::Problem(p)),
            Verdict::Dir(path) => send(Msg::Dir(path)),
            Verdict::Symlink(i) => send(Msg::Symlink(i)),
            Verdict::File(i) => send(Msg::File(i)) && stream(&mut entry, &send, free),
        };
        if !sent {
            return;
        }
    }
    for f in &index.files {
        if !seen.contains(&f.path) {
            let p = Problem {
                path: Some(f.path.clone()),
                message: "is in the index but missing from the archive".into(),
            };
            if !send(Msg::Problem(p)) {
                return;
            }
        }
    }
    // The rest of the decompressed stream is tar padding (a few KiB); reading it checks the zstd
    // frame checksum. More than that is refused rather than decompressed without end.
    let mut rest = archive.into_inner().take(MAX_TRAILING_BYTES + 1);
    match io::copy(&mut rest, &mut io::sink()) {
        Err(e) => {
            fatal(format!("corrupt compressed stream after the last member: {e}"));
        }
        Ok(n) if n > MAX_TRAILING_BYTES => {
            fatal(format!(
                "more than the limit of {MAX_TRAILING_BYTES} bytes of data after the last member"
            ));
        }
        Ok(_) => {}
    }
}

/// Send a file's content in chunks, then its end; false when the receiver is gone or reading
/// failed (the failure is sent).
fn stream(entry: &mut impl Read, send: &impl Fn(Msg) -> bool, free: &mpsc::Receiver<Vec<u8>>) -> bool {
    loop {
        // Buffers keep their full size; a fresh one is calloc'ed, a returned one reused.
        let mut buf = free.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        match read_full(entry, &mut buf) {
            Ok(0) => return send(Msg::EndFile),
            Ok(n) => {
                if !send(Msg::Chunk(buf, n)) {
                    return false;
                }
            }
            Err(e) => {
                send(Msg::ReadError(e.to_string()));
                return false;
            }
        }
    }
}

/// Most decompressed bytes after the tar end marker (tar pads to 10 KiB records).
pub const MAX_TRAILING_BYTES: u64 = 1 << 20;

/// Fill `buf` as far as the reader allows; 0 only at the end.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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

#[cfg(test)]
mod member_tests {
    use super::*;
    use crate::index::tests::sample;

    fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64, link: Option<&str>) -> MemberHeader {
        MemberHeader {
            name: name.as_bytes().to_vec(),
            kind,
            mode,
            size,
            link: link.map(str::to_string),
        }
    }

    fn refusal(v: Verdict) -> String {
        match v {
            Verdict::Refused(p) => format!("{}: {}", p.path.unwrap_or_default(), p.message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn each_member_is_judged_by_its_header_against_the_index() {
        use tar::EntryType::{Directory, Fifo, Link, Regular, Symlink};
        let index = sample();
        let dirs: BTreeSet<String> = index.directories().into_iter().map(str::to_string).collect();
        let mut seen = BTreeSet::new();
        let mut check = |h: MemberHeader| check_member(&index, &dirs, &mut seen, &h);
        assert_eq!(
            check(header("bin/", Directory, 0o755, 0, None)),
            Verdict::Dir("bin".into())
        );
        assert_eq!(check(header("bin/a", Regular, 0o755, 1, None)), Verdict::File(0));
        assert_eq!(
            check(header("bin/b", Symlink, 0o777, 0, Some("a"))),
            Verdict::Symlink(1)
        );
        assert_eq!(
            refusal(check(header("bin/a", Regular, 0o755, 1, None))),
            "bin/a: appears more than once"
        );
        let mut seen = BTreeSet::new();
        let mut check = |h: MemberHeader| check_member(&index, &dirs, &mut seen, &h);
        assert!(
            refusal(check(header("bin/a", Regular, 0o4755, 1, None))).contains("setuid/setgid bit not in the index")
        );
        let mut seen = BTreeSet::new();
        let mut check = |h: MemberHeader| check_member(&index, &dirs, &mut seen, &h);
        assert!(refusal(check(header("bin/a", Regular, 0o755, 2, None))).contains("is 2 bytes but the index says 1"));
        assert!(refusal(check(header("bin/b", Symlink, 0o777, 0, Some("/etc")))).contains("does not match the index"));
        assert!(refusal(check(header("../x", Regular, 0o644, 0, None))).starts_with("../x: refused"));
        assert!(refusal(check(header("bin/c", Regular, 0o644, 0, None))).contains("is not in the index"));
        assert!(refusal(check(header("bin/h", Link, 0o644, 0, Some("a")))).contains("hard links"));
        assert!(refusal(check(header("bin/f", Fifo, 0o644, 0, None))).contains("FIFOs"));
        assert!(refusal(check(header("etc/", Directory, 0o755, 0, None))).contains("directory is not in the index"));
        let bad = MemberHeader {
            name: vec![0xff, b'x'],
            ..header("", Regular, 0o644, 0, None)
        };
        assert!(refusal(check(bad)).contains("not UTF-8"));
    }
}
