//! `spec.verity`: `kiln build` writes the erofs image with its dm-verity hash tree beside the
//! bundle. Checked with the tools that read them: `veritysetup verify` (userspace, no
//! device-mapper needed) against the root hash in the index, and `fsck.erofs --extract` giving back
//! exactly the index's files. Rebuilt from the same inputs it is the same bytes; a changed byte
//! fails verification; `kiln verify` and `kiln image` refuse an image that is not the bundle's.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kiln_bundle::index::EntryKind;
use kiln_bundle::reader::read_index;
use kiln_bundle::verity::{verity_path, VerityRecord};

fn verity_manifest(dir: &Path) -> (PathBuf, kiln_testkit::mirror::Mirror) {
    let mirror = production_mirror();
    let manifest = standin_manifest(dir, &mirror);
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("\nspec:\n"), "the manifest has a spec: line");
    let out = dir.join("k8s-standin-verity.yaml");
    std::fs::write(&out, text.replacen("\nspec:\n", "\nspec:\n  verity: true\n", 1)).unwrap();
    (out, mirror)
}

fn veritysetup_verify(image: &Path, v: &VerityRecord) -> std::process::Output {
    Command::new("veritysetup")
        .arg("verify")
        .arg(image)
        .arg(image)
        .arg(&v.root_hash)
        .arg(format!("--hash-offset={}", v.data_size))
        .output()
        .expect("veritysetup runs (scripts/setup installs cryptsetup-bin)")
}

/// Every non-directory under `dir`, relative to `base`.
fn walk(base: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(base, &p));
        } else {
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn verity_image_matches_the_index_and_rebuilds_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (manifest, mirror) = verity_manifest(dir);
    let (o, bundle) = build_amd64(dir, &manifest, &mirror, &[]);
    let stdout = ok(&o);
    let index = read_index(&bundle).unwrap();
    let v = index.verity.clone().expect("the index records the verity image");
    let image = verity_path(&bundle);
    assert!(stdout.contains(&v.root_hash), "{stdout}");
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!(bytes.len() as u64, v.size);
    assert_eq!(kiln_testkit::sha256_hex(&bytes), v.sha256.hex());

    // The kernel's check, done in userspace: every block against the signed root hash.
    let out = veritysetup_verify(&image, &v);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The filesystem holds exactly the bundle's tree.
    // (fsck.erofs reads the filesystem's size from its superblock and leaves the hash tree alone.)
    let tree = dir.join("tree");
    run(Command::new("fsck.erofs")
        .arg(format!("--extract={}", tree.display()))
        .arg(&image));
    let inner = std::fs::read(tree.join("kiln-bundle.json")).unwrap();
    assert_eq!(
        inner,
        index.without_verity().to_json(),
        "the index inside, without its own record"
    );
    let mut listed = vec!["kiln-bundle.json".to_string()];
    for f in &index.files {
        listed.push(f.path.clone());
        let p = tree.join(&f.path);
        match f.kind {
            EntryKind::File => {
                let content = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", f.path));
                assert_eq!(
                    Some(kiln_testkit::sha256_hex(&content)),
                    f.sha256.map(|d| d.hex()),
                    "{}",
                    f.path
                );
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, f.mode.0 & 0o777, "{}", f.path);
            }
            EntryKind::Symlink => {
                assert_eq!(
                    std::fs::read_link(&p).unwrap().to_str(),
                    f.target.as_deref(),
                    "{}",
                    f.path
                );
            }
        }
    }
    let mut found = walk(&tree, &tree);
    listed.sort();
    found.sort();
    assert_eq!(found, listed, "nothing more, nothing less");

    // The same inputs, another directory: the same bundle and the same image.
    let again = dir.join("again");
    std::fs::create_dir_all(&again).unwrap();
    let (o2, bundle2) = build_amd64(&again, &manifest, &mirror, &[]);
    ok(&o2);
    assert_eq!(std::fs::read(&bundle2).unwrap(), std::fs::read(&bundle).unwrap());
    assert_eq!(std::fs::read(verity_path(&bundle2)).unwrap(), bytes);
    // Built again in place: up to date, and the image is not built again (the same inode).
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(&image).unwrap().ino();
    let (o3, _) = build_amd64(dir, &manifest, &mirror, &[]);
    let again_out = ok(&o3);
    assert!(
        again_out.contains("up to date") && again_out.contains(&v.root_hash),
        "{again_out}"
    );
    assert_eq!(std::fs::metadata(&image).unwrap().ino(), inode);

    // `kiln verify` checks the image beside the bundle.
    let verified = ok(&kiln(&dir.join("cache"), &["verify", bundle.to_str().unwrap()]));
    assert!(
        verified.contains("verity") && verified.contains(&v.root_hash),
        "{verified}"
    );
    let inspected = ok(&kiln(&dir.join("cache"), &["inspect", bundle.to_str().unwrap()]));
    assert!(
        inspected.contains(&format!("dm-verity root hash {}", v.root_hash)),
        "{inspected}"
    );

    // One byte changed in a file's data: the hash tree no longer verifies, and kiln refuses it.
    let mut bad = bytes.clone();
    let at = (v.data_size / 2) as usize;
    bad[at] ^= 0x40;
    std::fs::write(&image, &bad).unwrap();
    let out = veritysetup_verify(&image, &v);
    assert!(!out.status.success(), "a flipped byte must fail verification");
    let e = fails(&kiln(&dir.join("cache"), &["verify", bundle.to_str().unwrap()]));
    assert!(e.contains("does not match the index") && e.contains(".verity"), "{e}");
    // A build in place is not "up to date" with a changed image: it writes the image again.
    let (o4, _) = build_amd64(dir, &manifest, &mirror, &[]);
    assert!(ok(&o4).contains(" built ("));
    assert_eq!(std::fs::read(&image).unwrap(), bytes);
    std::fs::remove_file(&image).unwrap();
    let e = fails(&kiln(&dir.join("cache"), &["verify", bundle.to_str().unwrap()]));
    assert!(
        e.contains("records a verity image") && e.contains(".verity: No such file"),
        "{e}"
    );
}

#[test]
fn missing_tools_are_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (manifest, mirror) = verity_manifest(dir);
    let out_dir = dir.join("out");
    let mut args = vec![
        "build".to_string(),
        manifest.to_str().unwrap().into(),
        "-o".into(),
        out_dir.to_str().unwrap().into(),
        "--arch".into(),
        "amd64".into(),
    ];
    args.extend(mirror_args(&mirror));
    // A PATH without erofs-utils or cryptsetup.
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .env("KILN_CACHE", dir.join("cache"))
        .env("PATH", &empty)
        .output()
        .unwrap();
    let e = fails(&o);
    assert!(
        e.contains("spec.verity") && e.contains("mkfs.erofs") && e.contains("erofs-utils"),
        "{e}"
    );
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "nothing written: {left:?}");
}
