//! User data as the real `cloud-init` tool from Debian makes and checks it: `cloud-init devel
//! make-mime` output is read (plain, gzip, base64), and the sample cloud-configs kiln documents pass
//! `cloud-init schema`. Needs cloud-init (scripts/setup installs it; its services are not enabled).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use common::*;
use kiln_firstboot::config::NodeConfig;
use kiln_firstboot::userdata;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/userdata")
        .join(name)
}

fn cloud_init(args: &[&str]) -> std::process::Output {
    Command::new("cloud-init")
        .args(args)
        .output()
        .expect("cloud-init is installed (scripts/setup)")
}

fn make_mime(tmp: &Path) -> Vec<u8> {
    let script = tmp.join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
    let out = cloud_init(&[
        "devel",
        "make-mime",
        "-a",
        &format!("{}:cloud-config", fixture("minimal.yaml").display()),
        "-a",
        &format!("{}:x-kiln-node+yaml", fixture("node-part.yaml").display()),
        "-a",
        &format!("{}:x-shellscript", script.display()),
        "--force",
    ]);
    assert!(
        out.status.success(),
        "make-mime: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn make_mime_output_is_read_plain_gzipped_and_base64() {
    let tmp = tempfile::tempdir().unwrap();
    let mime = make_mime(tmp.path());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&mime).unwrap();
    let gz = gz.finish().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&gz).into_bytes();
    for (what, bytes) in [("plain", &mime), ("gzip", &gz), ("base64 of gzip", &b64)] {
        let mut cfg = NodeConfig::default();
        userdata::apply(bytes, "user-data", &mut cfg).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(cfg.node.hostname.as_deref(), Some("worker-8"), "{what}");
        assert_eq!(cfg.node.node_ip.as_deref(), Some("10.8.0.209"), "{what}");
        assert_eq!(cfg.node.cluster_dns.as_deref(), Some("10.96.0.10"), "{what}");
        assert_eq!(cfg.sources.len(), 2, "{what}: the script part is ignored");
    }
}

#[test]
fn sample_cloud_configs_are_valid_for_cloud_init_and_kiln() {
    for name in ["full.yaml", "minimal.yaml"] {
        let out = cloud_init(&["schema", "-c", fixture(name).to_str().unwrap()]);
        assert!(
            out.status.success(),
            "cloud-init schema {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cfg = NodeConfig::default();
        userdata::apply(&std::fs::read(fixture(name)).unwrap(), name, &mut cfg).unwrap();
    }
    let mut cfg = NodeConfig::default();
    userdata::apply(&std::fs::read(fixture("full.yaml")).unwrap(), "full.yaml", &mut cfg).unwrap();
    assert_eq!(
        cfg.node.hostname.as_deref(),
        Some("worker-7.pool-a.example.internal"),
        "fqdn wins, as in cloud-init"
    );
    assert_eq!(cfg.write_files.len(), 2);
    assert_eq!(cfg.write_files[0].content, b"hello from kiln\n");
    assert!(cfg.write_files[1].append);

    // Broken for cloud-init, broken for kiln: both say so.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "#cloud-config\nhostname: worker\nwrite_files: 3\n").unwrap();
    assert!(!cloud_init(&["schema", "-c", bad.to_str().unwrap()]).status.success());
    let mut cfg = NodeConfig::default();
    let e = userdata::apply(&std::fs::read(&bad).unwrap(), "bad.yaml", &mut cfg)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("bad.yaml:3:") && e.contains("write_files"), "{e}");
}

#[test]
fn activation_from_a_make_mime_nocloud_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let root = node_root(tmp.path(), &bundle);
    let seed = root.join("var/lib/cloud/seed/nocloud");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("user-data"), make_mime(tmp.path())).unwrap();
    std::fs::write(seed.join("meta-data"), "instance-id: i-1\nlocal-hostname: ignored\n").unwrap();
    let mut sys = kiln_firstboot::system::Recording::new(&root);
    kiln_firstboot::activate::run(&root, &mut sys, &Default::default()).unwrap();
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/kubelet.service")).unwrap();
    assert!(
        unit.contains("--node-ip=10.8.0.209") && unit.contains("--hostname-override=worker-8"),
        "{unit}"
    );
}

/// The README's make-mime command line, run as written (from a shell, in a directory holding the two
/// files it names), gives user data kiln reads; without `--force` make-mime refuses kiln's type, as
/// the README says.
#[test]
fn the_readmes_make_mime_command_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("cloud-init devel make-mime "))
        .expect("the README shows a make-mime command");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("minimal.yaml"), tmp.path().join("cloud-config.yaml")).unwrap();
    std::fs::copy(fixture("node-part.yaml"), tmp.path().join("node.yaml")).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
    let mut cfg = NodeConfig::default();
    userdata::apply(
        &std::fs::read(tmp.path().join("user-data")).unwrap(),
        "user-data",
        &mut cfg,
    )
    .unwrap();
    assert_eq!(cfg.node.node_ip.as_deref(), Some("10.8.0.209"));

    let unforced = line.replace(" --force", "");
    let out = Command::new("sh")
        .arg("-c")
        .arg(&unforced)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "make-mime took kiln's type without --force");
    assert!(String::from_utf8_lossy(&out.stderr).contains("may be incorrect"));
}
