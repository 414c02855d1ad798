//! An extra OCI runtime as a RuntimeClass: crun from Debian, declared under
//! `spec.components.runtimes`, is installed into the bundle, rendered as a containerd runtime handler
//! and given a RuntimeClass manifest. The real containerd (Debian's 1.6 and the 2.3.4 binaries from
//! `../shared/k8s/`) runs a pod through the handler on the kubelet's own calls (CRI
//! `RunPodSandbox` with `runtime_handler: crun`, then CreateContainer and StartContainer), and crun
//! itself reports the container running (with containerd 2.3.4, Debian's crun 1.8.1 refuses the
//! newer OCI spec version, in its own words); a pod without the handler is run by runc, which crun
//! does not know, and an unknown handler is refused by containerd.
//! Needs root, apt (Debian's archive), crun and busybox-static.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kiln_testkit::containerd::Containerd;
use kiln_testkit::cri::Cri;
use kiln_testkit::k8s::{BUSYBOX_IMAGE, PAUSE_IMAGE};

const CRUN: &str = "    runtimes:\n      crun:\n        version: \"1.8.1\"\n        source:\n          apt:\n            package: crun\n        install:\n          - from: usr/bin/crun\n            to: bin/crun\n        binary: bin/crun\n";

const CONFIG: &str = "  config:\n    containerd:\n      restrictOomScoreAdj: true\n      systemdCgroup: false\n";

/// The runc shim keeps each namespace's container state under this root (its default).
const SHIM_ROOT: &str = "/run/containerd/runc/k8s.io";

/// Removes every pod when the test ends, pass or fail, so no container outlives it.
struct Pods<'a>(&'a Cri);

impl Drop for Pods<'_> {
    fn drop(&mut self) {
        self.0.remove_all_pods();
    }
}

fn with_crun(manifest: &Path) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let text = text.replacen("  components:\n", &format!("  components:\n{CRUN}"), 1);
    std::fs::write(manifest, text).unwrap();
}

/// `crun state ID`: its JSON, or crun's complaint when it does not know the container.
fn crun_state(id: &str) -> Result<String, CrunRefused> {
    let out = Command::new("crun")
        .args(["--root", SHIM_ROOT, "state", id])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CrunRefused(String::from_utf8_lossy(&out.stderr).into_owned()))
    }
}

/// crun's standard error when `crun state` fails.
#[derive(Debug)]
struct CrunRefused(String);

impl std::fmt::Display for CrunRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.trim())
    }
}

/// What crun does with the pod: runs it, or refuses it with this message (its own words).
enum Crun {
    Runs,
    Refuses(&'static str),
}

fn runs_a_pod_through_the_crun_handler(t: &Path, manifest: PathBuf, expect: Crun) {
    assert!(
        Path::new("/usr/bin/crun").exists(),
        "crun is missing: run scripts/setup (Debian package crun)"
    );
    with_crun(&manifest);
    let bundle = build_local(t, &manifest);
    let inspect = ok(&kiln(&t.join("cache"), &["inspect", bundle.to_str().unwrap()]));
    assert!(
        inspect.contains("runtime     crun (RuntimeClass crun: runtimeclasses/crun.yaml)"),
        "{inspect}"
    );
    assert!(inspect.contains("runtime/crun"), "the component is listed: {inspect}");

    let current = t.join("current");
    std::fs::create_dir_all(&current).unwrap();
    run(Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&bundle)
        .arg("-C")
        .arg(&current));
    let class = std::fs::read_to_string(current.join("runtimeclasses/crun.yaml")).unwrap();
    assert!(
        class.contains("apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: crun\nhandler: crun\n"),
        "{class}"
    );
    assert!(current.join("bin/crun").is_file());

    let rendered = std::fs::read_to_string(current.join("etc/containerd/config.toml")).unwrap();
    std::fs::create_dir_all(t.join("var/lib/kiln")).unwrap();
    std::os::unix::fs::symlink(&current, t.join("var/lib/kiln/current")).unwrap();
    let daemon = Containerd::start_rendered_without_unified_cgroup(t, &current, &rendered);
    assert_eq!(daemon.cri_status(), "ok", "{}", daemon.log_text());
    for (name, image) in [
        (
            PAUSE_IMAGE,
            kiln_testkit::oci::pause_image(Path::new("/bin/busybox"), PAUSE_IMAGE),
        ),
        (
            BUSYBOX_IMAGE,
            kiln_testkit::oci::busybox_image(Path::new("/bin/busybox"), BUSYBOX_IMAGE),
        ),
    ] {
        let archive = t.join(format!("{}.oci.tar", name.replace(['/', ':'], "_")));
        std::fs::write(&archive, image).unwrap();
        run(Command::new(daemon.bin.join("ctr"))
            .arg("--address")
            .arg(&daemon.socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(&archive));
    }
    let cri = Cri::connect(&daemon.socket);
    let _pods = Pods(&cri);
    let logs = t.join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();

    // The pod asks for the RuntimeClass's handler, and containerd hands it to crun.
    match expect {
        Crun::Runs => {
            let pod = cri
                .run_pod("with-crun", "crun", &logs)
                .unwrap_or_else(|e| panic!("RunPodSandbox crun: {e}\n{}", daemon.log_text()));
            let ctr = cri
                .start_container(&pod, "sleeper", &logs, BUSYBOX_IMAGE, &["/bin/busybox", "sleep", "300"])
                .unwrap_or_else(|e| panic!("start: {e}\n{}", daemon.log_text()));
            assert_eq!(cri.container_state(&ctr).0, "CONTAINER_RUNNING");
            let state = crun_state(&ctr).unwrap_or_else(|e| panic!("crun does not know the container: {e}"));
            assert!(state.contains("\"status\": \"running\""), "{state}");
        }
        Crun::Refuses(why) => {
            let e = cri.run_pod("with-crun", "crun", &logs).unwrap_err();
            let e = e.message();
            assert!(e.contains("OCI runtime create failed") && e.contains(why), "{e}");
        }
    }

    // Without the handler: runc runs it, and crun knows nothing of it.
    let pod = cri.run_pod("with-runc", "", &logs).unwrap();
    let ctr = cri
        .start_container(&pod, "sleeper", &logs, BUSYBOX_IMAGE, &["/bin/busybox", "sleep", "300"])
        .unwrap();
    assert_eq!(cri.container_state(&ctr).0, "CONTAINER_RUNNING");
    assert!(crun_state(&ctr).is_err(), "a runc container is not crun's");

    // A handler the bundle does not have.
    let e = cri.run_pod("with-nothing", "gvisor", &logs).unwrap_err();
    let e = e.message();
    assert!(e.contains("gvisor"), "{e}");
}

#[test]
fn debian_containerd_1_6_runs_a_pod_with_crun_as_a_runtime_class() {
    let tmp = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(kiln_testkit::workspace_root().join("manifests/debian-12.yaml")).unwrap();
    text.push_str(CONFIG);
    let manifest = tmp.path().join("debian-12-crun.yaml");
    std::fs::write(&manifest, text).unwrap();
    runs_a_pod_through_the_crun_handler(tmp.path(), manifest, Crun::Runs);
}

/// Debian 12's crun 1.8.1 accepts only OCI runtime-spec 1.0.x configs (`strstr (oci_version, "1.0")`
/// in its container.c), and containerd 2.3.4 writes runtime-spec 1.3.0: the handler reaches crun,
/// which refuses. A newer crun is needed with containerd 2.x; the wiring is the same.
#[test]
fn containerd_2_3_hands_the_pod_to_crun_which_is_too_old_for_its_spec_version() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = kiln_testkit::k8s::node_manifest(&tmp.path().join("src"), "kiln-node", "1.32.13-1", CONFIG, false);
    runs_a_pod_through_the_crun_handler(tmp.path(), manifest, Crun::Refuses("unknown version specified"));
}
