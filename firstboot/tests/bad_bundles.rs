//! A bad bundle is refused and nothing of it is activated: no `current` link, no bundle directory,
//! no staging directory left, no service started.

mod common;

use std::path::Path;

use common::*;
use kiln_bundle::digest::Sha256;
use kiln_bundle::index::{EntryKind, FileRecord, Index, INDEX_NAME};
use kiln_bundle::mode::Mode;
use kiln_firstboot::activate::{self, Options};
use kiln_firstboot::system::Recording;

fn try_activate(dir: &Path, bytes: &[u8], fix_digest: bool) -> String {
    let good = std::fs::read_dir(dir.join("out-1.36.4-1"))
        .unwrap()
        .flatten()
        .find(|e| e.path().to_string_lossy().ends_with(".zst"))
        .unwrap()
        .path();
    let t = tempfile::tempdir().unwrap();
    let root = node_root(t.path(), &good);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let baked = root.join("usr/lib/kiln/bundles").join(good.file_name().unwrap());
    std::fs::write(&baked, bytes).unwrap();
    if fix_digest {
        // The outer digest matches the bad bytes, so the content checks must catch them.
        let sum = format!("{}  x\n", Sha256::of(bytes).hex());
        std::fs::write(format!("{}.sha256", baked.display()), sum).unwrap();
    }
    let mut sys = Recording::new(&root);
    let e = activate::run(&root, &mut sys, &Options::default()).unwrap_err();
    let kiln = root.join("var/lib/kiln");
    assert!(!kiln.join("current").exists(), "nothing is activated");
    let left: Vec<_> = std::fs::read_dir(kiln.join("bundles"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no bundle or staging directory is left: {left:?}");
    assert!(!sys.calls.iter().any(|c| c.starts_with("start")), "no service starts");
    format!("{e:#}")
}

struct Evil(tar::Builder<Vec<u8>>);

impl Evil {
    fn new(index: &Index) -> Evil {
        let mut e = Evil(tar::Builder::new(Vec::new()));
        e.raw(INDEX_NAME, tar::EntryType::Regular, 0o644, &index.to_json(), None);
        e
    }
    fn raw(&mut self, name: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>) {
        let link = link.map(str::as_bytes);
        assert!(kiln_testkit::hostile::raw_entry(
            &mut self.0,
            name.as_bytes(),
            kind,
            mode,
            data,
            link
        ));
    }
    fn finish(self) -> Vec<u8> {
        zstd::encode_all(&self.0.into_inner().unwrap()[..], 3).unwrap()
    }
}

fn small_index(index: &Index) -> Index {
    let mut i = index.clone();
    i.files = vec![FileRecord {
        path: "bin/x".into(),
        kind: EntryKind::File,
        mode: Mode(0o755),
        size: 1,
        sha256: Some(Sha256::of(b"x")),
        target: None,
        component: None,
    }];
    i.placeholders.clear();
    i
}

#[test]
fn every_kind_of_bad_bundle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let good = std::fs::read(&bundle).unwrap();
    let index = kiln_bundle::reader::read_index(&bundle).unwrap();

    // A flipped byte: against the baked digest, and with a digest recomputed over the bad bytes.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    let e = try_activate(tmp.path(), &flipped, false);
    // Where the flip lands decides which check sees it first: a member's digest, or zstd's frame.
    assert!(
        e.starts_with("refusing bundle") && (e.contains("content does not match the index") || e.contains("corrupt")),
        "{e}"
    );
    let e = try_activate(tmp.path(), &flipped, true);
    assert!(e.contains("refusing bundle"), "{e}");

    // Truncated.
    let e = try_activate(tmp.path(), &good[..good.len() * 2 / 3], true);
    assert!(
        e.contains("refusing bundle") && (e.contains("truncated") || e.contains("corrupt") || e.contains("missing")),
        "{e}"
    );

    let small = small_index(&index);
    let base = |extra: &dyn Fn(&mut Evil)| {
        let mut ev = Evil::new(&small);
        ev.raw("bin/", tar::EntryType::Directory, 0o755, b"", None);
        ev.raw("bin/x", tar::EntryType::Regular, 0o755, b"x", None);
        extra(&mut ev);
        ev.finish()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "is not in the index",
            base(&|e| e.raw("bin/extra", tar::EntryType::Regular, 0o755, b"y", None)),
        ),
        (
            "contains `..`",
            base(&|e| e.raw("../../etc/evil", tar::EntryType::Regular, 0o644, b"y", None)),
        ),
        (
            "is absolute",
            base(&|e| e.raw("/etc/evil", tar::EntryType::Regular, 0o644, b"y", None)),
        ),
        (
            "is not in the index",
            base(&|e| e.raw("bin/esc", tar::EntryType::Symlink, 0o777, b"", Some("../../../etc"))),
        ),
        (
            "hard links are not allowed",
            base(&|e| e.raw("bin/hard", tar::EntryType::Link, 0o644, b"", Some("/etc/shadow"))),
        ),
        (
            "device nodes are not allowed",
            base(&|e| e.raw("bin/null", tar::EntryType::Char, 0o666, b"", None)),
        ),
    ];
    for (want, bytes) in cases {
        let e = try_activate(tmp.path(), &bytes, true);
        assert!(e.contains(want), "want `{want}` in: {e}");
    }
    // A setuid bit the index does not list.
    let mut ev = Evil::new(&small);
    ev.raw("bin/", tar::EntryType::Directory, 0o755, b"", None);
    ev.raw("bin/x", tar::EntryType::Regular, 0o4755, b"x", None);
    let e = try_activate(tmp.path(), &ev.finish(), true);
    assert!(e.contains("setuid/setgid bit not in the index"), "{e}");
    // A setuid file the index lists but no manifest declared: refused before anything is written.
    let mut suid = small.clone();
    suid.files[0].mode = Mode(0o4755);
    let mut ev = Evil::new(&suid);
    ev.raw("bin/", tar::EntryType::Directory, 0o755, b"", None);
    ev.raw("bin/x", tar::EntryType::Regular, 0o4755, b"x", None);
    let e = try_activate(tmp.path(), &ev.finish(), true);
    assert!(e.contains("`bin/x` is setuid/setgid (mode 4755)"), "{e}");
    // An index whose symlink leaves the root.
    let mut esc = small.clone();
    esc.files.push(FileRecord {
        path: "bin/y".into(),
        kind: EntryKind::Symlink,
        mode: Mode(0o777),
        size: 0,
        sha256: None,
        target: Some("../../../etc".into()),
        component: None,
    });
    let e = try_activate(tmp.path(), &Evil::new(&esc).finish(), true);
    assert!(e.contains("leaves the root"), "{e}");
}

#[test]
fn a_signature_is_required_when_a_key_is_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let kp = minisign_keypair(tmp.path());
    let root = node_root(tmp.path(), &bundle);
    write(
        &root,
        "etc/kiln/node.yaml",
        &format!("{NODE_SECTION}bundlePublicKey: {}\n", kp.1),
    );
    // No signature baked: refused.
    let e = activate::run(&root, &mut Recording::new(&root), &Options::default()).unwrap_err();
    assert!(format!("{e:#}").contains(".minisig"), "{e:#}");
    assert!(!root.join("var/lib/kiln/current").exists());
    // Signed with the key: activated.
    let baked = root.join("usr/lib/kiln/bundles").join(bundle.file_name().unwrap());
    kiln_builder::signing::sign_file(&baked, &kp.0, None, "test").unwrap();
    activate::run(&root, &mut Recording::new(&root), &Options::default()).unwrap();
}

/// `(secret key path, public key base64)`
fn minisign_keypair(dir: &Path) -> (std::path::PathBuf, String) {
    let (sk, pk) = kiln_builder::signing::keygen(&dir.join("k"), None, true).unwrap();
    let text = std::fs::read_to_string(pk).unwrap();
    (sk, text.lines().nth(1).unwrap().to_string())
}
