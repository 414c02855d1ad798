//! Bundle updates in place (`kiln-firstboot update`), into a temporary node root with the
//! recording system: bad input refused before anything is written, a bundle activated at once and
//! kept across boots, a failed health check rolled back and not tried again, a trial at the next
//! boot promoted when healthy, a boot that never reaches the health check falling back, and an
//! update killed after any step ending, when run again, as a clean update does.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kiln_firstboot::activate::{self, Options, Outcome, Phase, Step};
use kiln_firstboot::system::Recording;
use kiln_firstboot::update::{update, At, Selection, Updated};

const V1: &str = "1.36.4-1";
const V2: &str = "1.36.4-2";
const V3: &str = "1.36.4-3";

fn opts() -> Options {
    let mut o = Options::default();
    o.endpoints.timeout = std::time::Duration::from_secs(5);
    o.endpoints.retries = 1;
    o
}

fn phase(p: Phase) -> Options {
    Options { phase: p, ..opts() }
}

fn current(root: &Path) -> String {
    std::fs::read_link(root.join("var/lib/kiln/current"))
        .unwrap()
        .display()
        .to_string()
}

fn state(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("var/lib/kiln/state.json")).unwrap()).unwrap()
}

/// A node root on bundle `first`, activated and healthy.
fn node_on(dir: &Path, first: &Path) -> (PathBuf, Recording) {
    let root = node_root(dir, first);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let mut sys = Recording::new(&root);
    activate::run(&root, &mut sys, &opts()).unwrap();
    (root, sys)
}

fn staged(version: &str) -> String {
    format!("var/lib/kiln/staged/{version}/k8s-node-{version}-amd64.kiln.tar.zst")
}

#[test]
fn an_update_is_verified_first_activated_at_once_and_kept_across_boots() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let v1 = build_bundle(tmp.path(), &mirror, V1, true, "");
    let v2 = build_bundle(tmp.path(), &mirror, V2, true, "");
    let (root, mut sys) = node_on(&tmp.path().join("node"), &v1);
    let before = tree(&root);

    // A wrong digest beside the bundle, no digest, and a file that is no bundle: refused, naming
    // the file, with nothing written.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let wrong = bad.join(v2.file_name().unwrap());
    std::fs::copy(&v2, &wrong).unwrap();
    let sum = |p: &Path| PathBuf::from(format!("{}.sha256", p.display()));
    std::fs::copy(sum(&v1), sum(&wrong)).unwrap();
    let e = format!("{:#}", update(&root, &mut sys, &wrong, At::Now, &opts()).unwrap_err());
    assert!(e.contains(&format!("refusing bundle {}", wrong.display())), "{e}");
    std::fs::remove_file(sum(&wrong)).unwrap();
    let e = format!("{:#}", update(&root, &mut sys, &wrong, At::Now, &opts()).unwrap_err());
    assert!(e.contains(&format!("cannot read {}", sum(&wrong).display())), "{e}");
    let junk = bad.join("junk.kiln.tar.zst");
    std::fs::write(&junk, b"not a bundle").unwrap();
    let e = format!("{:#}", update(&root, &mut sys, &junk, At::Now, &opts()).unwrap_err());
    assert!(e.contains(&format!("refusing bundle {}", junk.display())), "{e}");
    assert_eq!(tree(&root), before, "nothing written for bad input");

    // The good bundle: staged, activated, healthy, selected.
    let done = update(&root, &mut sys, &v2, At::Now, &opts()).unwrap();
    assert_eq!(
        done,
        Updated::Activated {
            version: V2.into(),
            staged: format!("/{}", staged(V2)),
            previous: V1.into()
        }
    );
    assert_eq!(current(&root), format!("bundles/{V2}"));
    assert_eq!(state(&root)["result"], "ok");
    let sel = Selection::load(&root).unwrap();
    assert_eq!(sel.bundle.as_deref(), Some(staged(V2).as_str()), "{sel:?}");
    assert!(sel.trial.is_none(), "{sel:?}");
    assert!(
        sys.calls.iter().any(|c| c == "restart kubelet.service"),
        "{:?}",
        sys.calls
    );

    // The next boot keeps it (the baked bundle is still v1), and the same update again is a no-op.
    let again = activate::run(&root, &mut sys, &opts()).unwrap();
    assert_eq!(again, Outcome::AlreadyActive { version: V2.into() });
    assert_eq!(
        update(&root, &mut sys, &v2, At::Now, &opts()).unwrap(),
        Updated::AlreadyActive { version: V2.into() }
    );
}

#[test]
fn an_update_that_fails_its_health_check_rolls_back_and_is_not_tried_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let v1 = build_bundle(tmp.path(), &mirror, V1, true, "");
    let v2 = build_bundle(tmp.path(), &mirror, V2, true, "");
    let (root, mut sys) = node_on(&tmp.path().join("node"), &v1);
    let unit_v1 = std::fs::read_to_string(root.join("etc/systemd/system/kubelet.service")).unwrap();

    sys.unhealthy_versions.insert(V2.into());
    let e = format!("{:#}", update(&root, &mut sys, &v2, At::Now, &opts()).unwrap_err());
    assert!(
        e.contains(&format!("bundle {V2} failed its health check")) && e.contains(&format!("rolled back to {V1}")),
        "{e}"
    );
    assert_eq!(current(&root), format!("bundles/{V1}"));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/systemd/system/kubelet.service")).unwrap(),
        unit_v1
    );
    assert_eq!(Selection::load(&root).unwrap(), Selection::default());
    assert!(
        !root.join("var/lib/kiln/staged").join(V2).exists(),
        "the failed bundle is dropped"
    );

    // The next boot activates v1 again, never v2.
    sys.calls.clear();
    activate::run(&root, &mut sys, &opts()).unwrap();
    assert_eq!(current(&root), format!("bundles/{V1}"));
    assert_eq!(state(&root)["version"], V1);
    assert_eq!(state(&root)["result"], "ok");
}

#[test]
fn a_trial_at_the_next_boot_is_promoted_when_healthy_and_a_boot_that_hangs_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let v1 = build_bundle(tmp.path(), &mirror, V1, true, "");
    let v2 = build_bundle(tmp.path(), &mirror, V2, true, "");
    let v3 = build_bundle(tmp.path(), &mirror, V3, true, "");
    let (root, mut sys) = node_on(&tmp.path().join("node"), &v1);

    // Staged for the next boot: nothing on the running node changes.
    sys.calls.clear();
    let done = update(&root, &mut sys, &v2, At::NextBoot, &opts()).unwrap();
    assert_eq!(
        done,
        Updated::Staged {
            version: V2.into(),
            staged: format!("/{}", staged(V2))
        }
    );
    assert_eq!(current(&root), format!("bundles/{V1}"));
    assert!(
        !sys.calls
            .iter()
            .any(|c| c.contains("start") || c.contains("daemon-reload")),
        "{:?}",
        sys.calls
    );
    assert_eq!(Selection::load(&root).unwrap().trial.unwrap().tries_left, 1);

    // The boot: the activate unit takes the trial (its one try), the health unit promotes it.
    let boot = activate::run(&root, &mut sys, &phase(Phase::Activate)).unwrap();
    assert_eq!(boot, Outcome::Activated { version: V2.into() });
    assert_eq!(Selection::load(&root).unwrap().trial.unwrap().tries_left, 0);
    activate::run(&root, &mut sys, &phase(Phase::Health)).unwrap();
    let sel = Selection::load(&root).unwrap();
    assert_eq!(sel.bundle.as_deref(), Some(staged(V2).as_str()), "{sel:?}");
    assert!(sel.trial.is_none());
    assert_eq!(state(&root)["result"], "ok");

    // v3 for the next boot, and that boot hangs before its health check (a kernel panic, a
    // kubelet that wedges the machine): the boot after it falls back to v2 and drops v3.
    update(&root, &mut sys, &v3, At::NextBoot, &opts()).unwrap();
    activate::run(&root, &mut sys, &phase(Phase::Activate)).unwrap();
    assert_eq!(current(&root), format!("bundles/{V3}"));
    let after_hang = activate::run(&root, &mut sys, &phase(Phase::Activate)).unwrap();
    assert_eq!(after_hang, Outcome::Activated { version: V2.into() });
    assert_eq!(current(&root), format!("bundles/{V2}"));
    activate::run(&root, &mut sys, &phase(Phase::Health)).unwrap();
    let sel = Selection::load(&root).unwrap();
    assert_eq!(sel.bundle.as_deref(), Some(staged(V2).as_str()), "{sel:?}");
    assert!(sel.trial.is_none(), "{sel:?}");
    assert!(!root.join("var/lib/kiln/staged").join(V3).exists(), "v3 dropped");
    assert!(root.join(staged(V2)).is_file(), "v2 kept: the selected bundle");
    assert_eq!(state(&root)["version"], V2);
    assert_eq!(state(&root)["result"], "ok");
}

#[test]
fn an_update_killed_after_any_step_and_run_again_ends_as_a_clean_update() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let v1 = build_bundle(tmp.path(), &mirror, V1, true, "");
    let v2 = build_bundle(tmp.path(), &mirror, V2, true, "");
    let (clean, mut sys) = node_on(&tmp.path().join("clean"), &v1);
    update(&clean, &mut sys, &v2, At::Now, &opts()).unwrap();
    let expected = tree(&clean);

    for &step in Step::ALL {
        let dir = tmp.path().join(format!("at-{}", step.name()));
        let (root, mut sys) = node_on(&dir, &v1);
        let killed = Options {
            stop_after: Some(step),
            ..opts()
        };
        let first = update(&root, &mut sys, &v2, At::Now, &killed).unwrap();
        let want = if step == Step::State {
            Updated::Activated {
                version: V2.into(),
                staged: format!("/{}", staged(V2)),
                previous: V1.into(),
            }
        } else {
            Updated::Stopped { version: V2.into() }
        };
        assert_eq!(first, want, "after {step:?}");
        update(&root, &mut sys, &v2, At::Now, &opts()).unwrap();
        assert_eq!(
            tree(&root),
            expected,
            "after stopping at {step:?}, the update run again differs from a clean one"
        );
    }

    // Killed, and the machine rebooted instead: the boot falls back to v1.
    let (root, mut sys) = node_on(&tmp.path().join("rebooted"), &v1);
    let killed = Options {
        stop_after: Some(Step::Install),
        ..opts()
    };
    update(&root, &mut sys, &v2, At::Now, &killed).unwrap();
    assert_eq!(
        current(&root),
        format!("bundles/{V2}"),
        "killed between the flip and the health check"
    );
    activate::run(&root, &mut sys, &phase(Phase::Activate)).unwrap();
    activate::run(&root, &mut sys, &phase(Phase::Health)).unwrap();
    assert_eq!(current(&root), format!("bundles/{V1}"));
    assert_eq!(state(&root)["version"], V1);
    assert_eq!(Selection::load(&root).unwrap(), Selection::default());
}

#[test]
fn with_a_public_key_only_a_signed_update_is_staged() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let v1 = build_bundle(tmp.path(), &mirror, V1, true, "");
    let v2 = build_bundle(tmp.path(), &mirror, V2, true, "");
    let (sk, pk) = kiln_builder::signing::keygen(&tmp.path().join("k"), None, true).unwrap();
    let pk = std::fs::read_to_string(pk).unwrap().lines().nth(1).unwrap().to_string();
    let root = node_root(&tmp.path().join("node"), &v1);
    write(
        &root,
        "etc/kiln/node.yaml",
        &format!("{NODE_SECTION}bundlePublicKey: {pk}\n"),
    );
    let baked = root.join("usr/lib/kiln/bundles").join(v1.file_name().unwrap());
    kiln_builder::signing::sign_file(&baked, &sk, None, "test").unwrap();
    let mut sys = Recording::new(&root);
    activate::run(&root, &mut sys, &opts()).unwrap();
    let before = tree(&root);

    let e = format!("{:#}", update(&root, &mut sys, &v2, At::NextBoot, &opts()).unwrap_err());
    assert!(e.contains(".minisig"), "{e}");
    assert_eq!(tree(&root), before, "nothing staged");

    kiln_builder::signing::sign_file(&v2, &sk, None, "test").unwrap();
    update(&root, &mut sys, &v2, At::NextBoot, &opts()).unwrap();
    assert!(
        root.join(format!("{}.minisig", staged(V2))).is_file(),
        "the signature is staged with the bundle"
    );
}

#[test]
fn in_verity_mode_a_trial_that_fails_at_boot_falls_back_in_the_same_boot() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let v1 = build_bundle(tmp.path(), &mirror, V1, true, "  verity: true\n");
    let v2 = build_bundle(tmp.path(), &mirror, V2, true, "  verity: true\n");
    let (root, mut sys) = node_on(&tmp.path().join("node"), &v1);
    assert_eq!(state(&root)["mode"], "verity");
    update(&root, &mut sys, &v2, At::NextBoot, &opts()).unwrap();
    assert!(
        root.join(format!("{}.verity", staged(V2))).is_file(),
        "the verity image is staged with the bundle"
    );

    // The reboot: nothing is mounted any more, v1's directory is an empty mount point, so the
    // links have nothing to flip back to.
    sys.mounted.clear();
    sys.active.clear();
    let v1_dir = root.join("var/lib/kiln/bundles").join(V1);
    std::fs::remove_dir_all(&v1_dir).unwrap();
    std::fs::create_dir(&v1_dir).unwrap();
    sys.unhealthy_versions.insert(V2.into());
    activate::run(&root, &mut sys, &phase(Phase::Activate)).unwrap();
    assert_eq!(current(&root), format!("bundles/{V2}"));
    let e = format!(
        "{:#}",
        activate::run(&root, &mut sys, &phase(Phase::Health)).unwrap_err()
    );
    assert!(
        e.contains(&format!("bundle {V2} failed its health check")) && e.contains(&format!("activated {V1} again")),
        "{e}"
    );
    assert_eq!(current(&root), format!("bundles/{V1}"));
    assert!(
        sys.mounted.contains(&v1_dir),
        "v1's image mounted again: {:?}",
        sys.mounted
    );
    assert!(sys.active.contains("kubelet.service"), "{:?}", sys.active);
    let s = state(&root);
    assert_eq!(
        (s["version"].as_str(), s["result"].as_str()),
        (Some(V1), Some("ok")),
        "{s}"
    );
    assert_eq!(Selection::load(&root).unwrap(), Selection::default());
}
