//! `kubectl kiln` against the simulator: the same drain semantics as kubectl, plus what kubectl
//! does not do: immediate detection of a PDB that can never allow the eviction, a JSON report,
//! an honest exit code, and PDBs held under injected faults.

mod common;

use std::time::Duration;

use common::*;
use kiln_kube_sim::Faults;

fn report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))[0].clone()
}

fn names(v: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["pod"]["namespace"].as_str().unwrap(),
                d["pod"]["name"].as_str().unwrap()
            )
        })
        .collect();
    n.sort();
    n
}

#[test]
fn drain_follows_kubectl_rules_and_reports() {
    let c = Cluster::new();
    mixed(&c);
    // Without flags: refused, nothing evicted, non-zero exit.
    let out = c.kiln(&["drain", "node-a", "-o", "json"]);
    assert!(!out.status.success());
    let r = report(&out);
    assert_eq!(
        names(&r["blocked"]),
        ["default/bare", "default/cache-1", "kube-system/proxy-a"]
    );
    assert_eq!(names(&r["skipped"]), ["kube-system/etcd-node-a"]);
    assert!(c.sim.evictions().is_empty());

    // Dry run with flags: the plan, no changes.
    let out = c.kiln(&[
        "drain",
        "node-a",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--dry-run",
        "-o",
        "json",
    ]);
    let r = report(&out);
    assert_eq!(
        names(&r["evicted"]),
        ["default/bare", "default/cache-1", "default/web-1", "default/web-2"]
    );
    assert!(c.sim.evictions().is_empty());

    let out = c.kiln(&[
        "drain",
        "node-a",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--grace-period",
        "1",
        "--timeout",
        "60s",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("node/node-a drained"));
    let mut left = c.sim.pods_on("node-a");
    left.sort();
    assert_eq!(left, ["kube-system/etcd-node-a", "kube-system/proxy-a"]);
    assert!(c.sim.violations().is_empty(), "{:?}", c.sim.violations());

    let out = c.kiln(&["uncordon", "node-a"]);
    assert!(out.status.success());
    assert!(c.sim.node("node-a").unwrap()["spec"]["unschedulable"].is_null());
}

#[test]
fn a_pdb_that_can_never_allow_eviction_is_reported_at_once() {
    let c = Cluster::new();
    c.sim.add_node("node-a", &[], "v1.36.4", "containerd://2.3.4");
    c.sim.add_rs_pod("default", "db-0", "node-a", "db", 1);
    c.sim.add_rs_pod("default", "db-1", "node-a", "db", 1);
    c.sim.add_pdb("default", "db-pdb", &[("app", "db")], Some(2), None);
    let started = std::time::Instant::now();
    let out = c.kiln(&["drain", "node-a", "--timeout", "120s", "-o", "json"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "not spinning until the timeout"
    );
    assert!(!out.status.success(), "never a success while a pod is still there");
    let r = report(&out);
    let reasons: Vec<&str> = r["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().all(|m| m.contains("PodDisruptionBudget db-pdb")),
        "{reasons:?}"
    );
    assert_eq!(c.sim.pods_on("node-a").len(), 2);
}

/// As the real API server does (rollout/tests/real_server.rs shows it with kubectl): a pod that is
/// not running is evicted whatever its budget says.
#[test]
fn a_pod_that_is_not_running_ignores_its_budget() {
    let c = Cluster::new();
    c.sim.add_node("node-a", &[], "v1.36.4", "containerd://2.3.4");
    c.sim.add_rs_pod("default", "db-0", "node-a", "db", 1);
    c.sim.set_pod_phase("default", "db-0", "Pending");
    c.sim.add_pdb("default", "db-pdb", &[("app", "db")], Some(1), None);
    let out = c.kiln(&["drain", "node-a", "--timeout", "30s", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(c.sim.pods_on("node-a").is_empty());
}

#[test]
fn a_pdb_is_honoured_one_pod_at_a_time_under_injected_faults() {
    let c = Cluster::new();
    c.sim.add_node("node-a", &[], "v1.36.4", "containerd://2.3.4");
    c.sim.add_node("node-b", &[], "v1.36.4", "containerd://2.3.4");
    for i in 0..4 {
        c.sim.add_rs_pod("default", &format!("api-{i}"), "node-a", "api", 1);
    }
    c.sim.add_rs_pod("default", "api-b", "node-b", "api", 1);
    // One pod may be down at a time: evictions must wait for the previous pod to be gone.
    c.sim.add_pdb("default", "api", &[("app", "api")], None, Some(1));
    c.sim.set_faults(Faults {
        latency: Duration::from_millis(5),
        error_every: 7,
        throttle_every: 3,
        drop_watch_after: None,
    });
    let out = c.kiln(&["drain", "node-a", "--timeout", "90s", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(c.sim.pods_on("node-a").is_empty());
    assert!(c.sim.violations().is_empty(), "{:?}", c.sim.violations());
    assert!(
        c.sim.evictions().iter().any(|e| e.outcome == "blocked"),
        "the PDB and the faults did push back"
    );
}

#[test]
fn status_shows_bundles_and_skew() {
    let c = Cluster::new();
    c.sim.add_node(
        "node-a",
        &[
            ("kiln.dev/bundle-version", "1.36.4-1"),
            ("kiln.dev/bundle-digest", "0123456789ab"),
        ],
        "v1.36.4",
        "containerd://2.3.4",
    );
    c.sim.add_node(
        "node-b",
        &[
            ("kiln.dev/bundle-version", "1.36.4-2"),
            ("kiln.dev/bundle-digest", "ba9876543210"),
        ],
        "v1.36.4",
        "containerd://2.3.4",
    );
    let out = c.kiln(&["status"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.lines().next().unwrap().split_whitespace().eq([
            "NAME",
            "READY",
            "SCHEDULABLE",
            "BUNDLE",
            "RUNTIME",
            "KUBELET"
        ]),
        "{t}"
    );
    assert!(
        t.contains("node-a   True    True          1.36.4-1   containerd://2.3.4   v1.36.4"),
        "{t}"
    );
    assert!(t.contains("version skew: bundles 1.36.4-1, 1.36.4-2"), "{t}");
    let wide = text(&c.kiln(&["status", "-o", "wide"]));
    assert!(wide.contains("0123456789ab"), "{wide}");
    let json: serde_json::Value = serde_json::from_slice(&c.kiln(&["status", "-o", "json"]).stdout).unwrap();
    assert_eq!(json["nodes"][1]["bundleDigest"], "ba9876543210");
}

#[test]
fn kubectl_finds_the_plugin_on_path() {
    let c = Cluster::new();
    c.sim.add_node(
        "node-a",
        &[("kiln.dev/bundle-version", "1.36.4-1")],
        "v1.36.4",
        "containerd://2.3.4",
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = std::process::Command::new("kubectl")
        .args(["plugin", "list"])
        .env("PATH", &path)
        .env("HOME", c.home())
        .output()
        .unwrap();
    assert!(text(&out).contains("kubectl-kiln"), "{}", text(&out));
    let out = std::process::Command::new("kubectl")
        .args(["kiln", "status"])
        .env("PATH", &path)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.home())
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).contains("1.36.4-1"),
        "{}",
        text(&out)
    );
}

#[test]
fn drain_shows_live_progress_on_a_terminal_only() {
    let c = Cluster::new();
    c.sim.add_node("node-a", &[], "v1.36.4", "containerd://2.3.4");
    for i in 0..5 {
        c.sim.add_rs_pod("default", &format!("web-{i}"), "node-a", "web", 1);
    }
    // `script` gives the drain a pseudo-terminal, as a person at a shell has.
    let cmd = format!("{} drain node-a --timeout 60s", env!("CARGO_BIN_EXE_kubectl-kiln"));
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("script (bsdutils) is installed");
    let tty = text(&out);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("draining node-a:") && tty.contains("pods gone"), "{tty}");
    assert!(tty.contains("node/node-a drained"), "{tty}");
    // Without a terminal (a CI log, a pipe): no redrawn line and no escape codes, but a line per
    // event as it happens, as kubectl prints them.
    c.sim.add_rs_pod("default", "web-x", "node-a", "web", 1);
    let out = c.kiln(&["drain", "node-a", "--timeout", "60s"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !text(&out).contains("pods gone") && !stderr.contains('\x1b'),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains("node-a: default/web-x: evicted, waiting for it to terminate"),
        "{stderr}"
    );
    assert!(stderr.contains("node-a: default/web-x: gone"), "{stderr}");
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let c = Cluster::new();
    mixed(&c);
    for args in [
        &["status", "-o", "json"][..],
        &["status"],
        &["drain", "node-a", "--dry-run", "--ignore-daemonsets", "--force"],
    ] {
        // `kubectl kiln status -o json | head -0`: the reader is gone before anything is written.
        kiln_testkit::assert_quiet_on_closed_pipe(
            std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
                .args(args)
                .env("KUBECONFIG", &c.kubeconfig),
        );
    }
}
