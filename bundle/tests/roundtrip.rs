//! Writer and reader together: reproducibility, and every kind of bad bundle the reader must refuse.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};

use kiln_bundle::digest::Sha256;
use kiln_bundle::index::{BuildInfo, EntryKind, FileRecord, Index, INDEX_NAME, SCHEMA_VERSION};
use kiln_bundle::manifest::Arch;
use kiln_bundle::mode::Mode;
use kiln_bundle::reader::{read_bundle, verify_file, Expect, Sink, VerifyOnly};
use kiln_bundle::writer::{write_bundle, Content, WriteOptions};

fn file(path: &str, data: &[u8], mode: u32) -> (FileRecord, Content) {
    (
        FileRecord {
            path: path.into(),
            kind: EntryKind::File,
            mode: Mode(mode),
            size: data.len() as u64,
            sha256: Some(Sha256::of(data)),
            target: None,
            component: None,
        },
        Content::Bytes(data.to_vec()),
    )
}

fn sample() -> (Index, BTreeMap<String, Content>) {
    let big: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes())
        .collect();
    let entries = vec![
        file("bin/containerd", &big, 0o755),
        file("bin/runc", b"#!runc\n", 0o755),
        file("cni/bin/bridge", b"bridge", 0o755),
        file("etc/containerd/config.toml", b"version = 2\n", 0o644),
    ];
    let mut files: Vec<FileRecord> = entries.iter().map(|(r, _)| r.clone()).collect();
    files.push(FileRecord {
        path: "bin/ctr-link".into(),
        kind: EntryKind::Symlink,
        mode: Mode(0o777),
        size: 0,
        sha256: None,
        target: Some("containerd".into()),
        component: None,
    });
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let index = Index {
        schema_version: SCHEMA_VERSION,
        name: "t".into(),
        version: "1.0".into(),
        arch: Arch::Amd64,
        kubernetes_version: "1.36.4".into(),
        components: vec![],
        files,
        placeholders: vec![],
        setid: vec![],
        build: BuildInfo {
            tool: "kiln test".into(),
            source_date_epoch: 1_700_000_000,
            compression: "zstd-3".into(),
        },
        verity: None,
    };
    let contents = entries.into_iter().map(|(r, c)| (r.path, c)).collect();
    (index, contents)
}

fn verify(bytes: &[u8]) -> kiln_bundle::reader::Report {
    read_bundle(bytes, "test", &Expect::default(), &mut VerifyOnly).unwrap()
}

#[test]
fn same_inputs_give_identical_bytes_whatever_the_worker_count() {
    let (index, contents) = sample();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let wa = write_bundle(
        a.path(),
        &index,
        &contents,
        WriteOptions {
            workers: 1,
            cancel: None,
        },
    )
    .unwrap();
    let wb = write_bundle(
        b.path(),
        &index,
        &contents,
        WriteOptions {
            workers: 4,
            cancel: None,
        },
    )
    .unwrap();
    assert_eq!(wa.sha256, wb.sha256);
    assert_eq!(fs::read(&wa.path).unwrap(), fs::read(&wb.path).unwrap());
    let sum = fs::read_to_string(a.path().join("t-1.0-amd64.kiln.tar.zst.sha256")).unwrap();
    assert_eq!(sum, format!("{}  t-1.0-amd64.kiln.tar.zst\n", wa.sha256));
    // No temporary files are left beside the output.
    assert_eq!(fs::read_dir(a.path()).unwrap().count(), 2);
}

#[test]
fn a_written_bundle_verifies_and_gnu_tar_agrees_on_its_layout() {
    let (index, contents) = sample();
    let dir = tempfile::tempdir().unwrap();
    let w = write_bundle(
        dir.path(),
        &index,
        &contents,
        WriteOptions {
            workers: 2,
            cancel: None,
        },
    )
    .unwrap();
    let report = verify_file(
        &w.path,
        &Expect {
            sha256: Some(w.sha256),
            signature: None,
        },
        &mut VerifyOnly,
    )
    .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.index.as_ref(), Some(&index));

    let out = std::process::Command::new("tar")
        .args(["--zstd", "-tvf"])
        .arg(&w.path)
        .output()
        .expect("GNU tar runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = listing.lines().map(|l| l.split_whitespace().nth(5).unwrap()).collect();
    assert_eq!(names[0], INDEX_NAME);
    assert_eq!(
        &names[1..],
        [
            "bin/",
            "bin/containerd",
            "bin/ctr-link",
            "bin/runc",
            "cni/",
            "cni/bin/",
            "cni/bin/bridge",
            "etc/",
            "etc/containerd/",
            "etc/containerd/config.toml"
        ]
    );
    for line in listing.lines() {
        assert!(line.contains(" 0/0 "), "owner is 0/0: {line}");
        assert!(line.contains("2023-11-14"), "mtime is SOURCE_DATE_EPOCH: {line}");
    }
}

#[test]
fn a_flipped_byte_anywhere_is_found() {
    let (index, contents) = sample();
    let dir = tempfile::tempdir().unwrap();
    let w = write_bundle(
        dir.path(),
        &index,
        &contents,
        WriteOptions {
            workers: 1,
            cancel: None,
        },
    )
    .unwrap();
    let good = fs::read(&w.path).unwrap();
    // Flip a byte at 300 positions spread over the compressed file: each flip must be reported, either
    // by the zstd frame checksum, a tar header check, a content digest, or the outer digest.
    for pos in (0..good.len()).step_by(good.len() / 300 + 1) {
        let mut bad = good.clone();
        bad[pos] ^= 0x40;
        let report = read_bundle(
            &bad[..],
            "t",
            &Expect {
                sha256: Some(w.sha256),
                signature: None,
            },
            &mut VerifyOnly,
        )
        .unwrap();
        assert!(!report.is_ok(), "flip at {pos} went unnoticed");
        // And without the outer digest, the content checks alone still catch it.
        let report = verify(&bad);
        assert!(!report.is_ok(), "flip at {pos} unnoticed without the outer digest");
    }
}

/// Build a raw tar stream by hand, with whatever members a hostile bundle might contain.
struct Evil {
    tar: tar::Builder<Vec<u8>>,
}

impl Evil {
    fn new(index: &Index) -> Self {
        let mut e = Evil {
            tar: tar::Builder::new(Vec::new()),
        };
        let json = index.to_json();
        e.raw(INDEX_NAME.as_bytes(), tar::EntryType::Regular, 0o644, &json, None);
        e
    }

    fn raw(&mut self, name: &[u8], kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&[u8]>) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_cksum();
        self.tar.append(&h, data).unwrap();
    }

    fn finish(self) -> Vec<u8> {
        let tar = self.tar.into_inner().unwrap();
        zstd::encode_all(&tar[..], 3).unwrap()
    }
}

fn one_file_index(data: &[u8], mode: u32) -> Index {
    let (mut index, _) = sample();
    index.files = vec![file("bin/x", data, mode).0];
    index
}

fn problems(bytes: &[u8]) -> Vec<String> {
    verify(bytes).problems.iter().map(|p| p.to_string()).collect()
}

/// Records what reached the sink: nothing refused may ever get there.
#[derive(Default)]
struct Recorder(Vec<String>);
impl Sink for Recorder {
    fn dir(&mut self, p: &str) -> kiln_bundle::Result<()> {
        self.0.push(format!("d {p}"));
        Ok(())
    }
    fn file(&mut self, rec: &FileRecord, data: &mut dyn Read) -> kiln_bundle::Result<()> {
        let mut v = Vec::new();
        data.read_to_end(&mut v).unwrap();
        self.0.push(format!("f {}", rec.path));
        Ok(())
    }
    fn symlink(&mut self, rec: &FileRecord, t: &str) -> kiln_bundle::Result<()> {
        self.0.push(format!("l {} {t}", rec.path));
        Ok(())
    }
}

fn sunk(bytes: &[u8]) -> Vec<String> {
    let mut r = Recorder::default();
    read_bundle(bytes, "t", &Expect::default(), &mut r).unwrap();
    r.0
}

#[test]
fn dot_dot_and_absolute_members_are_refused_before_the_sink() {
    for name in [&b"../etc/passwd"[..], b"/etc/passwd", b"bin/../../x"] {
        let index = one_file_index(b"x", 0o755);
        let mut e = Evil::new(&index);
        e.raw(b"bin/", tar::EntryType::Directory, 0o755, b"", None);
        e.raw(b"bin/x", tar::EntryType::Regular, 0o755, b"x", None);
        e.raw(name, tar::EntryType::Regular, 0o644, b"pwned", None);
        let bytes = e.finish();
        let p = problems(&bytes);
        assert!(p.iter().any(|p| p.contains("refused")), "{p:?}");
        assert_eq!(sunk(&bytes), ["d bin", "f bin/x"]);
    }
}

#[test]
fn a_file_not_in_the_index_is_refused() {
    let index = one_file_index(b"x", 0o755);
    let mut e = Evil::new(&index);
    e.raw(b"bin/", tar::EntryType::Directory, 0o755, b"", None);
    e.raw(b"bin/x", tar::EntryType::Regular, 0o755, b"x", None);
    e.raw(b"bin/extra", tar::EntryType::Regular, 0o755, b"y", None);
    let bytes = e.finish();
    assert_eq!(problems(&bytes), ["bin/extra: is not in the index"]);
    assert!(!sunk(&bytes).contains(&"f bin/extra".to_string()));
}

#[test]
fn escaping_symlinks_hardlinks_and_devices_are_refused() {
    let index = one_file_index(b"x", 0o755);
    let mut e = Evil::new(&index);
    e.raw(b"bin/", tar::EntryType::Directory, 0o755, b"", None);
    e.raw(b"bin/x", tar::EntryType::Regular, 0o755, b"x", None);
    e.raw(
        b"bin/esc",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some(b"../../../etc/shadow"),
    );
    e.raw(b"bin/hard", tar::EntryType::Link, 0o644, b"", Some(b"/etc/shadow"));
    e.raw(b"bin/null", tar::EntryType::Char, 0o666, b"", None);
    e.raw(b"bin/blk", tar::EntryType::Block, 0o666, b"", None);
    let bytes = e.finish();
    let p = problems(&bytes).join("\n");
    assert!(p.contains("bin/esc: is not in the index"), "{p}");
    assert!(p.contains("bin/hard: refused: hard links"), "{p}");
    assert!(p.contains("bin/null: refused: device nodes"), "{p}");
    assert!(p.contains("bin/blk: refused: device nodes"), "{p}");
    assert_eq!(sunk(&bytes), ["d bin", "f bin/x"]);

    // An index that itself lists an escaping symlink is refused as a whole.
    let mut index = one_file_index(b"x", 0o755);
    index.files.push(FileRecord {
        path: "bin/y".into(),
        kind: EntryKind::Symlink,
        mode: Mode(0o777),
        size: 0,
        sha256: None,
        target: Some("../../etc".into()),
        component: None,
    });
    let bytes = Evil::new(&index).finish();
    assert!(problems(&bytes)[0].contains("leaves the root"));
}

#[test]
fn a_setuid_bit_not_in_the_index_is_refused() {
    let index = one_file_index(b"x", 0o755);
    let mut e = Evil::new(&index);
    e.raw(b"bin/", tar::EntryType::Directory, 0o755, b"", None);
    e.raw(b"bin/x", tar::EntryType::Regular, 0o4755, b"x", None);
    let bytes = e.finish();
    assert_eq!(
        problems(&bytes),
        ["bin/x: setuid/setgid bit not in the index: mode 4755 differs from the index (0755)"]
    );
    assert_eq!(sunk(&bytes), ["d bin"]);
}

#[test]
fn truncated_bundles_are_reported() {
    let (index, contents) = sample();
    let dir = tempfile::tempdir().unwrap();
    let w = write_bundle(
        dir.path(),
        &index,
        &contents,
        WriteOptions {
            workers: 1,
            cancel: None,
        },
    )
    .unwrap();
    let good = fs::read(&w.path).unwrap();
    for cut in [0, 10, good.len() / 3, good.len() / 2, good.len() - 30, good.len() - 1] {
        let report = verify(&good[..cut]);
        assert!(!report.is_ok(), "cut at {cut} went unnoticed");
    }
}

#[test]
fn trailing_garbage_is_reported() {
    let (index, contents) = sample();
    let dir = tempfile::tempdir().unwrap();
    let w = write_bundle(
        dir.path(),
        &index,
        &contents,
        WriteOptions {
            workers: 1,
            cancel: None,
        },
    )
    .unwrap();
    let mut bytes = fs::read(&w.path).unwrap();
    bytes.write_all(b"garbage").unwrap();
    assert!(!verify(&bytes).is_ok());
}

#[test]
fn a_bundle_whose_first_member_is_not_the_index_is_refused() {
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    t.append_data(&mut h, "bin/x", &b"x"[..]).unwrap();
    let bytes = zstd::encode_all(&t.into_inner().unwrap()[..], 3).unwrap();
    assert!(problems(&bytes)[0].contains("not the index"));
    assert!(!verify(b"not zstd at all").is_ok());
}

#[test]
fn a_cancelled_write_leaves_nothing() {
    let (index, contents) = sample();
    let dir = tempfile::tempdir().unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let e = write_bundle(
        dir.path(),
        &index,
        &contents,
        WriteOptions {
            workers: 1,
            cancel: Some(&cancel),
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("interrupted"), "{e}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_bomb_after_the_last_member_trips_the_trailing_limit() {
    let index = one_file_index(b"x", 0o755);
    let mut e = Evil::new(&index);
    e.raw(b"bin/", tar::EntryType::Directory, 0o755, b"", None);
    e.raw(b"bin/x", tar::EntryType::Regular, 0o755, b"x", None);
    let mut tar = e.tar.into_inner().unwrap();
    tar.extend(std::iter::repeat_n(0u8, 4 << 20));
    let bytes = zstd::encode_all(&tar[..], 3).unwrap();
    assert!(bytes.len() < 64 << 10, "a small file that decompresses to megabytes");
    let p = problems(&bytes);
    assert_eq!(
        p,
        ["more than the limit of 1048576 bytes of data after the last member"]
    );
}

#[test]
fn the_writer_refuses_an_undeclared_setuid_file_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = one_file_index(b"x", 0o4755);
    let contents: BTreeMap<String, Content> = [("bin/x".to_string(), Content::Bytes(b"x".to_vec()))].into();
    let e = write_bundle(dir.path(), &index, &contents, WriteOptions::default()).unwrap_err();
    assert!(e.to_string().contains("`bin/x` is setuid/setgid"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
    index.setid = vec!["bin/x".into()];
    write_bundle(dir.path(), &index, &contents, WriteOptions::default()).unwrap();
}
