//! The production manifest built through a local mirror on 127.0.0.1 that serves stand-in artifacts
//! at the upstream paths, plus every way a download can go wrong.

mod common;

use common::*;
use kiln_testkit::mirror::Fault;
use kiln_testkit::standin;

fn build_args<'a>(manifest: &'a str, out: &'a str, mirror: &'a [String]) -> Vec<&'a str> {
    let mut v = vec!["build", manifest, "-o", out];
    v.extend(mirror.iter().map(String::as_str));
    v
}

#[test]
fn production_manifest_builds_both_architectures_through_the_mirror() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let out = tmp.path().join("out");
    let cache = tmp.path().join("cache");
    let flags = mirror_args(&mirror);
    let stdout = ok(&kiln(
        &cache,
        &build_args(manifest.to_str().unwrap(), out.to_str().unwrap(), &flags),
    ));
    assert!(
        stdout.contains("k8s-node-1.36.4-1-amd64.kiln.tar.zst built"),
        "{stdout}"
    );
    assert!(
        stdout.contains("k8s-node-1.36.4-1-arm64.kiln.tar.zst built"),
        "{stdout}"
    );
    assert_eq!(
        listing(&out),
        [
            "k8s-node-1.36.4-1-amd64.kiln.tar.zst",
            "k8s-node-1.36.4-1-amd64.kiln.tar.zst.sha256",
            "k8s-node-1.36.4-1-arm64.kiln.tar.zst",
            "k8s-node-1.36.4-1-arm64.kiln.tar.zst.sha256"
        ]
    );
    let bundle = out.join("k8s-node-1.36.4-1-amd64.kiln.tar.zst");
    ok(&kiln(&cache, &["verify", bundle.to_str().unwrap()]));

    let json: serde_json::Value = serde_json::from_str(&ok(&kiln(
        &cache,
        &["inspect", "-o", "json", "--files", bundle.to_str().unwrap()],
    )))
    .unwrap();
    let names: Vec<&str> = json["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["runc", "containerd", "cni-plugins", "kubelet", "crictl"]);
    assert_eq!(json["hasKubelet"], true);
    assert_eq!(
        json["components"][0]["source"], "https://github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64",
        "the index keeps the upstream URL, not the mirror"
    );
    let paths: Vec<&str> = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for p in [
        "bin/kubelet",
        "bin/runc",
        "bin/containerd",
        "bin/containerd-shim-runc-v2",
        "bin/ctr",
        "bin/crictl",
        "cni/bin/bridge",
        "cni/bin/host-local",
        "cni/bin/loopback",
        "cni/bin/portmap",
        "sbom.spdx.json",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    let table = ok(&kiln(&cache, &["inspect", bundle.to_str().unwrap()]));
    assert!(table.contains("node (container runtime + kubelet)"), "{table}");

    // The SBOM inside is SPDX 2.3 with every component and its digest.
    let tar = std::process::Command::new("tar")
        .args(["--zstd", "-xOf"])
        .arg(&bundle)
        .arg("sbom.spdx.json")
        .output()
        .unwrap();
    let sbom: serde_json::Value = serde_json::from_slice(&tar.stdout).unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    assert_eq!(sbom["packages"].as_array().unwrap().len(), 5);

    // A second build with nothing changed rewrites nothing and works offline.
    let before = std::fs::metadata(&bundle).unwrap().modified().unwrap();
    let mut args = build_args(manifest.to_str().unwrap(), out.to_str().unwrap(), &flags);
    args.push("--offline");
    let stdout = ok(&kiln(&cache, &args));
    assert!(stdout.contains("amd64.kiln.tar.zst up to date"), "{stdout}");
    assert_eq!(std::fs::metadata(&bundle).unwrap().modified().unwrap(), before);
}

#[test]
fn rebuilding_from_a_cold_cache_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let flags = mirror_args(&mirror);
    let mut digests = Vec::new();
    for i in 0..2 {
        let out = tmp.path().join(format!("out{i}"));
        let cache = tmp.path().join(format!("cache{i}"));
        let mut args = build_args(manifest.to_str().unwrap(), out.to_str().unwrap(), &flags);
        args.extend(["--arch", "arm64"]);
        ok(&kiln(&cache, &args));
        digests.push(std::fs::read_to_string(out.join("k8s-node-1.36.4-1-arm64.kiln.tar.zst.sha256")).unwrap());
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn the_real_production_digests_refuse_stand_ins_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let out = tmp.path().join("out");
    let cache = tmp.path().join("cache");
    let flags = mirror_args(&mirror);
    let err = fails(&kiln(
        &cache,
        &build_args(production_manifest().to_str().unwrap(), out.to_str().unwrap(), &flags),
    ));
    assert!(
        err.contains("component runc (amd64): digest mismatch for http://127.0.0.1:")
            && err.contains("/github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64: expected sha256 f6ae8efc0fa40079e1475e97cbe9d1bd3f106a28d6af78a11d9f1bd565515e60, got "),
        "{err}"
    );
    assert!(listing(&out).is_empty(), "no output: {:?}", listing(&out));
    assert!(
        listing(&cache.join("blobs/sha256")).is_empty(),
        "nothing unverified enters the cache"
    );
    assert!(listing(&cache.join("tmp")).is_empty(), "no partial download is left");
}

#[test]
fn a_truncated_download_is_retried_then_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let out = tmp.path().join("out");
    let flags = mirror_args(&mirror);
    let runc = "/github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64";

    // Cut short twice, then whole: the build succeeds after retrying.
    mirror.set_fault(runc, Fault::TruncateFirst(2, 1000));
    let mut args = build_args(manifest.to_str().unwrap(), out.to_str().unwrap(), &flags);
    args.extend(["--arch", "amd64"]);
    ok(&kiln(&tmp.path().join("c1"), &args));
    assert_eq!(mirror.requests_for(runc), 3);

    // Always cut short: a clear error and no output.
    mirror.set_fault(runc, Fault::Truncate(1000));
    let out2 = tmp.path().join("out2");
    let mut args = build_args(manifest.to_str().unwrap(), out2.to_str().unwrap(), &flags);
    args.extend(["--arch", "amd64", "--retries", "2"]);
    let err = fails(&kiln(&tmp.path().join("c2"), &args));
    assert!(
        err.contains("component runc (amd64): download of http://127.0.0.1:")
            && err.contains("failed after 3 attempts"),
        "{err}"
    );
    assert!(err.contains("truncated download") || err.contains("reading"), "{err}");
    assert!(listing(&out2).is_empty());
}

#[test]
fn server_errors_are_retried_and_a_persistent_one_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let flags = mirror_args(&mirror);
    let kubelet = "/dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubelet";

    mirror.set_fault(kubelet, Fault::FailFirst(2, 503));
    let out = tmp.path().join("out");
    let mut args = build_args(manifest.to_str().unwrap(), out.to_str().unwrap(), &flags);
    args.extend(["--arch", "amd64"]);
    ok(&kiln(&tmp.path().join("c1"), &args));

    mirror.set_fault(kubelet, Fault::Status(500));
    let out2 = tmp.path().join("out2");
    let mut args = build_args(manifest.to_str().unwrap(), out2.to_str().unwrap(), &flags);
    args.extend(["--arch", "amd64", "--retries", "1"]);
    let err = fails(&kiln(&tmp.path().join("c2"), &args));
    assert!(
        err.contains("component kubelet (amd64)") && err.contains("answered 500 Internal Server Error"),
        "{err}"
    );
    assert!(listing(&out2).is_empty());

    // A 404 is not transient: one request, no retries.
    mirror.set_fault(kubelet, Fault::Status(404));
    let before = mirror.requests_for(kubelet);
    let err = fails(&kiln(&tmp.path().join("c3"), &args));
    assert!(err.contains("answered 404 Not Found"), "{err}");
    assert_eq!(mirror.requests_for(kubelet) - before, 1);
}

/// Replace the containerd release with a hostile archive (digest updated so it gets past the pin).
fn hostile_build(members: &[(&str, tar::EntryType, Option<&str>, &[u8])]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let path = "/github.com/containerd/containerd/releases/download/v2.3.4/containerd-2.3.4-linux-amd64.tar.gz";
    let honest = standin::production("amd64", SCALE)
        .into_iter()
        .find(|(p, _)| p == path)
        .unwrap()
        .1;
    let evil = standin::raw_tar_gz(members);
    mirror.put(path, evil.clone());
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace(&kiln_testkit::sha256_hex(&honest), &kiln_testkit::sha256_hex(&evil));
    std::fs::write(&manifest, text).unwrap();
    let out = tmp.path().join("out");
    let flags = mirror_args(&mirror);
    let mut args = build_args(manifest.to_str().unwrap(), out.to_str().unwrap(), &flags);
    args.extend(["--arch", "amd64"]);
    let err = fails(&kiln(&tmp.path().join("cache"), &args));
    assert!(listing(&out).is_empty(), "no output for a hostile archive");
    assert!(!tmp.path().join("evil").exists() && !std::path::Path::new("/tmp/kiln-evil").exists());
    err
}

#[test]
fn hostile_archive_members_are_refused() {
    let ok_members: [(&str, tar::EntryType, Option<&str>, &[u8]); 3] = [
        ("bin/containerd", tar::EntryType::Regular, None, b"c"),
        ("bin/containerd-shim-runc-v2", tar::EntryType::Regular, None, b"s"),
        ("bin/ctr", tar::EntryType::Regular, None, b"t"),
    ];
    let with = |extra: (&'static str, tar::EntryType, Option<&'static str>, &'static [u8])| {
        let mut v = ok_members.to_vec();
        v.push(extra);
        v
    };
    let err = hostile_build(&with(("../evil", tar::EntryType::Regular, None, b"x")));
    assert!(
        err.contains("component containerd (amd64)")
            && err.contains("refused: hostile archive member `../evil` contains `..`"),
        "{err}"
    );
    let err = hostile_build(&with(("/tmp/kiln-evil", tar::EntryType::Regular, None, b"x")));
    assert!(
        err.contains("refused: hostile archive member `/tmp/kiln-evil` is absolute"),
        "{err}"
    );
    let err = hostile_build(&with((
        "bin/esc",
        tar::EntryType::Symlink,
        Some("../../../etc/shadow"),
        b"",
    )));
    assert!(
        err.contains("refused: hostile archive member: link `bin/esc` -> `../../../etc/shadow` leaves the root"),
        "{err}"
    );
    let err = hostile_build(&with(("bin/abs", tar::EntryType::Symlink, Some("/etc/shadow"), b"")));
    assert!(err.contains("leaves the root"), "{err}");
    let err = hostile_build(&with(("bin/hard", tar::EntryType::Link, Some("../../etc/shadow"), b"")));
    assert!(
        err.contains("hard link `bin/hard` -> `../../etc/shadow` leaves the root"),
        "{err}"
    );
}

#[test]
fn a_missing_member_names_the_rule_and_suggests_similar_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("- from: bin/ctr", "- from: ctr");
    std::fs::write(&manifest, text).unwrap();
    let out = tmp.path().join("out");
    let flags = mirror_args(&mirror);
    let mut args = build_args(manifest.to_str().unwrap(), out.to_str().unwrap(), &flags);
    args.extend(["--arch", "amd64"]);
    let err = fails(&kiln(&tmp.path().join("cache"), &args));
    assert!(
        err.contains(
            "component containerd (amd64): install[2]: no member `ctr` in the artifact (did you mean bin/ctr?)"
        ),
        "{err}"
    );
}

#[test]
fn ctrl_c_while_writing_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    // Large enough that writing takes a while; the cache is warmed first.
    let big = kiln_testkit::standin::binary(400 << 20, 5);
    let digest = kiln_testkit::sha256_hex(&big);
    mirror.put("/big/kubelet", big);
    let manifest = standin_manifest(tmp.path(), &mirror);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let start = text.find("    kubelet:").unwrap();
    let end = text.find("    crictl:").unwrap();
    let kubelet = format!(
        "    kubelet:\n      version: \"1.36.4\"\n      source:\n        url: \"{}/big/kubelet\"\n        format: binary\n        sha256:\n          amd64: {digest}\n          arm64: {digest}\n      install:\n        - to: bin/kubelet\n",
        mirror.url()
    );
    std::fs::write(&manifest, format!("{}{kubelet}{}", &text[..start], &text[end..])).unwrap();
    let cache = tmp.path().join("cache");
    let warm = tmp.path().join("warm");
    let flags = mirror_args(&mirror);
    let mut args = build_args(manifest.to_str().unwrap(), warm.to_str().unwrap(), &flags);
    args.extend(["--arch", "amd64"]);
    ok(&kiln(&cache, &args));

    let out = tmp.path().join("out");
    let mut args = build_args(manifest.to_str().unwrap(), out.to_str().unwrap(), &flags);
    args.extend(["--arch", "amd64", "--offline"]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .env("KILN_CACHE", &cache)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the temporary output file to appear, then interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !listing(&out).iter().any(|f| f.ends_with(".partial")) {
        assert!(std::time::Instant::now() < deadline, "no temporary file appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "kiln finished before it could be interrupted"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out_status = child.wait_with_output().unwrap();
    assert!(!out_status.status.success());
    let err = String::from_utf8_lossy(&out_status.stderr);
    assert!(err.contains("interrupted"), "{err}");
    assert!(listing(&out).is_empty(), "left behind: {:?}", listing(&out));
}

#[test]
fn a_stalled_download_times_out_and_sigterm_stops_one_at_once_leaving_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let flags = mirror_args(&mirror);
    let runc = "/github.com/opencontainers/runc/releases/download/v1.4.3/runc.amd64";
    mirror.set_fault(runc, Fault::Stall(1000));

    // Headers and 1,000 bytes, then silence: the idle timeout ends the attempt.
    let out = tmp.path().join("out");
    let mut args = build_args(manifest.to_str().unwrap(), out.to_str().unwrap(), &flags);
    args.extend(["--arch", "amd64", "--retries", "0"]);
    let started = std::time::Instant::now();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_CACHE", tmp.path().join("c1"))
        .args(&args)
        .env("KILN_HTTP_IDLE_TIMEOUT_MS", "700")
        .output()
        .unwrap();
    let err = fails(&o);
    assert!(err.contains("sent nothing for 700ms after 1000 bytes"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(listing(&out).is_empty());
    assert!(
        listing(&tmp.path().join("c1/tmp")).is_empty(),
        "no partial download left"
    );

    // With the default timeout (a minute), SIGTERM during the stalled read ends kiln at once.
    let cache = tmp.path().join("c2");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .env("KILN_CACHE", &cache)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while mirror.requests_for(runc) < 2 || listing(&cache.join("tmp")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "kiln never started the stalled download"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sent = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        listing(&cache.join("tmp")).is_empty(),
        "no partial download left: {:?}",
        listing(&cache.join("tmp"))
    );
}
