//! The containerd configuration kiln renders (version 2 schema, for Debian's containerd 1.6) is
//! loaded by the real containerd from the bundle, whose CRI plugin comes up, and a container runs
//! with the bundle's own runc from a locally built OCI image. Needs apt (Debian's archive),
//! root, and busybox-static; scripts/setup installs what is missing.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Stops the containerd it holds by PID, whatever happens in the test.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ctr(bin: &Path, socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin.join("ctr"))
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "kiln-test"])
        .args(args)
        .output()
        .unwrap()
}

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
    let state = t.join("state");
    let config = rendered
        .replace("/var/lib/kiln/current", current.to_str().unwrap())
        .replace("/var/lib/containerd", t.join("root").to_str().unwrap())
        .replace("/run/containerd", state.to_str().unwrap())
        .replace("/etc/cni/net.d", current.join("etc/cni/net.d").to_str().unwrap());
    std::fs::write(t.join("config.toml"), config).unwrap();
    let socket = state.join("containerd.sock");
    let bin = current.join("bin");
    let log = std::fs::File::create(t.join("containerd.log")).unwrap();
    let daemon = Daemon(
        Command::new(bin.join("containerd"))
            .arg("--config")
            .arg(t.join("config.toml"))
            .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(socket.exists() && ctr(&bin, &socket, &["version"]).status.success()) {
        assert!(
            Instant::now() < deadline,
            "containerd did not come up:\n{}",
            std::fs::read_to_string(t.join("containerd.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The CRI plugin loaded the rendered configuration.
    let plugins = String::from_utf8_lossy(&ctr(&bin, &socket, &["plugins", "ls"]).stdout).into_owned();
    let cri = plugins
        .lines()
        .find(|l| l.starts_with("io.containerd.grpc.v1") && l.contains(" cri "))
        .unwrap_or_else(|| panic!("{plugins}"));
    assert!(
        cri.trim_end().ends_with("ok"),
        "CRI plugin: {cri}\n{}",
        std::fs::read_to_string(t.join("containerd.log")).unwrap()
    );

    let image = t.join("busybox.oci.tar");
    std::fs::write(
        &image,
        kiln_testkit::oci::busybox_image(Path::new("/bin/busybox"), "docker.io/kiln/busybox:test"),
    )
    .unwrap();
    let imported = ctr(&bin, &socket, &["images", "import", image.to_str().unwrap()]);
    assert!(
        imported.status.success(),
        "import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let run = ctr(
        &bin,
        &socket,
        &[
            "run",
            "--rm",
            "--runc-binary",
            bin.join("runc").to_str().unwrap(),
            "docker.io/kiln/busybox:test",
            "kiln-c1",
            "/bin/busybox",
            "echo",
            "hello from a kiln bundle",
        ],
    );
    assert!(
        run.status.success(),
        "run: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        std::fs::read_to_string(t.join("containerd.log")).unwrap()
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "hello from a kiln bundle");
    drop(daemon);
}
