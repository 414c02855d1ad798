//! The bundle's own containerd (Debian's, through apt) starts from the tree kiln-firstboot
//! activated, with the rendered config (node paths redirected into the test root), and runs a
//! container with the bundle's runc. Needs apt, root and busybox-static (scripts/setup).

mod common;

use common::*;
use kiln_testkit::containerd::Containerd;

#[test]
fn bundle_containerd_runs_a_container_from_the_activated_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(kiln_testkit::workspace_root().join("manifests/debian-12.yaml")).unwrap();
    // This VM lacks CAP_SYS_RESOURCE and systemd is not PID 1 here.
    text.push_str("  config:\n    containerd:\n      restrictOomScoreAdj: true\n      systemdCgroup: false\n");
    let m = tmp.path().join("debian-12.yaml");
    std::fs::write(&m, text).unwrap();
    let out = tmp.path().join("out");
    let cache = tmp.path().join("cache");
    builder_build(&cache, &m, &out, &[]);
    let bundle = out.join("debian12-runtime-1.0.0-amd64.kiln.tar.zst");

    let root = node_root(tmp.path(), &bundle);
    let mut sys = kiln_firstboot::system::Recording::new(&root);
    let outcome = kiln_firstboot::activate::run(&root, &mut sys, &Default::default()).unwrap();
    assert_eq!(
        outcome,
        kiln_firstboot::activate::Outcome::Activated {
            version: "1.0.0".into()
        }
    );
    assert!(root.join("etc/cni/net.d/10-kiln.conflist").is_file());

    let current = root.join("var/lib/kiln/current");
    let rendered = std::fs::read_to_string(current.join("etc/containerd/config.toml")).unwrap();
    let daemon = Containerd::start_rendered(&root, &current, &rendered);
    assert_eq!(daemon.cri_status(), "ok", "{}", daemon.log_text());
    // The real health probe kiln-firstboot uses on a node answers for this containerd.
    use kiln_firstboot::system::System;
    let mut host = kiln_firstboot::system::Host::default();
    host.containerd_healthy(
        &root.join("run/containerd/containerd.sock"),
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    assert!(host
        .containerd_healthy(
            &root.join("run/containerd/nothing.sock"),
            std::time::Duration::from_millis(300)
        )
        .is_err());
    assert_eq!(
        daemon.run_echo(tmp.path(), &daemon.bin.join("runc"), "activated by kiln-firstboot"),
        "activated by kiln-firstboot"
    );
}
