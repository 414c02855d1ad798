//! The README's quickstart manifest, built for real through apt from Debian's archive (needs
//! `apt-get` and Debian 12 apt sources, as CI and the quickstart have).

mod common;

use common::*;

#[test]
fn debian_12_manifest_builds_through_apt_reproducibly() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = kiln_testkit::workspace_root().join("manifests/debian-12.yaml");
    let mut sums = Vec::new();
    for i in 0..2 {
        // A fresh cache each time: the second build repeats the whole apt path from scratch.
        let out = tmp.path().join(format!("out{i}"));
        let stdout = ok(&kiln(
            &tmp.path().join(format!("cache{i}")),
            &["build", manifest.to_str().unwrap(), "-o", out.to_str().unwrap()],
        ));
        assert!(
            stdout.contains("debian12-runtime-1.0.0-amd64.kiln.tar.zst built"),
            "{stdout}"
        );
        sums.push(std::fs::read_to_string(out.join("debian12-runtime-1.0.0-amd64.kiln.tar.zst.sha256")).unwrap());
    }
    assert_eq!(sums[0], sums[1], "two builds give the same bytes");

    let cache = tmp.path().join("cache0");
    let bundle = tmp.path().join("out0/debian12-runtime-1.0.0-amd64.kiln.tar.zst");
    ok(&kiln(&cache, &["verify", bundle.to_str().unwrap()]));
    let table = ok(&kiln(&cache, &["inspect", bundle.to_str().unwrap()]));
    assert!(table.contains("container runtime (no kubelet)"), "{table}");
    assert!(table.contains("apt:containerd=1.6.20"), "{table}");

    // The unpacked binaries are the real ones: runc from the bundle runs.
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let st = std::process::Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&bundle)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    let v = std::process::Command::new(x.join("bin/runc"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).starts_with("runc version 1.1.5"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    for p in [
        "bin/containerd",
        "bin/containerd-shim-runc-v2",
        "bin/ctr",
        "cni/bin/bridge",
        "cni/bin/host-local",
        "cni/bin/loopback",
        "cni/bin/portmap",
    ] {
        assert!(x.join(p).is_file(), "{p}");
    }

    // A lock pins what was resolved; a locked rebuild from the warm cache needs no apt at all.
    let m = tmp.path().join("d12.yaml");
    std::fs::copy(&manifest, &m).unwrap();
    ok(&kiln(&cache, &["lock", m.to_str().unwrap()]));
    let out = tmp.path().join("locked");
    ok(&kiln(
        &cache,
        &[
            "build",
            "--locked",
            "--offline",
            m.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        std::fs::read_to_string(out.join("debian12-runtime-1.0.0-amd64.kiln.tar.zst.sha256")).unwrap(),
        sums[0]
    );
}
