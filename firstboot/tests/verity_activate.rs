//! Verity mode, activated into a temporary root with the recording system, whose "mount" does in
//! userspace what the kernel does per read: `veritysetup verify` against the root hash from the
//! verified index, then `fsck.erofs --extract` where the mount would be. The kernel's part (reads
//! failing with EIO, the read-only mount) is proven booted, in the QEMU end to end.
//!
//! - The mounted bundle holds exactly what unpack mode writes, and the node activates from it.
//! - A node without dm-verity unpacks the same bundle, and `kiln-firstboot status` says why;
//!   `--mode verity` there fails before anything is written.
//! - A changed byte in the image refuses the mount, before any link flips.
//! - A run stopped after any step, then run again, ends as a clean run does.
//! - A service that cannot start (as when its binary's blocks fail to read) rolls back like a
//!   failed health check.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kiln_firstboot::activate::{self, ModeRequest, Options, Outcome, Step};
use kiln_firstboot::system::Recording;

const V1: &str = "1.36.4-1";

fn opts() -> Options {
    let mut o = Options::default();
    o.endpoints.timeout = std::time::Duration::from_secs(5);
    o.endpoints.retries = 1;
    o
}

fn verity_bundle(dir: &Path, mirror: &kiln_testkit::mirror::Mirror, version: &str) -> PathBuf {
    let b = build_bundle(dir, mirror, version, true, "  verity: true\n");
    assert!(
        kiln_bundle::verity::verity_path(&b).is_file(),
        "the builder wrote the verity image"
    );
    b
}

fn state(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("var/lib/kiln/state.json")).unwrap()).unwrap()
}

/// The activated tree without the parts that differ by mode on purpose: the index (the image's
/// lacks its own record), the state, and the baked image.
fn comparable(root: &Path) -> BTreeMap<String, String> {
    let mut t = tree(root);
    t.retain(|k, _| !k.ends_with("/kiln-bundle.json") && !k.ends_with("state.json") && !k.ends_with(".verity"));
    t
}

#[test]
fn verity_mode_mounts_the_image_and_the_node_runs_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = verity_bundle(tmp.path(), &mirror, V1);
    let index = kiln_bundle::reader::read_index(&bundle).unwrap();
    let root_hash = index.verity.as_ref().unwrap().root_hash.clone();

    let root = node_root(tmp.path(), &bundle);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let mut sys = Recording::new(&root);
    let r = activate::run(&root, &mut sys, &opts()).unwrap();
    assert_eq!(r, Outcome::Activated { version: V1.into() });
    let want = format!(
        "veritysetup open /usr/lib/kiln/bundles/{}.verity kiln-{V1} (root hash {root_hash}) && mount -o ro /var/lib/kiln/bundles/{V1}",
        bundle.file_name().unwrap().to_string_lossy()
    );
    assert!(sys.calls.contains(&want), "{want}\nnot in {:?}", sys.calls);
    let mount_at = sys.calls.iter().position(|c| *c == want).unwrap();
    let start_at = sys.calls.iter().position(|c| c == "start containerd.service").unwrap();
    assert!(mount_at < start_at, "mounted before containerd starts: {:?}", sys.calls);
    let s = state(&root);
    assert_eq!(s["mode"], "verity", "{s}");
    assert_eq!(s["result"], "ok", "{s}");
    assert!(s.get("modeReason").is_none(), "{s}");
    assert_eq!(
        std::fs::read_link(root.join("var/lib/kiln/current")).unwrap().to_str(),
        Some(format!("bundles/{V1}").as_str())
    );
    let dest = root.join("var/lib/kiln/bundles").join(V1);
    assert!(!root.join(format!("var/lib/kiln/bundles/{V1}.partial")).exists());
    assert_eq!(
        std::fs::read(dest.join("kiln-bundle.json")).unwrap(),
        index.without_verity().to_json()
    );

    // Run again: nothing to do, nothing touched.
    sys.calls.clear();
    let again = activate::run(&root, &mut sys, &opts()).unwrap();
    assert_eq!(again, Outcome::AlreadyActive { version: V1.into() });
    assert!(sys.calls.is_empty(), "{:?}", sys.calls);

    // The same bundle unpacked on another node: the same files, links, units and rendered
    // configuration, byte for byte.
    let other = tempfile::tempdir().unwrap();
    let unpacked = node_root(other.path(), &bundle);
    write(&unpacked, "etc/kiln/node.yaml", NODE_SECTION);
    let mut o = opts();
    o.mode = ModeRequest::Unpack;
    activate::run(&unpacked, &mut Recording::new(&unpacked), &o).unwrap();
    assert_eq!(state(&unpacked)["mode"], "unpack");
    assert_eq!(state(&unpacked)["modeReason"], "--mode unpack");
    assert_eq!(comparable(&unpacked), comparable(&root));

    // The mounted node asked to unpack the same version: refused before anything is written.
    let before = tree(&root);
    let e = format!("{:#}", activate::run(&root, &mut sys, &o).unwrap_err());
    assert!(e.contains("is a mounted verity image"), "{e}");
    assert_eq!(tree(&root), before);
}

#[test]
fn a_node_without_dm_verity_unpacks_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = verity_bundle(tmp.path(), &mirror, V1);
    let root = node_root(tmp.path(), &bundle);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let why = "the kernel has no device-mapper (/dev/mapper/control does not exist)";

    // Asked for verity, the node refuses before writing anything.
    let mut sys = Recording::new(&root);
    sys.no_verity = Some(why.into());
    let mut o = opts();
    o.mode = ModeRequest::Verity;
    let e = format!("{:#}", activate::run(&root, &mut sys, &o).unwrap_err());
    assert!(
        e.contains("--mode verity: cannot mount bundle") && e.contains(why),
        "{e}"
    );
    assert!(!root.join("var/lib/kiln/bundles").exists(), "nothing written");
    assert!(!root.join("var/lib/kiln/state.json").exists());

    // Auto: unpacked, and the state says why.
    let r = activate::run(&root, &mut sys, &opts()).unwrap();
    assert_eq!(r, Outcome::Activated { version: V1.into() });
    let s = state(&root);
    assert_eq!(s["mode"], "unpack");
    assert_eq!(s["modeReason"], why);
    assert!(!sys.calls.iter().any(|c| c.contains("veritysetup")), "{:?}", sys.calls);
    assert!(root.join(format!("var/lib/kiln/bundles/{V1}/bin/kubelet")).is_file());

    let out = Command::new(env!("CARGO_BIN_EXE_kiln-firstboot"))
        .arg("--root")
        .arg(&root)
        .arg("status")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains(&format!("mode      unpack ({why})")), "{shown}");
}

#[test]
fn a_changed_byte_in_the_image_refuses_the_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = verity_bundle(tmp.path(), &mirror, V1);
    let root = node_root(tmp.path(), &bundle);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let baked = root
        .join("usr/lib/kiln/bundles")
        .join(format!("{}.verity", bundle.file_name().unwrap().to_string_lossy()));
    let mut bytes = std::fs::read(&baked).unwrap();
    bytes[4096 * 3] ^= 1;
    std::fs::write(&baked, bytes).unwrap();

    let mut sys = Recording::new(&root);
    let e = format!("{:#}", activate::run(&root, &mut sys, &opts()).unwrap_err());
    assert!(
        e.contains("cannot mount the verity image") && e.contains("veritysetup"),
        "{e}"
    );
    assert!(!root.join("var/lib/kiln/current").exists(), "no link flipped");
    assert!(!sys.calls.iter().any(|c| c.starts_with("start")), "{:?}", sys.calls);
}

#[test]
fn a_service_that_cannot_start_rolls_back_like_a_failed_health_check() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let v1 = verity_bundle(tmp.path(), &mirror, V1);
    let v2 = verity_bundle(tmp.path(), &mirror, "1.36.4-2");
    let root = node_root(tmp.path(), &v1);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let mut sys = Recording::new(&root);
    activate::run(&root, &mut sys, &opts()).unwrap();

    bake(&root, &v2);
    sys.unstartable_versions.insert("1.36.4-2".into());
    let e = format!("{:#}", activate::run(&root, &mut sys, &opts()).unwrap_err());
    assert!(
        e.contains("bundle 1.36.4-2 failed its health check")
            && e.contains("Job for containerd.service failed")
            && e.contains(&format!("rolled back to {V1}")),
        "{e}"
    );
    assert_eq!(
        std::fs::read_link(root.join("var/lib/kiln/current")).unwrap().to_str(),
        Some(format!("bundles/{V1}").as_str())
    );
    let s = state(&root);
    assert_eq!(s["result"], "failed");
    assert_eq!(s["mode"], "verity");
    assert!(sys.active.contains("containerd.service"), "v1's containerd runs again");
}

#[test]
fn stopping_after_any_step_then_rerunning_equals_a_clean_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = verity_bundle(tmp.path(), &mirror, V1);
    let clean_dir = tempfile::tempdir().unwrap();
    let clean = node_root(clean_dir.path(), &bundle);
    write(&clean, "etc/kiln/node.yaml", NODE_SECTION);
    activate::run(&clean, &mut Recording::new(&clean), &opts()).unwrap();
    let expected = tree(&clean);

    for &step in Step::ALL {
        let dir = tempfile::tempdir().unwrap();
        let root = node_root(dir.path(), &bundle);
        write(&root, "etc/kiln/node.yaml", NODE_SECTION);
        // One system for both runs: the same boot, so the first run's mount is still there.
        let mut sys = Recording::new(&root);
        let mut o = opts();
        o.stop_after = Some(step);
        activate::run(&root, &mut sys, &o).unwrap();
        let again = activate::run(&root, &mut sys, &opts()).unwrap();
        assert!(
            matches!(again, Outcome::Activated { .. } | Outcome::AlreadyActive { .. }),
            "after {step:?}: {again:?}"
        );
        let mounts = sys.calls.iter().filter(|c| c.starts_with("veritysetup open")).count();
        assert_eq!(mounts, 1, "after {step:?}, mounted once: {:?}", sys.calls);
        assert_eq!(tree(&root), expected, "after stopping at {step:?}");
    }
}
