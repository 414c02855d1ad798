//! The units kiln renders pass the real `systemd-analyze verify`, inside a root laid out as a node
//! would be: the bundle unpacked at /var/lib/kiln/current, its templates rendered at
//! /var/lib/kiln/node, the units installed in /etc/systemd/system. Needs systemd-analyze (Debian's
//! systemd package; installed by scripts/setup).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use kiln_bundle::placeholder;

fn sample_values() -> BTreeMap<String, String> {
    [
        ("node-ip", "10.8.0.205"),
        ("hostname", "worker-1"),
        (
            "node-labels",
            "kiln.dev/bundle-version=1.36.4-1,kiln.dev/bundle-digest=0123456789ab",
        ),
        ("node-taints", ""),
        ("register-with-taints", "[]"),
        ("cluster-dns", "10.96.0.10"),
        ("api-server", "https://10.0.0.1:6443"),
        (
            "cluster-ca",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        ),
        ("bootstrap-token", "abcdef.0123456789abcdef"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success());
}

#[test]
fn rendered_units_pass_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let (o, bundle) = build_amd64(tmp.path(), &manifest, &mirror, &[]);
    ok(&o);
    let index = kiln_bundle::reader::read_index(&bundle).unwrap();

    // The index lists every placeholder with its files; the token is secret.
    let names: Vec<(&str, bool)> = index.placeholders.iter().map(|p| (p.name.as_str(), p.secret)).collect();
    assert_eq!(
        names,
        [
            ("api-server", false),
            ("bootstrap-token", true),
            ("cluster-ca", false),
            ("cluster-dns", false),
            ("hostname", false),
            ("node-ip", false),
            ("node-labels", false),
            // Taints reach kubelet through its configuration, not the deprecated flag.
            ("register-with-taints", false)
        ]
    );
    assert_eq!(
        index.file("etc/kubelet/bootstrap-kubeconfig").unwrap().mode.to_string(),
        "0600"
    );

    let root = tmp.path().join("root");
    let current = root.join("var/lib/kiln/current");
    let node = root.join("var/lib/kiln/node");
    std::fs::create_dir_all(&current).unwrap();
    let st = Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&bundle)
        .arg("-C")
        .arg(&current)
        .status()
        .unwrap();
    assert!(st.success());
    let values = sample_values();
    for p in &index.placeholders {
        for f in &p.files {
            let text = std::fs::read_to_string(current.join(f)).unwrap();
            let rendered = placeholder::substitute(&text, &values).unwrap();
            let dest = node.join(f);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(dest, rendered).unwrap();
        }
    }
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::copy(
        current.join("systemd/containerd.service"),
        units.join("containerd.service"),
    )
    .unwrap();
    std::fs::copy(node.join("systemd/kubelet.service"), units.join("kubelet.service")).unwrap();
    // The host's own unit library, so targets such as multi-user.target resolve inside the root.
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    copy_dir(
        Path::new("/usr/lib/systemd/system"),
        &root.join("usr/lib/systemd/system"),
    );

    let kubelet = std::fs::read_to_string(units.join("kubelet.service")).unwrap();
    assert!(
        kubelet.contains("After=network-online.target containerd.service\nRequires=containerd.service\n"),
        "{kubelet}"
    );
    assert!(!kubelet.to_lowercase().contains("docker"), "{kubelet}");
    assert!(kubelet.contains("--node-ip=10.8.0.205"), "{kubelet}");
    assert!(
        kubelet.contains("ExecStart=/var/lib/kiln/current/bin/kubelet"),
        "{kubelet}"
    );

    for unit in ["containerd.service", "kubelet.service"] {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(unit)
            .output()
            .expect("systemd-analyze is installed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{unit}: {stderr}");
        assert!(!stderr.contains(unit), "{unit}: {stderr}");
    }

    // The check has teeth: a unit whose binary is missing fails it.
    std::fs::remove_file(current.join("bin/kubelet")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("kubelet.service")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/var/lib/kiln/current/bin/kubelet is not executable"));
}
