//! Activation into a temporary root, end to end: every configuration source, crash safety at every
//! step, idempotence, rollback, and refusal of bad bundles and bad input.

mod common;

use std::path::Path;

use common::*;
use kiln_firstboot::activate::{self, Options, Outcome, Step};
use kiln_firstboot::system::Recording;
use kiln_testkit::mirror::Mirror;

fn opts() -> Options {
    let mut o = Options::default();
    o.endpoints.timeout = std::time::Duration::from_secs(5);
    o.endpoints.retries = 1;
    o
}

fn activate(root: &Path) -> (anyhow::Result<Outcome>, Recording) {
    let mut sys = Recording::new(root);
    let r = activate::run(root, &mut sys, &opts());
    (r, sys)
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn activates_from_local_files_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let root = node_root(tmp.path(), &bundle);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    write(
        &root,
        "etc/kiln/node.d/50-zone.yaml",
        "labels:\n  zone: z1\ntaints: [\"dedicated=infra:NoSchedule\"]\n",
    );
    let (r, sys) = activate(&root);
    assert_eq!(
        r.unwrap(),
        Outcome::Activated {
            version: "1.36.4-1".into()
        }
    );

    assert_eq!(
        std::fs::read_link(root.join("var/lib/kiln/current")).unwrap().to_str(),
        Some("bundles/1.36.4-1")
    );
    assert!(root.join("var/lib/kiln/bundles/1.36.4-1/bin/kubelet").is_file());
    let unit = read(&root, "etc/systemd/system/kubelet.service");
    assert!(
        unit.contains("--node-ip=10.8.0.205") && unit.contains("--hostname-override=worker-1"),
        "{unit}"
    );
    let digest =
        kiln_bundle::digest::parse_sha256sum(&std::fs::read_to_string(format!("{}.sha256", bundle.display())).unwrap())
            .unwrap();
    assert!(
        unit.contains(&format!(
            "--node-labels=kiln.dev/bundle-digest={},kiln.dev/bundle-version=1.36.4-1,pool=blue,zone=z1",
            digest.short()
        )),
        "{unit}"
    );
    assert!(!unit.contains("@kiln:"), "every placeholder is filled: {unit}");
    let kubeconfig = root.join("var/lib/kiln/node/etc/kubelet/bootstrap-kubeconfig");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777,
        0o600,
        "secrets are 0600"
    );
    assert!(read(&root, "var/lib/kiln/node/etc/kubelet/bootstrap-kubeconfig")
        .contains("token: \"abcdef.0123456789abcdef\""));
    assert!(read(&root, "var/lib/kiln/node/etc/kubernetes/pki/ca.crt").contains("MIIBfake"));
    assert!(read(&root, "etc/cni/net.d/10-kiln.conflist").contains("host-local"));
    // Taints reach kubelet through its configuration, not the deprecated flag.
    let config: serde_json::Value =
        serde_saphyr::from_str(&read(&root, "var/lib/kiln/node/etc/kubelet/config.yaml")).unwrap();
    assert_eq!(
        config["registerWithTaints"],
        serde_json::json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}])
    );
    assert!(!unit.contains("--register-with-taints"), "{unit}");
    assert!(read(&root, "etc/sysctl.d/99-kiln.conf").contains("net.ipv4.ip_forward = 1"));
    assert_eq!(
        std::fs::read_link(root.join("usr/local/bin/crictl")).unwrap().to_str(),
        Some("/var/lib/kiln/current/bin/crictl")
    );
    assert_eq!(
        read(&root, "etc/hostname"),
        "worker-1\n",
        "the node's name, as cloud-init would set it"
    );
    assert_eq!(
        sys.calls,
        [
            "hostname worker-1",
            "modprobe overlay",
            "modprobe br_netfilter",
            "sysctl -p /etc/sysctl.d/99-kiln.conf",
            "daemon-reload",
            "enable containerd.service",
            "start containerd.service",
            "enable kubelet.service",
            "start kubelet.service",
            "health containerd (1.36.4-1)",
            "health node worker-1 (1.36.4-1)",
            "health kubelet (1.36.4-1)"
        ]
    );
    let state: serde_json::Value = serde_json::from_str(&read(&root, "var/lib/kiln/state.json")).unwrap();
    assert_eq!(state["result"], "ok");
    assert_eq!(state["version"], "1.36.4-1");
    assert_eq!(state["steps"].as_array().unwrap().len(), 11);
    assert_eq!(
        state["sources"],
        serde_json::json!(["/etc/kiln/node.yaml", "/etc/kiln/node.d/50-zone.yaml"])
    );
    // The bootstrap token never reaches the state or the logs.
    assert!(!read(&root, "var/lib/kiln/state.json").contains("0123456789abcdef"));
}

fn user_data() -> String {
    format!(
        "#cloud-config\nhostname: from-user-data\nkiln:\n{}\nwrite_files:\n  - path: /etc/motd\n    content: hello\n",
        NODE_SECTION
            .lines()
            .filter(|l| !l.starts_with("hostname"))
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn assert_activated_with_hostname(root: &Path, r: anyhow::Result<Outcome>) {
    assert_eq!(
        r.unwrap(),
        Outcome::Activated {
            version: "1.36.4-1".into()
        }
    );
    let unit = read(root, "etc/systemd/system/kubelet.service");
    assert!(unit.contains("--hostname-override=from-user-data"), "{unit}");
    assert_eq!(read(root, "etc/motd"), "hello");
}

#[test]
fn activates_from_every_datasource() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");

    // NoCloud seed directory.
    let t = tempfile::tempdir().unwrap();
    let root = node_root(t.path(), &bundle);
    write(&root, "var/lib/cloud/seed/nocloud/user-data", &user_data());
    write(&root, "var/lib/cloud/seed/nocloud/meta-data", "instance-id: i-1\n");
    assert_activated_with_hostname(&root, activate(&root).0);

    // A cidata filesystem (the recording system "mounts" a directory).
    let t = tempfile::tempdir().unwrap();
    let root = node_root(t.path(), &bundle);
    let cidata = t.path().join("cidata");
    write(&cidata, "user-data", &user_data());
    let mut sys = Recording::new(&root);
    sys.cidata = Some(cidata);
    assert_activated_with_hostname(&root, activate::run(&root, &mut sys, &opts()));

    // kiln.config= on the kernel command line, a file in the root.
    let t = tempfile::tempdir().unwrap();
    let root = node_root(t.path(), &bundle);
    write(&root, "boot/kiln.yaml", &user_data());
    write(&root, "proc/cmdline", "ro quiet kiln.config=/boot/kiln.yaml\n");
    assert_activated_with_hostname(&root, activate(&root).0);

    // kiln.config= an http URL, and ds=nocloud;s= for PXE, served on 127.0.0.1.
    let seed = Mirror::start();
    seed.put("/node/user-data", user_data().into_bytes());
    seed.put("/seed/user-data", user_data().into_bytes());
    let t = tempfile::tempdir().unwrap();
    let root = node_root(t.path(), &bundle);
    write(
        &root,
        "proc/cmdline",
        &format!("ro kiln.config={}/node/user-data\n", seed.url()),
    );
    assert_activated_with_hostname(&root, activate(&root).0);
    let t = tempfile::tempdir().unwrap();
    let root = node_root(t.path(), &bundle);
    write(
        &root,
        "proc/cmdline",
        &format!("ro \"ds=nocloud;s={}/seed/\"\n", seed.url()),
    );
    assert_activated_with_hostname(&root, activate(&root).0);

    // EC2 IMDSv2: a token first, then user data.
    let imds = Mirror::start();
    imds.put("/latest/api/token", b"TOKEN".to_vec());
    imds.put("/latest/user-data", user_data().into_bytes());
    let t = tempfile::tempdir().unwrap();
    let root = node_root(t.path(), &bundle);
    write(&root, "proc/cmdline", "ro kiln.datasource=imds\n");
    let mut o = opts();
    o.endpoints.imds = imds.url();
    let mut sys = Recording::new(&root);
    assert_activated_with_hostname(&root, activate::run(&root, &mut sys, &o));
    assert_eq!(
        imds.log(),
        ["GET /latest/api/token -> 200", "GET /latest/user-data -> 200"]
    );

    // IMDS without user data (404): nothing to configure the kubelet with, a clear error.
    let empty = Mirror::start();
    empty.put("/latest/api/token", b"TOKEN".to_vec());
    let t = tempfile::tempdir().unwrap();
    let root = node_root(t.path(), &bundle);
    write(&root, "proc/cmdline", "ro kiln.datasource=imds\n");
    o.endpoints.imds = empty.url();
    let e = activate::run(&root, &mut Recording::new(&root), &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lacks apiServer, clusterCA, bootstrapToken, clusterDNS") && e.contains("sources read: none"),
        "{e}"
    );
    assert!(!root.join("var/lib/kiln/current").exists());
}

#[test]
fn a_second_run_changes_nothing_and_restarts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let root = node_root(tmp.path(), &bundle);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let mut sys = Recording::new(&root);
    activate::run(&root, &mut sys, &opts()).unwrap();
    let before = tree(&root);
    let state = read(&root, "var/lib/kiln/state.json");
    sys.calls.clear();
    let r = activate::run(&root, &mut sys, &opts()).unwrap();
    assert_eq!(
        r,
        Outcome::AlreadyActive {
            version: "1.36.4-1".into()
        }
    );
    assert!(sys.calls.is_empty(), "no service was touched: {:?}", sys.calls);
    assert_eq!(tree(&root), before);
    assert_eq!(
        read(&root, "var/lib/kiln/state.json"),
        state,
        "not even the state is rewritten"
    );

    // A changed configuration is a new input: rendered again, kubelet restarted.
    write(&root, "etc/kiln/node.d/10-more.yaml", "labels:\n  extra: x\n");
    let r = activate::run(&root, &mut sys, &opts()).unwrap();
    assert_eq!(
        r,
        Outcome::Activated {
            version: "1.36.4-1".into()
        }
    );
    assert!(
        sys.calls.contains(&"restart kubelet.service".to_string()),
        "{:?}",
        sys.calls
    );
}

#[test]
fn stopping_after_any_step_then_rerunning_equals_a_clean_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let clean_dir = tempfile::tempdir().unwrap();
    let clean = node_root(clean_dir.path(), &bundle);
    write(&clean, "etc/kiln/node.yaml", NODE_SECTION);
    activate(&clean).0.unwrap();
    let expected = tree(&clean);

    for &step in Step::ALL {
        let dir = tempfile::tempdir().unwrap();
        let root = node_root(dir.path(), &bundle);
        write(&root, "etc/kiln/node.yaml", NODE_SECTION);
        let mut sys = Recording::new(&root);
        let mut o = opts();
        o.stop_after = Some(step);
        let first = activate::run(&root, &mut sys, &o).unwrap();
        assert_eq!(
            first,
            if step == Step::State {
                Outcome::Activated {
                    version: "1.36.4-1".into(),
                }
            } else {
                Outcome::Stopped { after: step }
            }
        );
        // The next boot runs again, with whatever services the first run left active.
        let again = activate::run(&root, &mut sys, &opts()).unwrap();
        assert!(
            matches!(again, Outcome::Activated { .. } | Outcome::AlreadyActive { .. }),
            "after {step:?}: {again:?}"
        );
        let got = tree(&root);
        assert_eq!(
            got, expected,
            "after stopping at {step:?}, the re-run's tree differs from a clean run"
        );
    }
}

#[test]
fn a_failed_health_check_rolls_back_to_the_previous_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let v1 = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let v2 = build_bundle(tmp.path(), &mirror, "1.36.4-2", true, "");
    let root = node_root(tmp.path(), &v1);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let mut sys = Recording::new(&root);
    activate::run(&root, &mut sys, &opts()).unwrap();
    let unit_v1 = read(&root, "etc/systemd/system/kubelet.service");

    bake(&root, &v2);
    sys.unhealthy_versions.insert("1.36.4-2".into());
    sys.calls.clear();
    let e = activate::run(&root, &mut sys, &opts()).unwrap_err().to_string();
    assert!(
        e.contains("bundle 1.36.4-2 failed its health check") && e.contains("rolled back to 1.36.4-1"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_link(root.join("var/lib/kiln/current")).unwrap().to_str(),
        Some("bundles/1.36.4-1")
    );
    assert_eq!(read(&root, "etc/systemd/system/kubelet.service"), unit_v1);
    let after_health: Vec<&String> = sys.calls.iter().skip_while(|c| !c.starts_with("health")).collect();
    assert!(
        after_health.iter().any(|c| *c == "restart containerd.service")
            && after_health.iter().any(|c| *c == "restart kubelet.service"),
        "{:?}",
        sys.calls
    );
    let state: serde_json::Value = serde_json::from_str(&read(&root, "var/lib/kiln/state.json")).unwrap();
    assert_eq!(state["result"], "failed");
    assert_eq!(state["version"], "1.36.4-2");
    assert!(
        state["error"]
            .as_str()
            .unwrap()
            .contains("containerd of bundle 1.36.4-2 does not answer"),
        "{state}"
    );
}

#[test]
fn swap_without_permission_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let root = node_root(tmp.path(), &bundle);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    write(
        &root,
        "proc/swaps",
        "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1048572 0 -2\n",
    );
    let (r, sys) = activate(&root);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("swap is on (/swapfile)") && e.contains("failSwapOn"), "{e}");
    assert!(
        !sys.calls.iter().any(|c| c.starts_with("start")),
        "no service starts: {:?}",
        sys.calls
    );

    // Allowed by the node's kubelet settings.
    write(
        &root,
        "etc/kiln/node.d/swap.yaml",
        "kubeletSettings:\n  failSwapOn: false\n",
    );
    activate(&root).0.unwrap();
}

#[test]
fn write_files_cannot_leave_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", false, "");
    let root = node_root(tmp.path(), &bundle);
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("etc/escape")).unwrap();
    write(
        &root,
        "var/lib/cloud/seed/nocloud/user-data",
        "#cloud-config\nwrite_files:\n  - path: /etc/escape/pwned\n    content: x\n",
    );
    let e = activate(&root).0.unwrap_err().to_string();
    assert!(
        e.contains("goes through the symlink") && e.contains("write_files[0] (/etc/escape/pwned)"),
        "{e}"
    );
    assert!(!outside.join("pwned").exists());
}

#[test]
fn the_kubelet_health_probe_wants_ok_from_healthz() {
    use kiln_firstboot::system::{Host, System};
    let m = Mirror::start();
    m.put("/healthz", b"ok".to_vec());
    m.put("/sick", b"[-]ping failed".to_vec());
    let mut host = Host {
        kubelet_healthz: format!("{}/healthz", m.url()),
    };
    host.kubelet_healthy(std::time::Duration::from_secs(2)).unwrap();
    let mut sick = Host {
        kubelet_healthz: format!("{}/sick", m.url()),
    };
    let e = sick.kubelet_healthy(std::time::Duration::from_millis(300)).unwrap_err();
    assert!(
        format!("{e:#}").contains("not healthy after") && format!("{e:#}").contains("ping failed"),
        "{e:#}"
    );
}

/// A bundle with a private registry: first boot renders its hosts.toml into the node directory
/// with the node's credentials (0600, base64 of user:password in the Authorization header), next
/// to the bundle's CA; without the credentials activation stops before anything is written.
#[test]
fn registry_credentials_are_filled_at_first_boot_and_kept_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    kiln_testkit::cluster::Pki::new(tmp.path());
    std::fs::copy(tmp.path().join("ca.crt"), tmp.path().join("registry-ca.pem")).unwrap();
    let bundle = build_bundle(
        tmp.path(),
        &mirror,
        "1.36.4-1",
        true,
        "  config:\n    containerd:\n      registries:\n        registry.example.com:5000:\n          ca: registry-ca.pem\n          auth: true\n        docker.io:\n          mirrors:\n            - host: https://mirror.example.com\n",
    );

    // Without registryAuth: refused, naming the registry, and no bundle is activated.
    let root = node_root(tmp.path(), &bundle);
    write(&root, "etc/kiln/node.yaml", NODE_SECTION);
    let (r, _) = activate(&root);
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("lacks registryAuth[registry.example.com:5000]"), "{e}");
    assert!(!root.join("var/lib/kiln/current").exists());

    let root = node_root(&tmp.path().join("second"), &bundle);
    write(
        &root,
        "etc/kiln/node.yaml",
        &format!(
            "{NODE_SECTION}registryAuth:\n  registry.example.com:5000: {{username: ci-puller, password: s3cret}}\n"
        ),
    );
    let (r, _) = activate(&root);
    r.unwrap();
    let dir = root.join("var/lib/kiln/node/etc/containerd/certs.d");
    let hosts = dir.join("registry.example.com:5000/hosts.toml");
    let text = std::fs::read_to_string(&hosts).unwrap();
    // base64("ci-puller:s3cret")
    assert!(
        text.contains("Authorization = \"Basic Y2ktcHVsbGVyOnMzY3JldA==\""),
        "{text}"
    );
    assert_eq!(std::fs::metadata(&hosts).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(dir.join("registry.example.com:5000/ca.crt"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    // A registry without credentials is rendered too (one config_path for all), world-readable.
    let mirror_hosts = dir.join("docker.io/hosts.toml");
    assert!(std::fs::read_to_string(&mirror_hosts)
        .unwrap()
        .contains("[host.\"https://mirror.example.com\"]"));
    assert_eq!(
        std::fs::metadata(&mirror_hosts).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let config = read(&root, "var/lib/kiln/current/etc/containerd/config.toml");
    assert!(
        config.contains("config_path = \"/var/lib/kiln/node/etc/containerd/certs.d\""),
        "{config}"
    );
    // The password never reaches the state file.
    assert!(!read(&root, "var/lib/kiln/state.json").contains("s3cret"));
}
