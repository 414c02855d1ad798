//! `kiln migrate` on the dockershim-era settings from the issue, with its exact expected output,
//! the same settings as a command line and as a unit, and the result built into a bundle.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

fn tar_member(bundle: &std::path::Path, member: &str) -> String {
    let o = std::process::Command::new("tar")
        .args(["--zstd", "-xOf"])
        .arg(bundle)
        .arg(member)
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    fixtures("ansible-dockershim").join(name)
}

fn fixtures(set: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/migrate")
        .join(set)
}

/// `kiln migrate ARGS...` run in `dir`, so inputs are named as a user in that directory names them.
fn migrate_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(dir)
        .arg("migrate")
        .args(args)
        .output()
        .expect("kiln runs")
}

fn migrate(input: &std::path::Path) -> (String, String) {
    let out = migrate_in(
        input.parent().unwrap(),
        &[
            input.file_name().unwrap().to_str().unwrap(),
            "--kubernetes-version",
            "1.36.4",
        ],
    );
    let stdout = ok(&out);
    (stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The JSON form: the config section and `(setting, value, result, source)` of every row.
fn migrate_json(dir: &std::path::Path, args: &[&str]) -> (Value, Vec<[String; 4]>, Value) {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = migrate_in(dir, &all);
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    let rows = v["report"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| ["flag", "value", "outcome", "source"].map(|k| r[k].as_str().unwrap().to_string()))
        .collect();
    (v["config"].clone(), rows, v["report"].clone())
}

fn row<'a>(rows: &'a [[String; 4]], setting: &str, value: &str) -> &'a [String; 4] {
    rows.iter()
        .find(|r| r[0] == setting && r[1] == value)
        .unwrap_or_else(|| panic!("no row {setting}={value} in {rows:#?}"))
}

#[test]
fn the_ansible_example_gives_the_expected_config_and_report() {
    let (config, report) = migrate(&fixture("input.yaml"));
    assert_eq!(
        config,
        std::fs::read_to_string(fixture("expected-config.yaml")).unwrap()
    );
    assert_eq!(report, std::fs::read_to_string(fixture("expected-report.txt")).unwrap());
}

#[test]
fn a_command_line_and_a_unit_give_the_same_classification() {
    let tmp = tempfile::tempdir().unwrap();
    let (yaml_config, yaml_rows, _) = migrate_json(
        &fixtures("ansible-dockershim"),
        &["input.yaml", "--kubernetes-version", "1.36.4"],
    );
    let without_source = |rows: &[[String; 4]]| -> Vec<[String; 3]> {
        rows.iter()
            .map(|r| [r[0].clone(), r[1].clone(), r[2].clone()])
            .collect()
    };
    std::fs::write(
        tmp.path().join("cmdline"),
        "/usr/bin/kubelet --config=/var/lib/kubelet/kubelet-config.yaml --node-ip=10.8.0.205 --container-runtime=docker \\\n  --image-pull-progress-deadline=2m --kubeconfig=/var/lib/kubelet/kubeconfig --network-plugin=cni \\\n  --cni-conf-dir=/etc/cni/net.d --cni-bin-dir=/opt/cni/bin --cloud-provider= --register-node=true\n",
    )
    .unwrap();
    let (config, rows, _) = migrate_json(tmp.path(), &["cmdline", "--kubernetes-version", "1.36.4"]);
    assert_eq!(config, yaml_config);
    assert_eq!(without_source(&rows), without_source(&yaml_rows));
    assert!(rows.iter().all(|r| r[3] == "cmdline"), "{rows:?}");

    std::fs::write(
        tmp.path().join("kubelet.service"),
        "[Unit]\nDescription=kubelet\nAfter=docker.service\nRequires=docker.service\n\n[Service]\nEnvironment=\"KUBELET_NET=--network-plugin=cni --cni-conf-dir=/etc/cni/net.d --cni-bin-dir=/opt/cni/bin\"\nExecStart=/usr/bin/kubelet --config=/var/lib/kubelet/kubelet-config.yaml --node-ip=10.8.0.205 --container-runtime=docker \\\n  --image-pull-progress-deadline=2m --kubeconfig=/var/lib/kubelet/kubeconfig $KUBELET_NET --cloud-provider= --register-node=true\nRestart=always\n",
    )
    .unwrap();
    let (config, rows, _) = migrate_json(tmp.path(), &["kubelet.service", "--kubernetes-version", "1.36.4"]);
    assert_eq!(config, yaml_config);
    let (flags, deps) = rows.split_at(yaml_rows.len());
    assert_eq!(without_source(flags), without_source(&yaml_rows));
    assert_eq!(row(flags, "network-plugin", "cni")[3], "kubelet.service ($KUBELET_NET)");
    assert_eq!(row(flags, "node-ip", "10.8.0.205")[3], "kubelet.service (ExecStart)");
    let deps: Vec<[&str; 3]> = deps
        .iter()
        .map(|r| [r[0].as_str(), r[1].as_str(), r[2].as_str()])
        .collect();
    assert_eq!(
        deps,
        [
            ["unit", "After=docker.service", "replaced"],
            ["unit", "Requires=docker.service", "replaced"]
        ]
    );
}

/// kubeadm's packaged unit, its drop-in, the flags file kubeadm wrote on a Docker-era node,
/// /etc/default/kubelet and the KubeletConfiguration, all at once, as kubelet sees them.
#[test]
fn a_kubeadm_node_with_its_drop_in_env_files_and_config_file() {
    let dir = fixtures("kubeadm");
    let (config, rows, _) = migrate_json(
        &dir,
        &[
            "kubelet.service",
            "10-kubeadm.conf",
            "kubeadm-flags.env",
            "kubelet",
            "--kubelet-config",
            "config.yaml",
            "--kubernetes-version",
            "1.32.13",
        ],
    );
    let r = |s: &str, v: &str| row(&rows, s, v)[2..].to_vec();
    // $KUBELET_KUBECONFIG_ARGS and $KUBELET_CONFIG_ARGS from the drop-in's Environment= lines.
    assert_eq!(
        r("bootstrap-kubeconfig", "/etc/kubernetes/bootstrap-kubelet.conf"),
        ["replaced", "10-kubeadm.conf ($KUBELET_KUBECONFIG_ARGS)"]
    );
    assert_eq!(
        r("config", "/var/lib/kubelet/config.yaml"),
        ["replaced", "10-kubeadm.conf ($KUBELET_CONFIG_ARGS)"]
    );
    // kubeadm-flags.env through EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env.
    assert_eq!(
        r("container-runtime", "remote"),
        ["replaced", "kubeadm-flags.env ($KUBELET_KUBEADM_ARGS)"]
    );
    assert_eq!(
        r("pod-infra-container-image", "k8s.gcr.io/pause:3.2"),
        ["replaced", "kubeadm-flags.env ($KUBELET_KUBEADM_ARGS)"]
    );
    assert_eq!(config["containerd"]["sandboxImage"], "k8s.gcr.io/pause:3.2");
    // /etc/default/kubelet comes last in ExecStart, so its --network-plugin wins, as in kubelet.
    assert_eq!(r("network-plugin", "cni")[0], "overridden");
    assert_eq!(
        r("network-plugin", "kubenet"),
        ["removed", "kubelet ($KUBELET_EXTRA_ARGS)"]
    );
    // --max-pods beats the config file's maxPods.
    assert_eq!(r("max-pods", "150")[0], "moved");
    assert_eq!(r("maxPods", "110"), ["overridden", "config.yaml"]);
    assert_eq!(config["kubelet"]["settings"]["maxPods"], 150);
    // The config file: merged, less what kiln owns.
    assert_eq!(
        config["kubelet"]["settings"]["staticPodPath"],
        "/etc/kubernetes/manifests"
    );
    assert_eq!(
        config["kubelet"]["settings"]["authentication"]["webhook"]["enabled"],
        true
    );
    assert!(
        config["kubelet"]["settings"]["authentication"].get("x509").is_none(),
        "{config}"
    );
    assert!(config["kubelet"]["settings"].get("clusterDNS").is_none(), "{config}");
    assert!(config["kubelet"]["settings"].get("cgroupDriver").is_none(), "{config}");
    assert_eq!(config["containerd"]["systemdCgroup"], true);
    assert_eq!(r("clusterDNS", "[\"10.96.0.10\"]")[0], "node-specific");
    // Every flag of every variable is in the report.
    for var in [
        "$KUBELET_KUBECONFIG_ARGS",
        "$KUBELET_CONFIG_ARGS",
        "$KUBELET_KUBEADM_ARGS",
        "$KUBELET_EXTRA_ARGS",
    ] {
        assert!(
            rows.iter().any(|r| r[3].ends_with(&format!("({var})"))),
            "{var}: {rows:#?}"
        );
    }
    assert_eq!(
        rows.iter()
            .filter(|r| r[3].ends_with("($KUBELET_KUBEADM_ARGS)"))
            .count(),
        4
    );

    // The migrated section builds: it is a valid manifest config for the version.
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let yaml = ok(&migrate_in(
        &dir,
        &[
            "kubelet.service",
            "10-kubeadm.conf",
            "kubeadm-flags.env",
            "kubelet",
            "--kubelet-config",
            "config.yaml",
            "--kubernetes-version",
            "1.36.4",
        ],
    ));
    let indented: String = yaml
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("  {l}\n"))
        .collect();
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&indented);
    std::fs::write(&manifest, text).unwrap();
    let (o, bundle) = build_amd64(tmp.path(), &manifest, &mirror, &[]);
    ok(&o);
    let kubelet_config = tar_member(&bundle, "etc/kubelet/config.yaml");
    assert!(kubelet_config.contains("maxPods: 150"), "{kubelet_config}");
    assert!(
        kubelet_config.contains("staticPodPath: /etc/kubernetes/manifests"),
        "{kubelet_config}"
    );
    assert!(tar_member(&bundle, "etc/containerd/config.toml").contains("k8s.gcr.io/pause:3.2"));
}

#[test]
fn the_drop_in_alone_names_the_env_files_it_did_not_read() {
    let (_, rows, report) = migrate_json(
        &fixtures("kubeadm"),
        &["10-kubeadm.conf", "--kubernetes-version", "1.32.13"],
    );
    assert_eq!(
        row(&rows, "EnvironmentFile", "/var/lib/kubelet/kubeadm-flags.env")[2],
        "not-read"
    );
    assert_eq!(row(&rows, "EnvironmentFile", "/etc/default/kubelet")[2], "not-read");
    assert!(
        report.to_string().contains("pass a copy of it (kubeadm-flags.env)"),
        "{report}"
    );
    assert_eq!(row(&rows, "config", "/var/lib/kubelet/config.yaml")[2], "replaced");
}

#[test]
fn the_flags_file_alone_is_read_as_kubelet_flags() {
    let (config, rows, _) = migrate_json(
        &fixtures("kubeadm"),
        &["kubeadm-flags.env", "--kubernetes-version", "1.32.13"],
    );
    assert_eq!(rows.len(), 4, "{rows:#?}");
    assert_eq!(
        row(&rows, "network-plugin", "cni")[2..],
        ["removed", "kubeadm-flags.env ($KUBELET_KUBEADM_ARGS)"]
    );
    assert_eq!(config["containerd"]["sandboxImage"], "k8s.gcr.io/pause:3.2");
}

#[test]
fn docker_daemon_settings_from_daemon_json_and_the_seeds_dockerd_command_line() {
    let dir = fixtures("kubeadm");
    let (config, rows, _) = migrate_json(&dir, &["daemon.json", "--kubernetes-version", "1.32.13"]);
    assert_eq!(rows.len(), 9, "every daemon.json setting has a row: {rows:#?}");
    assert_eq!(config["cni"]["mtu"], 1450);
    assert_eq!(config["kubelet"]["settings"]["containerLogMaxSize"], "100Mi");
    assert_eq!(config["kubelet"]["settings"]["containerLogMaxFiles"], 5);
    assert_eq!(
        config["containerd"]["registries"]["docker.io"]["mirrors"][0]["host"],
        "https://mirror.gcr.io"
    );
    assert_eq!(
        config["containerd"]["registries"]["registry.internal:5000"]["skipVerify"],
        true
    );
    assert_eq!(row(&rows, "dockerd data-root", "/srv/docker")[2], "dropped");
    assert_eq!(row(&rows, "dockerd log-driver", "json-file")[2], "dropped");
    assert_eq!(row(&rows, "dockerd storage-driver", "overlay2")[2], "kept");

    // The seed's node: dockerd's flags in docker.service's ExecStart.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("docker.service"),
        "[Service]\nExecStart=/usr/bin/dockerd --bip= --ip-masq=false --iptables=false --mtu=1472 --storage-driver=overlay2 --log-level=error\n",
    )
    .unwrap();
    let (config, rows, _) = migrate_json(tmp.path(), &["docker.service", "--kubernetes-version", "1.32.13"]);
    let results: Vec<[&str; 2]> = rows.iter().map(|r| [r[0].as_str(), r[2].as_str()]).collect();
    assert_eq!(
        results,
        [
            ["dockerd bip", "dropped"],
            ["dockerd ip-masq", "dropped"],
            ["dockerd iptables", "dropped"],
            ["dockerd mtu", "moved"],
            ["dockerd storage-driver", "kept"],
            ["dockerd log-level", "dropped"]
        ]
    );
    assert_eq!(config, serde_json::json!({"cni": {"mtu": 1472}}));
}

#[test]
fn an_input_that_yields_nothing_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, text, expected) in [
        ("empty.env", "# nothing\n", "empty.env: only comments"),
        ("blank", "  \n", "blank: empty; expected kubelet or Docker settings"),
        ("override.conf", "[Service]\nRestart=always\n", "override.conf: no ExecStart= line"),
        ("unused.env", "KUBELET_EXTRA_ARGS=\n", "unused.env: no kubelet flags or Docker settings found ($KUBELET_EXTRA_ARGS : empty: no flags to carry over)"),
    ] {
        std::fs::write(tmp.path().join(name), text).unwrap();
        let out = migrate_in(tmp.path(), &[name, "--kubernetes-version", "1.32.13"]);
        let err = fails(&out);
        assert!(err.contains(expected), "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
    }
    std::fs::write(
        tmp.path().join("kc.yaml"),
        "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\nmaxPod: 10\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("flags"), "--max-pods=20\n").unwrap();
    let (_, rows, _) = migrate_json(
        tmp.path(),
        &[
            "flags",
            "--kubelet-config",
            "kc.yaml",
            "--kubernetes-version",
            "1.32.13",
        ],
    );
    assert_eq!(row(&rows, "maxPod", "10")[2], "removed");
    std::fs::write(tmp.path().join("kc.yaml"), "kind: KubeProxyConfiguration\n").unwrap();
    let err = fails(&migrate_in(
        tmp.path(),
        &[
            "flags",
            "--kubelet-config",
            "kc.yaml",
            "--kubernetes-version",
            "1.32.13",
        ],
    ));
    assert!(
        err.contains("kc.yaml: expected kind: KubeletConfiguration, found kind: KubeProxyConfiguration"),
        "{err}"
    );
}

#[test]
fn the_migrated_config_builds_into_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let (config, _) = migrate(&fixture("input.yaml"));
    let indented: String = config
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("  {l}\n"))
        .collect();
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&indented);
    std::fs::write(&manifest, text).unwrap();
    let (o, bundle) = build_amd64(tmp.path(), &manifest, &mirror, &[]);
    ok(&o);
    let read = |member: &str| tar_member(&bundle, member);
    let kubelet_config = read("etc/kubelet/config.yaml");
    assert!(kubelet_config.contains("registerNode: true"), "{kubelet_config}");
    assert!(
        kubelet_config.contains("containerRuntimeEndpoint: unix:///run/containerd/containerd.sock"),
        "{kubelet_config}"
    );
    let unit = read("systemd/kubelet.service");
    assert!(unit.contains("--cloud-provider="), "{unit}");
    assert!(
        !unit.contains("network-plugin") && !unit.contains("container-runtime=") && !unit.contains("docker"),
        "{unit}"
    );
}

#[test]
fn a_removed_flag_in_a_manifest_fails_the_build_with_version_and_replacement() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("  config:\n    kubelet:\n      flags:\n        network-plugin: cni\n        max-pods: \"50\"\n");
    std::fs::write(&manifest, text).unwrap();
    let (o, _) = build_amd64(tmp.path(), &manifest, &mirror, &[]);
    let err = fails(&o);
    assert!(
        err.contains("error: --network-plugin: removed in Kubernetes 1.24 (dockershim removal); replacement: the container runtime's CNI configuration"),
        "{err}"
    );
    assert!(listing(&tmp.path().join("out")).is_empty());
}

#[test]
fn help_names_only_the_outputs_it_takes_and_a_closed_pipe_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let help = ok(&kiln(tmp.path(), &["migrate", "--help"]));
    assert!(help.contains("[possible values: table, json]"), "{help}");
    assert!(!help.contains("yaml:"), "an output -o does not take: {help}");
    for output in ["table", "json"] {
        // `kiln migrate ... | head -0`: the reader is gone before kiln writes.
        kiln_testkit::assert_quiet_on_closed_pipe(std::process::Command::new(env!("CARGO_BIN_EXE_kiln")).args([
            "migrate",
            fixture("input.yaml").to_str().unwrap(),
            "--kubernetes-version",
            "1.36.4",
            "-o",
            output,
        ]));
    }
}
