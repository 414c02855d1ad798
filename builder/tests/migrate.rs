//! `kiln migrate` on the dockershim-era settings from the issue, with its exact expected output,
//! the same settings as a command line and as a unit, and the result built into a bundle.

mod common;

use std::path::PathBuf;

use common::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/migrate/ansible-dockershim")
        .join(name)
}

fn migrate(input: &std::path::Path) -> (String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out = kiln(
        tmp.path(),
        &["migrate", input.to_str().unwrap(), "--kubernetes-version", "1.36.4"],
    );
    let stdout = ok(&out);
    (stdout, String::from_utf8_lossy(&out.stderr).into_owned())
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
    let cmdline = tmp.path().join("cmdline");
    std::fs::write(
        &cmdline,
        "/usr/bin/kubelet --config=/var/lib/kubelet/kubelet-config.yaml --node-ip=10.8.0.205 --container-runtime=docker \\\n  --image-pull-progress-deadline=2m --kubeconfig=/var/lib/kubelet/kubeconfig --network-plugin=cni \\\n  --cni-conf-dir=/etc/cni/net.d --cni-bin-dir=/opt/cni/bin --cloud-provider= --register-node=true\n",
    )
    .unwrap();
    let (config, report) = migrate(&cmdline);
    assert_eq!(
        config,
        std::fs::read_to_string(fixture("expected-config.yaml")).unwrap()
    );
    assert_eq!(report, std::fs::read_to_string(fixture("expected-report.txt")).unwrap());

    let unit = tmp.path().join("kubelet.service");
    std::fs::write(
        &unit,
        "[Unit]\nDescription=kubelet\nAfter=docker.service\nRequires=docker.service\n\n[Service]\nEnvironment=\"KUBELET_NET=--network-plugin=cni --cni-conf-dir=/etc/cni/net.d --cni-bin-dir=/opt/cni/bin\"\nExecStart=/usr/bin/kubelet --config=/var/lib/kubelet/kubelet-config.yaml --node-ip=10.8.0.205 --container-runtime=docker \\\n  --image-pull-progress-deadline=2m --kubeconfig=/var/lib/kubelet/kubeconfig $KUBELET_NET --cloud-provider= --register-node=true\nRestart=always\n",
    )
    .unwrap();
    let (config, report) = migrate(&unit);
    assert_eq!(
        config,
        std::fs::read_to_string(fixture("expected-config.yaml")).unwrap()
    );
    assert!(
        report.contains("unit                          After=docker.service"),
        "{report}"
    );
    assert!(report.contains("Requires=docker.service"), "{report}");
    assert!(
        report.contains("kiln's kubelet.service has After= and Requires=containerd.service"),
        "{report}"
    );
    assert_eq!(report.lines().count(), 13, "{report}");
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
    let read = |member: &str| {
        let o = std::process::Command::new("tar")
            .args(["--zstd", "-xOf"])
            .arg(&bundle)
            .arg(member)
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap()
    };
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
