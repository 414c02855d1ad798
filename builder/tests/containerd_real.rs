//! The containerd configuration kiln renders (version 2 schema, for Debian's containerd 1.6) is
//! loaded by the real containerd from the bundle, whose CRI plugin comes up, and a container runs
//! with the bundle's own runc from a locally built OCI image. Needs apt (Debian's archive),
//! root, and busybox-static; scripts/setup installs what is missing.

mod common;

use std::process::Command;

use common::*;
use kiln_testkit::containerd::Containerd;

#[test]
fn debian_containerd_loads_the_rendered_config_and_runs_a_container() {
    let tmp = tempfile::tempdir().unwrap();
    // The quickstart manifest with the settings this VM needs: no CAP_SYS_RESOURCE, and systemd is
    // not PID 1 here, so runc uses cgroupfs.
    let mut text = std::fs::read_to_string(kiln_testkit::workspace_root().join("manifests/debian-12.yaml")).unwrap();
    text.push_str("  config:\n    containerd:\n      restrictOomScoreAdj: true\n      systemdCgroup: false\n");
    let manifest = tmp.path().join("debian-12-test.yaml");
    std::fs::write(&manifest, text).unwrap();
    let out = tmp.path().join("out");
    ok(&kiln(
        &tmp.path().join("cache"),
        &["build", manifest.to_str().unwrap(), "-o", out.to_str().unwrap()],
    ));

    let t = tmp.path();
    let current = t.join("current");
    std::fs::create_dir(&current).unwrap();
    let st = Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(out.join("debian12-runtime-1.0.0-amd64.kiln.tar.zst"))
        .arg("-C")
        .arg(&current)
        .status()
        .unwrap();
    assert!(st.success());
    let rendered = std::fs::read_to_string(current.join("etc/containerd/config.toml")).unwrap();
    assert!(
        rendered.starts_with("# Rendered by kiln for containerd 1.6.20 (config version 2).\nversion = 2\n"),
        "{rendered}"
    );
    assert!(rendered.contains("restrict_oom_score_adj = true"), "{rendered}");

    // The same file with its node paths redirected into the test directory.
    std::fs::create_dir_all(t.join("var/lib/kiln")).unwrap();
    std::os::unix::fs::symlink(&current, t.join("var/lib/kiln/current")).unwrap();
    let daemon = Containerd::start_rendered(t, &current, &rendered);
    // The CRI plugin loaded the rendered configuration.
    assert_eq!(daemon.cri_status(), "ok", "{}", daemon.log_text());
    assert_eq!(
        daemon.run_echo(t, &daemon.bin.join("runc"), "hello from a kiln bundle"),
        "hello from a kiln bundle"
    );
}
