//! containerd 2.3.4, the real binary (from `../shared/k8s/` or `KILN_K8S_BIN`), loads the
//! configuration kiln renders for it (config version 4) from a node bundle built with kubelet
//! v1.32: no migration from an older version and no deprecation, the CRI plugin comes up, the
//! bundle's preloaded images are imported by the bundle's own `kiln-images.service` command into
//! the `k8s.io` namespace under the names pods use, and a container runs with the bundle's runc.
//! Needs root, apt (Debian's runc and CNI plugins) and busybox-static.

mod common;

use std::process::Command;

use common::*;
use kiln_testkit::containerd::Containerd;
use kiln_testkit::k8s;

#[test]
fn containerd_2_3_loads_the_rendered_v4_config_imports_images_and_runs_a_container() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // systemd is not PID 1 on the test host and the VM lacks CAP_SYS_RESOURCE.
    let manifest = k8s::node_manifest(
        &t.join("src"),
        "kiln-node",
        "1.32.13-1",
        "  config:\n    containerd:\n      restrictOomScoreAdj: true\n      systemdCgroup: false\n",
        false,
    );
    let out = t.join("out");
    ok(&kiln(
        &t.join("cache"),
        &["build", manifest.to_str().unwrap(), "-o", out.to_str().unwrap()],
    ));
    let bundle = out.join("kiln-node-1.32.13-1-amd64.kiln.tar.zst");
    let inspect = ok(&kiln(
        &t.join("cache"),
        &["inspect", bundle.to_str().unwrap(), "--files"],
    ));
    assert!(
        inspect.contains("images/registry.k8s.io_pause_3.10.oci.tar"),
        "{inspect}"
    );

    let current = t.join("current");
    std::fs::create_dir(&current).unwrap();
    run(Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&bundle)
        .arg("-C")
        .arg(&current));
    let rendered = std::fs::read_to_string(current.join("etc/containerd/config.toml")).unwrap();
    assert!(
        rendered.starts_with("# Rendered by kiln for containerd 2.3.4 (config version 4).\nversion = 4\n"),
        "{rendered}"
    );

    std::fs::create_dir_all(t.join("var/lib/kiln")).unwrap();
    std::os::unix::fs::symlink(&current, t.join("var/lib/kiln/current")).unwrap();
    let daemon = Containerd::start_rendered(t, &current, &rendered);
    let log = daemon.log_text();
    assert!(log.contains("containerd successfully booted"), "{log}");
    // Negative control for the check below: containerd 2.3.4 does log a migration for version 3.
    assert!(
        !log.contains("Configuration migrated") && !log.contains("use `containerd config migrate`"),
        "containerd migrated kiln's config:\n{log}"
    );
    let deprecations = daemon.ctr(&["deprecations", "list"]);
    let deprecations = String::from_utf8_lossy(&deprecations.stdout).into_owned();
    // The header, and the host's cgroup v1 (a property of this test machine, not of the config).
    let about_config: Vec<&str> = deprecations
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty() && !l.starts_with("io.containerd.deprecation/cgroup-v1"))
        .collect();
    assert!(
        about_config.is_empty(),
        "containerd reports deprecations:\n{deprecations}"
    );
    assert_eq!(daemon.cri_status(), "ok", "{}", daemon.log_text());

    // The preloaded images, imported by the bundle's unit's own commands.
    let unit = std::fs::read_to_string(current.join("systemd/kiln-images.service")).unwrap();
    let imports: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("ExecStart=")).collect();
    assert_eq!(imports.len(), 2, "{unit}");
    for line in imports {
        let line = kiln_testkit::containerd::redirect(line, t);
        let words = shlex::split(&line).unwrap();
        run(Command::new(&words[0]).args(&words[1..]));
    }
    let listed = Command::new(daemon.bin.join("ctr"))
        .arg("--address")
        .arg(&daemon.socket)
        .args(["--namespace", "k8s.io", "images", "ls", "-q"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for name in [k8s::PAUSE_IMAGE, k8s::BUSYBOX_IMAGE] {
        assert!(listed.lines().any(|l| l == name), "{name} in k8s.io: {listed}");
    }

    assert_eq!(
        daemon.run_echo(t, &daemon.bin.join("runc"), "hello from containerd 2.3.4"),
        "hello from containerd 2.3.4"
    );
}

/// The negative control: the same binary, given a version-3 file, says it migrated it. If this
/// stopped being true, the absence of the message above would prove nothing.
#[test]
fn containerd_2_3_announces_the_migration_of_a_version_3_config() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let bin = k8s::bin_dir();
    let config = format!(
        "version = 3\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n[grpc]\naddress = \"{r}/c.sock\"\n[ttrpc]\naddress = \"{r}/c.sock.ttrpc\"\n",
        r = t.display()
    );
    std::fs::write(t.join("config.toml"), config).unwrap();
    let daemon = Containerd::start(&bin, &t.join("config.toml"), &t.join("c.sock"), &t.join("log"));
    let log = daemon.log_text();
    assert!(log.contains("Configuration migrated from version 3"), "{log}");
}
