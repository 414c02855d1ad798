//! The `kiln-firstboot` binary: the two boot phases, `status`, the one-line failure, a SIGKILL in the
//! middle of unpacking, and its systemd units checked by `systemd-analyze verify`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn firstboot(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-firstboot"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kiln-firstboot failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn boot_phases_then_status() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let root = node_root(tmp.path(), &bundle);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);

    ok(&firstboot(&root, &["run", "--system", "record", "--phase", "activate"]));
    let calls = std::fs::read_to_string(root.join("run/kiln-recorded-calls")).unwrap();
    assert!(
        calls.contains("queue-start containerd.service\n") && calls.contains("queue-start kubelet.service\n"),
        "{calls}"
    );
    assert!(
        !calls.contains("health"),
        "activation does not wait for the services: {calls}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&firstboot(&root, &["status", "-o", "json"]))).unwrap();
    assert_eq!(json["result"], "pending-health");

    ok(&firstboot(&root, &["run", "--system", "record", "--phase", "health"]));
    let table = ok(&firstboot(&root, &["status"]));
    assert!(
        table.contains("version   1.36.4-1") && table.contains("result    ok"),
        "{table}"
    );
    assert!(table.contains("sources   /etc/kiln/node.yaml"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&ok(&firstboot(&root, &["status", "-o", "json"]))).unwrap();
    assert_eq!(json["result"], "ok");
    assert!(json["steps"].as_array().unwrap().iter().any(|s| s["step"] == "health"));

    // `kiln-firstboot status -o json | head -1` with the reader gone: no panic, a quiet end.
    for format in ["json", "table"] {
        kiln_testkit::assert_quiet_on_closed_pipe(
            Command::new(env!("CARGO_BIN_EXE_kiln-firstboot"))
                .arg("--root")
                .arg(&root)
                .args(["status", "-o", format]),
        );
    }

    // A re-run is a no-op.
    let again = firstboot(&root, &["run", "--system", "record"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already active"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn a_failure_is_one_line_naming_what_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let root = node_root(tmp.path(), &bundle);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let baked = root.join("usr/lib/kiln/bundles").join(bundle.file_name().unwrap());
    let mut bytes = std::fs::read(&baked).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 1;
    std::fs::write(&baked, bytes).unwrap();
    let out = firstboot(&root, &["run", "--system", "record"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("kiln-firstboot: FAILED: refusing bundle /") && last.contains("the node was not activated"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().filter(|l| l.contains("FAILED")).count(), 1);
    let status = firstboot(&root, &["status"]);
    assert!(!status.status.success(), "no activation: status fails");
}

#[test]
fn sigkill_while_unpacking_then_rerun_equals_a_clean_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    std::fs::write(tmp.path().join("big.bin"), kiln_testkit::standin::binary(300 << 20, 9)).unwrap();
    let bundle = build_bundle(
        tmp.path(),
        &mirror,
        "1.36.4-1",
        true,
        "  files:\n    - path: share/big.bin\n      from: big.bin\n",
    );

    let clean_dir = tempfile::tempdir().unwrap();
    let clean = node_root(clean_dir.path(), &bundle);
    write(&clean, "etc/kiln/node.yaml", NODE_SECTION);
    ok(&firstboot(&clean, &["run", "--system", "record"]));

    let dir = tempfile::tempdir().unwrap();
    let root = node_root(dir.path(), &bundle);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-firstboot"))
        .arg("--root")
        .arg(&root)
        .args(["run", "--system", "record"])
        .spawn()
        .unwrap();
    let partial = root.join("var/lib/kiln/bundles/1.36.4-1.partial/share");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !partial.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!root.join("var/lib/kiln/current").exists(), "killed before activation");
    ok(&firstboot(&root, &["run", "--system", "record"]));
    assert_eq!(tree(&root), tree(&clean));
}

#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_kiln-firstboot"),
        root.join("usr/bin/kiln-firstboot"),
    )
    .unwrap();
    for (u, text) in kiln_bundle::layout::units::FIRSTBOOT_UNITS {
        std::fs::write(units.join(u), text).unwrap();
    }
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system")
        .arg(root.join("usr/lib/systemd/system"))
        .status()
        .unwrap();
    assert!(st.success());
    for u in ["kiln-firstboot.service", "kiln-firstboot-health.service"] {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(u)
            .output()
            .expect("systemd-analyze is installed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("kiln-firstboot"),
            "{u}: {stderr}"
        );
    }
    let unit = std::fs::read_to_string(units.join("kiln-firstboot.service")).unwrap();
    // Activation comes before the services it queues, the image import included.
    assert!(
        unit.contains("Type=oneshot") && unit.contains("Before=containerd.service kiln-images.service kubelet.service"),
        "{unit}"
    );
}

#[test]
fn update_stages_for_the_next_boot_and_status_shows_the_trial() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let v1 = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let v2 = build_bundle(tmp.path(), &mirror, "1.36.4-2", true, "");
    let root = node_root(tmp.path(), &v1);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    ok(&firstboot(&root, &["run", "--system", "record"]));

    let v2_arg = v2.display().to_string();
    let out = ok(&firstboot(
        &root,
        &[
            "update",
            &v2_arg,
            "--at",
            "next-boot",
            "--system",
            "record",
            "-o",
            "json",
        ],
    ));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["result"], "staged", "{json}");
    assert_eq!(json["version"], "1.36.4-2", "{json}");
    let table = ok(&firstboot(&root, &["status"]));
    assert!(
        table.contains("version   1.36.4-1")
            && table.contains("trial     1.36.4-2 (/var/lib/kiln/staged/1.36.4-2/")
            && table.contains("the next activation takes it"),
        "{table}"
    );

    // The next boot's two phases take it and promote it.
    ok(&firstboot(&root, &["run", "--system", "record", "--phase", "activate"]));
    ok(&firstboot(&root, &["run", "--system", "record", "--phase", "health"]));
    let json: serde_json::Value = serde_json::from_str(&ok(&firstboot(&root, &["status", "-o", "json"]))).unwrap();
    assert_eq!(json["version"], "1.36.4-2", "{json}");
    assert_eq!(json["result"], "ok", "{json}");
    assert!(json["selection"]["trial"].is_null(), "{json}");
    assert!(
        json["selection"]["bundle"]
            .as_str()
            .unwrap()
            .starts_with("var/lib/kiln/staged/1.36.4-2/"),
        "{json}"
    );

    // A wrong path: one line naming it, exit 1.
    let out = firstboot(&root, &["update", "/nonexistent.kiln.tar.zst", "--system", "record"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kiln-firstboot: FAILED:")
            && err.contains("/nonexistent.kiln.tar.zst")
            && err.contains("the update was not completed"),
        "{err}"
    );
}
