//! Shared helpers for the `kiln` CLI tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_bundle::manifest::{expand, Manifest};
use kiln_testkit::mirror::Mirror;
use kiln_testkit::standin;

pub const SCALE: f64 = 0.002;

pub fn kiln(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_CACHE", cache)
        .env("KILN_HTTP_BACKOFF_MS", "20")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("kiln runs")
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kiln failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kiln build MANIFEST -o DIR/out` (no mirror: apt and local sources) to success; the bundle it wrote.
pub fn build_local(dir: &Path, manifest: &Path) -> PathBuf {
    let out = dir.join("out");
    ok(&kiln(
        &dir.join("cache"),
        &["build", manifest.to_str().unwrap(), "-o", out.to_str().unwrap()],
    ));
    std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".kiln.tar.zst"))
        .expect("kiln build wrote a bundle")
}

/// Run any tool to success; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kiln build MANIFEST -o DIR/out --arch amd64` through the mirror, plus `extra`: the output and
/// the bundle's path.
pub fn build_amd64(dir: &Path, manifest: &Path, mirror: &Mirror, extra: &[&str]) -> (Output, PathBuf) {
    build_arch(dir, manifest, mirror, "amd64", extra)
}

/// `kiln build MANIFEST -o DIR/out --arch ARCH` through the mirror, plus `extra`.
pub fn build_arch(dir: &Path, manifest: &Path, mirror: &Mirror, arch: &str, extra: &[&str]) -> (Output, PathBuf) {
    let out = dir.join("out");
    let mut args = vec![
        "build".to_string(),
        manifest.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--arch".into(),
        arch.into(),
    ];
    args.extend(mirror_args(mirror));
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (
        kiln(&dir.join("cache"), &args),
        out.join(format!("k8s-node-1.36.4-1-{arch}.kiln.tar.zst")),
    )
}

/// The stand-in production bundle for amd64, built through a mirror; its path.
pub fn standin_bundle(dir: &Path) -> PathBuf {
    standin_bundle_for(dir, "amd64")
}

/// The stand-in production bundle for `arch`; its path.
pub fn standin_bundle_for(dir: &Path, arch: &str) -> PathBuf {
    let mirror = production_mirror();
    let manifest = standin_manifest(dir, &mirror);
    let (o, bundle) = build_arch(dir, &manifest, &mirror, arch, &[]);
    ok(&o);
    bundle
}

pub fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "kiln unexpectedly succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn production_manifest() -> PathBuf {
    kiln_testkit::workspace_root().join("manifests/k8s-1.36.yaml")
}

/// A mirror serving stand-ins for every artifact of the production manifest, both architectures.
pub fn production_mirror() -> Mirror {
    let m = Mirror::start();
    for arch in ["amd64", "arm64"] {
        for (path, body) in standin::production(arch, SCALE) {
            m.put(&path, body);
        }
    }
    m
}

/// The production manifest with each real digest replaced by the digest of the stand-in that the
/// mirror serves at the same URL, written into `dir`.
pub fn standin_manifest(dir: &Path, mirror: &Mirror) -> PathBuf {
    let path = production_manifest();
    let mut text = std::fs::read_to_string(&path).unwrap();
    let manifest = Manifest::parse(&text, "k8s-1.36.yaml").unwrap();
    let served: std::collections::BTreeMap<String, String> = ["amd64", "arm64"]
        .iter()
        .flat_map(|a| standin::production(a, SCALE))
        .map(|(p, b)| (p, kiln_testkit::sha256_hex(&b)))
        .collect();
    for (_, c) in manifest.spec.components.iter() {
        for (arch, digest) in &c.source.sha256 {
            let url = expand(c.source.url.as_deref().unwrap(), &c.version, *arch);
            let served_path = url.replacen("https://", "/", 1);
            let standin = served
                .get(&served_path)
                .unwrap_or_else(|| panic!("mirror serves {served_path}"));
            text = text.replace(&digest.hex(), standin);
        }
    }
    let _ = mirror;
    let out = dir.join("k8s-standin.yaml");
    std::fs::write(&out, text).unwrap();
    out
}

pub fn mirror_args(m: &Mirror) -> Vec<String> {
    standin::mirror_flags(&m.url())
}

/// Files in a directory, sorted, for "nothing was written" checks.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The cache the booted tests share for `kiln image` (image bases only): one debootstrap per
/// recipe for the whole test run; `kiln image` locks a base while it builds it.
pub fn image_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-image-cache")
}

/// kiln-firstboot as built for this test run, stripped (the debug build carries ~100 MB of debug
/// info), at `dir/kiln-firstboot`.
pub fn stripped_firstboot(dir: &Path) -> PathBuf {
    let firstboot = dir.join("kiln-firstboot");
    let built = Path::new(env!("CARGO_BIN_EXE_kiln")).with_file_name("kiln-firstboot");
    assert!(
        built.is_file(),
        "{} is missing: build it first (`cargo build -p kiln-firstboot`; the workspace test run does)",
        built.display()
    );
    run(Command::new("strip").arg("-o").arg(&firstboot).arg(&built));
    firstboot
}

/// `kiln image RECIPE --bundle B -o OUT --format F --firstboot FB [--overlay O] --json` with the
/// shared image cache: the seconds it took and where the base came from (`built`, `cached`).
pub fn kiln_image(
    recipe: &Path,
    bundle: &Path,
    out: &Path,
    firstboot: &Path,
    overlay: Option<&Path>,
    formats: &str,
) -> (f64, String) {
    let t = std::time::Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.arg("image")
        .arg(recipe)
        .arg("--bundle")
        .arg(bundle)
        .arg("-o")
        .arg(out)
        .args(["--format", formats, "--json"])
        .arg("--firstboot")
        .arg(firstboot)
        .env("KILN_CACHE", image_cache());
    if let Some(o) = overlay {
        cmd.arg("--overlay").arg(o);
    }
    let json: serde_json::Value = serde_json::from_str(&run(&mut cmd)).expect("kiln image --json");
    (
        t.elapsed().as_secs_f64(),
        json["base"].as_str().unwrap_or_default().to_string(),
    )
}

/// `kubectl ARGS -o json` against the cluster `c`; `None` when kubectl fails (a missing object).
pub fn kubectl_json(c: &kiln_testkit::cluster::Cluster, args: &[&str]) -> Option<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("kubectl -o json"))
}

/// Whether the Node's Ready condition is True; with `since`, also with a heartbeat at or after it
/// (RFC 3339 in seconds, UTC: they compare as text).
pub fn node_ready(node: &serde_json::Value, since: Option<&str>) -> bool {
    node["status"]["conditions"].as_array().into_iter().flatten().any(|c| {
        c["type"] == "Ready"
            && c["status"] == "True"
            && since.is_none_or(|s| c["lastHeartbeatTime"].as_str() >= Some(s))
    })
}
