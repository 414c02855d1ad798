//! Adopting a running worker (`kiln-firstboot adopt`) into a temporary root with the recording
//! system: a worker set up as an Ansible role sets one up (kubelet in /usr/local/bin, a hand-written
//! unit with its flags in a drop-in and an environment file, a KubeletConfiguration, Docker and
//! Debian's containerd running). Settings the bundle would lose refuse the adoption before
//! anything is written; an accepted adoption keeps the Node's name, node IP and kubeconfig, stops
//! and masks the old runtime and moves the old drop-ins aside, saving every file first; a bundle
//! that fails its health check puts the worker back exactly; a run killed after any step and run
//! again ends as a clean run does.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::worker::*;
use common::*;
use kiln_firstboot::activate::Options;
use kiln_firstboot::adopt::{adopt, AdoptOptions, AdoptStep, Adopted, Phase, Record};
use kiln_firstboot::system::Recording;

fn opts(bundle: &Path) -> AdoptOptions {
    let mut run = Options::default();
    run.endpoints.timeout = std::time::Duration::from_secs(5);
    run.endpoints.retries = 1;
    AdoptOptions {
        bundle: bundle.to_path_buf(),
        accept_losses: false,
        kubelet_unit: "kubelet.service".into(),
        stop_after: None,
        run,
    }
}

fn systemd_state(sys: &Recording) -> (BTreeSet<String>, BTreeMap<String, String>) {
    (sys.active.clone(), sys.unit_files.clone())
}

/// The worker's tree without kiln's own state (what a rollback must give back).
fn worker_tree(root: &Path) -> BTreeMap<String, String> {
    tree(root)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("var/lib/kiln"))
        .collect()
}

#[test]
fn settings_the_bundle_would_lose_refuse_the_adoption_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let root = worker(tmp.path());
    let before = tree(&root);
    let mut sys = worker_system(&root);
    let e = format!("{:#}", adopt(&root, &mut sys, &opts(&bundle)).unwrap_err());
    assert!(
        e.starts_with(
            "refusing to adopt Node worker96: the worker would lose 1 setting(s) bundle 1.36.4-1 does not keep:"
        ) && e.contains("lost --max-pods (maxPods)=50 (/etc/default/kubelet ($KUBELET_EXTRA_ARGS))")
            && e.contains("--accept-losses"),
        "{e}"
    );
    assert_eq!(tree(&root), before, "nothing written");
    assert_eq!(
        systemd_state(&sys),
        systemd_state(&worker_system(&root)),
        "nothing stopped"
    );

    // Docker's registry mirror is a setting too; a bundle with the same mirror keeps it.
    write(
        &root,
        "etc/docker/daemon.json",
        r#"{"registry-mirrors": ["https://mirror.lan/"], "exec-opts": ["native.cgroupdriver=systemd"], "log-driver": "json-file"}"#,
    );
    let keeps_pods = build_bundle(tmp.path(), &mirror, "1.36.4-2", true, KEEPS_MAX_PODS);
    let e = format!("{:#}", adopt(&root, &mut sys, &opts(&keeps_pods)).unwrap_err());
    assert!(
        e.contains("would lose 1 setting(s)")
            && e.contains("lost registry-mirrors=https://mirror.lan/ (/etc/docker/daemon.json)"),
        "{e}"
    );
    let keeps_both = build_bundle(tmp.path(), &mirror, "1.36.4-3", true, KEEPS_MAX_PODS_AND_MIRROR);
    let mut inspect_only = opts(&keeps_both);
    inspect_only.stop_after = Some(AdoptStep::Inspect);
    adopt(&root, &mut sys, &inspect_only).unwrap();
    std::fs::remove_file(root.join("etc/docker/daemon.json")).unwrap();
    let before = tree(&root);
    // A daemon.json that does not parse is named, and stops the adoption before anything changes.
    write(&root, "etc/docker/daemon.json", "{\"registry-mirrors\": [");
    let e = format!("{:#}", adopt(&root, &mut sys, &opts(&keeps_both)).unwrap_err());
    assert!(
        e.contains("the worker's /etc/docker/daemon.json is not a JSON object"),
        "{e}"
    );
    std::fs::remove_file(root.join("etc/docker/daemon.json")).unwrap();
    assert_eq!(tree(&root), before, "nothing written");

    // A bundle without a kubelet is not a node bundle; a wrong digest is refused by name.
    let no_kubelet = build_bundle(tmp.path(), &mirror, "1.36.4-9", false, "");
    let e = format!("{:#}", adopt(&root, &mut sys, &opts(&no_kubelet)).unwrap_err());
    assert!(e.contains("bundle 1.36.4-9 has no kubelet"), "{e}");
    let mut sum = bundle.as_os_str().to_owned();
    sum.push(".sha256");
    let good = std::fs::read_to_string(&sum).unwrap();
    std::fs::write(&sum, format!("{}{}", "0".repeat(64), &good[64..])).unwrap();
    let e = format!("{:#}", adopt(&root, &mut sys, &opts(&bundle)).unwrap_err());
    assert!(
        e.contains("refusing bundle") && e.contains("outer digest mismatch"),
        "{e}"
    );
    assert_eq!(tree(&root), before, "nothing written");
}

#[test]
fn an_adoption_keeps_the_nodes_identity_masks_docker_and_saves_what_it_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, KEEPS_MAX_PODS);
    let root = worker(tmp.path());
    let mut sys = worker_system(&root);
    let done = adopt(&root, &mut sys, &opts(&bundle)).unwrap();
    let Adopted::Done { record, already } = done else {
        panic!("{done:?}")
    };
    assert!(!already);
    assert_eq!((record.node.as_str(), record.phase), ("worker96", Phase::Adopted));
    let verdict = |s: &str| {
        record
            .compared
            .iter()
            .find(|c| c.setting == s)
            .map(|c| c.verdict.to_string())
            .unwrap_or_else(|| panic!("no {s} in {:#?}", record.compared))
    };
    assert_eq!(verdict("--max-pods (maxPods)"), "same");
    assert_eq!(verdict("--node-ip"), "carried");
    assert_eq!(verdict("cgroupDriver"), "same");
    assert_eq!(verdict("--container-runtime-endpoint"), "replaced");

    // The old runtime stopped; Docker's units masked; kiln's containerd and kubelet running.
    let stopped: Vec<&String> = sys.calls.iter().filter(|c| c.starts_with("stop ")).collect();
    assert_eq!(
        stopped,
        [
            "stop kubelet.service",
            "stop docker.socket",
            "stop docker.service",
            "stop containerd.service"
        ],
        "{:?}",
        sys.calls
    );
    assert_eq!(sys.unit_files["docker.service"], "masked");
    assert_eq!(sys.unit_files["docker.socket"], "masked");
    assert!(sys.active.contains("kubelet.service") && sys.active.contains("containerd.service"));
    assert!(!sys.active.contains("docker.service") && !sys.active.contains("docker.socket"));
    assert!(
        sys.calls.iter().any(|c| c == "health node worker96 (1.36.4-1)"),
        "the Node checked on the bundle: {:?}",
        sys.calls
    );

    // The same Node, IP and kubelet identity.
    let adopted = std::fs::read_to_string(root.join("etc/kiln/node.d/50-adopted.yaml")).unwrap();
    let v: serde_json::Value = kiln_bundle::yaml::from_str(&adopted, "adopted").unwrap();
    assert_eq!(v["hostname"], "worker96");
    assert_eq!(v["nodeIP"], "10.8.0.205");
    assert_eq!(v["clusterDNS"], "10.96.0.10");
    assert_eq!(v["apiServer"], "https://10.8.0.1:6443");
    assert_eq!(
        std::fs::read_to_string(root.join("var/lib/kubelet/kubeconfig")).unwrap(),
        KUBECONFIG
    );
    let kiln_unit = std::fs::read_to_string(root.join("etc/systemd/system/kubelet.service")).unwrap();
    assert!(kiln_unit.contains("/var/lib/kiln/current/bin/kubelet"), "{kiln_unit}");
    assert!(
        kiln_unit.contains("--node-ip=10.8.0.205") || kiln_unit.contains("10.8.0.205"),
        "{kiln_unit}"
    );
    let config = std::fs::read_dir(root.join("var/lib/kiln/rendered"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let rendered = std::fs::read_to_string(config.join("etc/kubelet/config.yaml")).unwrap();
    assert!(rendered.contains("10.96.0.10"), "{rendered}");

    // The old drop-in moved aside (it would apply to kiln's kubelet.service); nothing deleted.
    assert!(!root.join("etc/systemd/system/kubelet.service.d/10-flags.conf").exists());
    let saved = root.join("var/lib/kiln/adoption/saved");
    assert_eq!(
        std::fs::read_to_string(saved.join("etc/systemd/system/kubelet.service.d/10-flags.conf")).unwrap(),
        DROPIN
    );
    assert_eq!(
        std::fs::read_to_string(saved.join("etc/systemd/system/kubelet.service")).unwrap(),
        UNIT
    );
    assert!(root.join("usr/local/bin/kubelet").is_file(), "the old binary stays");

    // kiln-firstboot's boot units, which the worker had none of, installed and enabled: each boot
    // verifies the bundle and mounts its verity image again. This worker has no
    // /usr/bin/kiln-firstboot, so they run the binary that adopted.
    for (unit, _) in kiln_bundle::layout::units::FIRSTBOOT_UNITS {
        let text = std::fs::read_to_string(root.join("etc/systemd/system").join(unit)).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert!(
            text.contains(&format!("ExecStart={} run --phase", exe.display())),
            "{text}"
        );
        assert_eq!(
            std::fs::read_link(root.join("etc/systemd/system/multi-user.target.wants").join(unit)).unwrap(),
            Path::new("/etc/systemd/system").join(unit)
        );
    }
    assert!(
        root.join("etc/cni/net.d/10-flannel.conflist").is_file(),
        "the cluster's CNI stays"
    );

    // Run again: nothing to do.
    let again = adopt(&root, &mut sys, &opts(&bundle)).unwrap();
    assert!(matches!(again, Adopted::Done { already: true, .. }), "{again:?}");
    let on_disk = Record::load(&root).unwrap().unwrap();
    assert_eq!(on_disk.phase, Phase::Adopted);
}

#[test]
fn a_bundle_that_fails_its_health_check_puts_the_worker_back_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, KEEPS_MAX_PODS);
    let root = worker(tmp.path());
    let before = worker_tree(&root);
    let mut sys = worker_system(&root);
    let systemd_before = systemd_state(&sys);
    sys.unhealthy_versions.insert("1.36.4-1".into());
    let e = format!("{:#}", adopt(&root, &mut sys, &opts(&bundle)).unwrap_err());
    assert!(
        e.contains("adoption of Node worker96 failed: bundle 1.36.4-1 failed its health check")
            && e.contains("the worker was put back as it was"),
        "{e}"
    );
    assert_eq!(worker_tree(&root), before, "every file as it was");
    assert_eq!(
        systemd_state(&sys),
        systemd_before,
        "units enabled and running as before"
    );
    let last = sys
        .calls
        .iter()
        .rposition(|c| c.starts_with("health node worker96"))
        .unwrap();
    assert_eq!(
        sys.calls[last], "health node worker96 ()",
        "the old kubelet's Node checked again"
    );
    let r = Record::load(&root).unwrap().unwrap();
    assert_eq!(r.phase, Phase::RolledBack);
    assert!(r.error.unwrap().contains("failed its health check"));
    assert!(!root.join("var/lib/kiln/state.json").exists(), "not a kiln node");

    // Once the bundle is fixed, the worker adopts.
    sys.unhealthy_versions.clear();
    assert!(matches!(
        adopt(&root, &mut sys, &opts(&bundle)).unwrap(),
        Adopted::Done { already: false, .. }
    ));
}

#[test]
fn an_adoption_killed_after_any_step_then_run_again_equals_a_clean_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, KEEPS_MAX_PODS);
    let clean = worker(&tmp.path().join("clean"));
    let mut clean_sys = worker_system(&clean);
    adopt(&clean, &mut clean_sys, &opts(&bundle)).unwrap();
    let expected = tree(&clean);
    for &step in AdoptStep::ALL {
        let dir = tmp.path().join(step.name());
        let root = worker(&dir);
        let mut sys = worker_system(&root);
        let first = adopt(
            &root,
            &mut sys,
            &AdoptOptions {
                stop_after: Some(step),
                ..opts(&bundle)
            },
        )
        .unwrap();
        match step {
            AdoptStep::Done => assert!(matches!(first, Adopted::Done { .. }), "{first:?}"),
            _ => assert!(
                matches!(first, Adopted::Stopped { after } if after == step),
                "{first:?}"
            ),
        }
        adopt(&root, &mut sys, &opts(&bundle)).unwrap();
        assert_eq!(
            tree(&root),
            expected,
            "after stopping at {step:?}, the re-run differs from a clean run"
        );
        assert_eq!(
            systemd_state(&sys),
            systemd_state(&clean_sys),
            "after stopping at {step:?}"
        );
    }
}

#[test]
fn the_command_prints_the_report_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, "");
    let root = worker(tmp.path());
    let units: Vec<String> = [
        "kubelet.service",
        "docker.socket",
        "docker.service",
        "containerd.service",
    ]
    .iter()
    .map(|u| format!("{u} enabled"))
    .collect();
    write(&root, "run/kiln-recorded-unit-files", &units.join("\n"));
    write(
        &root,
        "run/kiln-recorded-active",
        "kubelet.service\ndocker.socket\ndocker.service\ncontainerd.service",
    );
    let bin = env!("CARGO_BIN_EXE_kiln-firstboot");
    let run = |extra: &[&str]| {
        std::process::Command::new(bin)
            .arg("--root")
            .arg(&root)
            .arg("adopt")
            .arg(&bundle)
            .args(["--system", "record"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("kiln-firstboot: FAILED: refusing to adopt Node worker96")
            && err.trim_end().ends_with("the worker was not adopted"),
        "{err}"
    );
    let out = run(&["--accept-losses"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.starts_with("Node worker96 adopted: bundle 1.36.4-1 active and healthy\n"),
        "{text}"
    );
    assert!(
        text.contains("--max-pods (maxPods)\t50\t-\tlost\t/etc/default/kubelet"),
        "{text}"
    );
    assert!(
        text.contains("unit      docker.service was enabled and active: masked"),
        "{text}"
    );
    assert!(
        text.contains("saved     /etc/systemd/system/kubelet.service.d/10-flags.conf (moved aside)"),
        "{text}"
    );
    assert!(
        text.contains("Docker's image store (/var/lib/docker) is not carried over"),
        "{text}"
    );
    let out = run(&["-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["node"].as_str(), v["already"].as_bool()),
        (Some("worker96"), Some(true))
    );
    assert_eq!(v["phase"], "adopted");
}
