//! The simulator's fidelity, checked with the real kubectl: `kubectl cordon`, `kubectl get nodes` and
//! `kubectl drain` behave against it as kubectl documents, for DaemonSets, mirror pods, emptyDir,
//! unmanaged pods and a blocking PodDisruptionBudget, and under injected latency, 429s and dropped
//! watches. Needs kubectl on PATH.

mod common;

use common::*;

#[test]
fn cordon_and_get_nodes() {
    let c = Cluster::new();
    mixed(&c);
    let out = c.kubectl(&["get", "nodes"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "STATUS", "ROLES", "AGE", "VERSION"]),
        "{t}"
    );
    assert!(t.contains("node-a   Ready    <none>"), "{t}");
    let out = c.kubectl(&["cordon", "node-a"]);
    assert_eq!(text(&out).trim(), "node/node-a cordoned");
    let t = text(&c.kubectl(&["get", "nodes", "-o", "wide"]));
    assert!(
        t.contains("node-a   Ready,SchedulingDisabled") && t.contains("containerd://2.3.4"),
        "{t}"
    );
    assert_eq!(c.sim.node("node-a").unwrap()["spec"]["unschedulable"], true);
    assert_eq!(
        text(&c.kubectl(&["uncordon", "node-a"])).trim(),
        "node/node-a uncordoned"
    );
    assert!(c.sim.node("node-a").unwrap()["spec"]["unschedulable"].is_null());
}

#[test]
fn drain_refuses_without_flags_as_kubectl_documents() {
    let c = Cluster::new();
    mixed(&c);
    let out = c.kubectl(&["drain", "node-a", "--timeout=20s"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)"),
        "{t}"
    );
    assert!(
        t.contains("cannot delete Pods with local storage (use --delete-emptydir-data to override)"),
        "{t}"
    );
    assert!(
        t.contains("cannot delete Pods that declare no controller (use --force to override)"),
        "{t}"
    );
    assert!(
        c.sim.evictions().is_empty(),
        "nothing is evicted: {:?}",
        c.sim.evictions()
    );
    assert_eq!(
        c.sim.node("node-a").unwrap()["spec"]["unschedulable"],
        true,
        "but the node is cordoned"
    );
}

#[test]
fn drain_with_flags_evicts_all_but_daemonset_and_mirror_pods() {
    let c = Cluster::new();
    mixed(&c);
    let out = c.kubectl(&[
        "drain",
        "node-a",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--grace-period=1",
        "--timeout=60s",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("ignoring DaemonSet-managed Pods: kube-system/proxy-a")
            && t.contains("deleting Pods that declare no controller: default/bare"),
        "{t}"
    );
    assert!(t.contains("node/node-a drained"), "{t}");
    let mut left = c.sim.pods_on("node-a");
    left.sort();
    assert_eq!(left, ["kube-system/etcd-node-a", "kube-system/proxy-a"]);
    assert!(c.sim.violations().is_empty(), "{:?}", c.sim.violations());
}

#[test]
fn drain_is_held_by_a_blocking_pdb() {
    let c = Cluster::new();
    c.sim.add_node("node-a", &[], "v1.36.4", "containerd://2.3.4");
    c.sim.add_rs_pod("default", "db-0", "node-a", "db", 1);
    c.sim.add_pdb("default", "db", &[("app", "db")], Some(1), None);
    let out = c.kubectl(&["drain", "node-a", "--timeout=8s"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{t}"
    );
    assert_eq!(c.sim.pods_on("node-a"), ["default/db-0"]);
    assert!(c.sim.evictions().iter().all(|e| e.outcome == "blocked"));
    assert!(c.sim.violations().is_empty());
}

#[test]
fn kubectl_drain_under_injected_faults_keeps_the_invariants() {
    let c = Cluster::new();
    c.sim.run_replicaset_controller(std::time::Duration::from_millis(200));
    c.sim.add_node("node-a", &[], "v1.36.4", "containerd://2.3.4");
    c.sim.add_node("node-b", &[], "v1.36.4", "containerd://2.3.4");
    for i in 0..3 {
        c.sim.add_rs_pod("default", &format!("api-{i}"), "node-a", "api", 1);
    }
    c.sim.add_rs_pod("default", "api-b", "node-b", "api", 1);
    c.sim.add_ds_pod("kube-system", "proxy-a", "node-a", "proxy", 1);
    c.sim.add_pdb("default", "api", &[("app", "api")], None, Some(1));
    // kubectl retries a 429 (from the PDB or injected) every 5 s, as it documents.
    c.sim.set_faults(kiln_kube_sim::Faults {
        latency: std::time::Duration::from_millis(5),
        error_every: 0,
        throttle_every: 3,
        drop_watch_after: Some(std::time::Duration::from_millis(300)),
    });
    let out = c.kubectl(&["drain", "node-a", "--ignore-daemonsets", "--timeout=120s"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("will retry after 5s"), "kubectl saw the 429s: {t}");
    assert_eq!(c.sim.pods_on("node-a"), ["kube-system/proxy-a"]);
    assert!(c.sim.violations().is_empty(), "{:?}", c.sim.violations());
    assert!(c.sim.evictions().iter().any(|e| e.outcome == "blocked"));
}
