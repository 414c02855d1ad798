//! Helpers for activation tests: bundles built with the real builder, fake node roots, tree hashes.
#![allow(dead_code)]

pub mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use kiln_testkit::mirror::Mirror;
use kiln_testkit::standin;

pub const SCALE: f64 = 0.002;

/// Build a bundle with the real builder, in process. `extra` is appended to the manifest's spec.
pub fn build_bundle(dir: &Path, mirror: &Mirror, version: &str, with_kubelet: bool, extra: &str) -> PathBuf {
    let mut text = std::fs::read_to_string(kiln_testkit::workspace_root().join("manifests/k8s-1.36.yaml")).unwrap();
    let manifest = kiln_bundle::Manifest::parse(&text, "k8s").unwrap();
    for (_, c) in manifest.spec.components.iter() {
        for (arch, d) in &c.source.sha256 {
            let url = kiln_bundle::manifest::expand(c.source.url.as_deref().unwrap(), &c.version, *arch);
            let path = url.replacen("https://", "/", 1);
            let body = standin::production(arch.as_str(), SCALE)
                .into_iter()
                .find(|(p, _)| *p == path)
                .unwrap()
                .1;
            text = text.replace(&d.hex(), &kiln_testkit::sha256_hex(&body));
        }
    }
    text = text.replace("version: \"1.36.4-1\"", &format!("version: \"{version}\""));
    if !with_kubelet {
        let start = text.find("    kubelet:").unwrap();
        let end = text.find("    crictl:").unwrap();
        text.replace_range(start..end, "");
    }
    text.push_str(extra);
    let m = dir.join(format!("m-{version}.yaml"));
    std::fs::write(&m, text).unwrap();
    let out = dir.join(format!("out-{version}"));
    builder_build(&dir.join("cache"), &m, &out, &standin::mirror_flags(&mirror.url()));
    out.join(format!("k8s-node-{version}-amd64.kiln.tar.zst"))
}

/// `kiln build MANIFEST -o OUT --arch amd64` with `extra` flags, through the builder's command line
/// in process. The one place firstboot's tests call the builder: they activate bundles exactly as
/// `kiln build` writes them (rendered units, containerd config, placeholders), so a change in the
/// builder's output shows here, and a change of its flags is mended here once.
pub fn builder_build(cache: &Path, manifest: &Path, out: &Path, extra: &[String]) {
    let mut args: Vec<String> = ["kiln", "--cache"].iter().map(|s| s.to_string()).collect();
    args.push(cache.display().to_string());
    args.push("build".into());
    args.push(manifest.display().to_string());
    args.extend([
        "-o".to_string(),
        out.display().to_string(),
        "--arch".into(),
        "amd64".into(),
    ]);
    args.extend(extra.iter().cloned());
    kiln_builder::cli::run(kiln_builder::cli::Cli::parse_from(args)).expect("the bundle builds");
}

pub fn production_mirror() -> Mirror {
    let m = Mirror::start();
    for (path, body) in standin::production("amd64", SCALE) {
        m.put(&path, body);
    }
    m
}

/// A node root with `bundle` baked in, an empty kernel command line and no swap.
pub fn node_root(dir: &Path, bundle: &Path) -> PathBuf {
    let root = dir.join("root");
    bake(&root, bundle);
    for (p, c) in [
        ("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/vda2 ro\n"),
        ("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n"),
        ("etc/hostname", "image-default\n"),
    ] {
        std::fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
        std::fs::write(root.join(p), c).unwrap();
    }
    root
}

/// Replace the baked bundle.
pub fn bake(root: &Path, bundle: &Path) {
    let baked = root.join("usr/lib/kiln/bundles");
    let _ = std::fs::remove_dir_all(&baked);
    std::fs::create_dir_all(&baked).unwrap();
    let name = bundle.file_name().unwrap();
    std::fs::copy(bundle, baked.join(name)).unwrap();
    // Images have fixed timestamps; so do these roots, so trees compare equal.
    let f = std::fs::File::options().write(true).open(baked.join(name)).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
        .unwrap();
    let mut sum = bundle.as_os_str().to_owned();
    sum.push(".sha256");
    let mut dest = baked.join(name).into_os_string();
    dest.push(".sha256");
    std::fs::copy(sum, dest).unwrap();
    let image = kiln_bundle::verity::verity_path(bundle);
    if image.is_file() {
        std::fs::copy(&image, kiln_bundle::verity::verity_path(&baked.join(name))).unwrap();
    }
}

pub const NODE_SECTION: &str = "apiServer: https://10.0.0.1:6443\nclusterCA: |\n  -----BEGIN CERTIFICATE-----\n  MIIBfake\n  -----END CERTIFICATE-----\nbootstrapToken: abcdef.0123456789abcdef\nnodeIP: 10.8.0.205\nhostname: worker-1\nclusterDNS: 10.96.0.10\nlabels:\n  pool: blue\n";

pub fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// Every path under `root` with its type, mode, link target and content digest; `state.json` is
/// compared without its timings, and the recording system's files are left out.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if rel.starts_with("run/kiln-recorded") {
            continue;
        }
        let md = std::fs::symlink_metadata(&p).unwrap();
        let mode = md.permissions().mode() & 0o7777;
        if md.file_type().is_symlink() {
            out.insert(rel, format!("link {}", std::fs::read_link(&p).unwrap().display()));
        } else if md.is_dir() {
            out.insert(rel, format!("dir {mode:o}"));
            walk(root, &p, out);
        } else {
            let mut bytes = std::fs::read(&p).unwrap();
            if rel == "var/lib/kiln/state.json" {
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                v["steps"] = serde_json::Value::Null;
                v["uptimeS"] = serde_json::Value::Null;
                // When this run started kubelet: a time, and absent when an earlier run did.
                if let Some(node) = v["node"].as_object_mut() {
                    node.remove("since");
                }
                bytes = serde_json::to_vec(&v).unwrap();
            }
            out.insert(rel, format!("file {mode:o} {}", kiln_testkit::sha256_hex(&bytes)));
        }
    }
}
