//! `kiln lock` / `--locked`, `kiln verify` on damaged bundles, `kiln diff`, and manifest errors.

mod common;

use std::path::Path;

use common::*;

fn build(cache: &Path, manifest: &Path, out: &Path, flags: &[String], extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "build",
        manifest.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--arch",
        "amd64",
    ];
    args.extend(flags.iter().map(String::as_str));
    args.extend(extra);
    kiln(cache, &args)
}

#[test]
fn lock_then_locked_build_and_disagreement() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let cache = tmp.path().join("cache");
    let flags = mirror_args(&mirror);
    let out = tmp.path().join("out");

    let err = fails(&build(&cache, &manifest, &out, &flags, &["--locked"]));
    assert!(
        err.contains("--locked:") && err.contains("k8s-standin.yaml.lock does not exist"),
        "{err}"
    );

    let mut args = vec!["lock", manifest.to_str().unwrap()];
    args.extend(flags.iter().map(String::as_str));
    let stdout = ok(&kiln(&cache, &args));
    assert!(stdout.contains("10 artifacts locked"), "{stdout}");
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("k8s-standin.yaml.lock")).unwrap()).unwrap();
    let first = &lock["artifacts"][0];
    assert_eq!(first["component"], "runc");
    assert_eq!(
        first["source"],
        "https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64"
    );
    assert!(first["size"].as_u64().unwrap() > 0);

    ok(&build(&cache, &manifest, &out, &flags, &["--locked", "--offline"]));

    // Change a pinned version in the manifest: the lock no longer agrees.
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("version: \"1.36.0\"", "version: \"1.36.1\"");
    std::fs::write(&manifest, text).unwrap();
    let out2 = tmp.path().join("out2");
    let err = fails(&build(&cache, &manifest, &out2, &flags, &["--locked"]));
    assert!(
        err.contains("crictl/amd64: version 1.36.1 in the manifest, 1.36.0 in the lock"),
        "{err}"
    );
    assert!(
        err.contains("crictl/amd64: source https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.36.1/"),
        "{err}"
    );
    assert!(listing(&out2).is_empty());
}

#[test]
fn verify_reports_a_flipped_byte_and_a_wrong_outer_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    ok(&build(&cache, &manifest, &out, &mirror_args(&mirror), &[]));
    let bundle = out.join("k8s-node-1.36.4-1-amd64.kiln.tar.zst");
    let good = std::fs::read(&bundle).unwrap();

    // A byte flipped inside the compressed data of some file.
    let mut bad = good.clone();
    let pos = good.len() * 2 / 3;
    bad[pos] ^= 1;
    std::fs::write(&bundle, &bad).unwrap();
    let err = fails(&kiln(&cache, &["verify", bundle.to_str().unwrap()]));
    assert!(err.contains("outer digest mismatch"), "{err}");
    assert!(err.contains("verification failed"), "{err}");

    // Without the .sha256, the per-file checks alone still catch it.
    std::fs::remove_file(out.join("k8s-node-1.36.4-1-amd64.kiln.tar.zst.sha256")).unwrap();
    let err = fails(&kiln(&cache, &["verify", bundle.to_str().unwrap()]));
    assert!(err.contains("verification failed"), "{err}");

    // The good bytes against a wrong digest given on the command line.
    std::fs::write(&bundle, &good).unwrap();
    let err = fails(&kiln(
        &cache,
        &["verify", bundle.to_str().unwrap(), "--sha256", &"0".repeat(64)],
    ));
    assert!(err.contains("outer digest mismatch: expected sha256 0000"), "{err}");
    ok(&kiln(&cache, &["verify", bundle.to_str().unwrap()]));
}

#[test]
fn diff_lists_changed_added_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let cache = tmp.path().join("cache");
    let flags = mirror_args(&mirror);
    let a = tmp.path().join("a");
    ok(&build(&cache, &manifest, &a, &flags, &[]));

    // B: no crictl, an extra file, and a different runc artifact.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let start = text.find("    crictl:").unwrap();
    let mut text = text[..start].to_string();
    text = text.replace("  version: \"1.36.4-1\"", "  version: \"1.36.4-2\"");
    text.push_str("  files:\n    - path: etc/kiln/motd\n      content: \"hello\\n\"\n");
    let runc_path = "/github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64";
    let old = kiln_testkit::standin::production("amd64", SCALE)
        .into_iter()
        .find(|(p, _)| p == runc_path)
        .unwrap()
        .1;
    let new = kiln_testkit::standin::binary(5000, 99);
    mirror.put(runc_path, new.clone());
    text = text.replace(&kiln_testkit::sha256_hex(&old), &kiln_testkit::sha256_hex(&new));
    let m2 = tmp.path().join("b.yaml");
    std::fs::write(&m2, text).unwrap();
    let b = tmp.path().join("b");
    ok(&build(&cache, &m2, &b, &flags, &[]));

    let pa = a.join("k8s-node-1.36.4-1-amd64.kiln.tar.zst");
    let pb = b.join("k8s-node-1.36.4-2-amd64.kiln.tar.zst");
    let json: serde_json::Value = serde_json::from_str(&ok(&kiln(
        &cache,
        &["diff", "-o", "json", pa.to_str().unwrap(), pb.to_str().unwrap()],
    )))
    .unwrap();
    let rows: Vec<String> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c["kind"].as_str().unwrap(),
                c["change"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            )
        })
        .collect();
    assert!(rows.contains(&"component removed crictl".to_string()), "{rows:?}");
    assert!(rows.contains(&"component changed runc".to_string()), "{rows:?}");
    assert!(rows.contains(&"file removed bin/crictl".to_string()), "{rows:?}");
    assert!(rows.contains(&"file added etc/kiln/motd".to_string()), "{rows:?}");
    assert!(rows.contains(&"file changed bin/runc".to_string()), "{rows:?}");
    assert!(rows.contains(&"file changed sbom.spdx.json".to_string()), "{rows:?}");
    assert!(
        !rows.iter().any(|r| r.contains("bin/kubelet")),
        "unchanged files are not listed: {rows:?}"
    );
    let table = ok(&kiln(&cache, &["diff", pa.to_str().unwrap(), pa.to_str().unwrap()]));
    assert_eq!(table.trim(), "no differences");
}

#[test]
fn manifest_errors_name_file_line_column_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("bad.yaml");
    let text = std::fs::read_to_string(production_manifest())
        .unwrap()
        .replace("        format: binary\n", "        format: exe\n");
    std::fs::write(&m, text).unwrap();
    let err = fails(&kiln(
        &tmp.path().join("c"),
        &[
            "build",
            m.to_str().unwrap(),
            "-o",
            tmp.path().join("o").to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains(&format!(
            "{}:17:17: spec.components.runc.source.format: unknown variant `exe`",
            m.display()
        )),
        "{err}"
    );
    assert!(!tmp.path().join("o").exists() || listing(&tmp.path().join("o")).is_empty());

    let err = fails(&kiln(&tmp.path().join("c"), &["build", "/nonexistent/m.yaml"]));
    assert!(err.contains("cannot read manifest /nonexistent/m.yaml"), "{err}");
}
