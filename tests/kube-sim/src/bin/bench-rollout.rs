//! Benchmarks for `kubectl kiln` (drain, replace and roll), run by `just bench`, each against its
//! baseline in the same run:
//! - drain a node with 200 pods that each take 5 s to terminate, with `kubectl kiln drain` and with
//!   `kubectl drain` (same flags, a fresh simulator each run): both wall times, the ratio, and kiln
//!   against the grace-period floor (every pod evicted at once: one grace period);
//! - roll 50 nodes with `--max-surge 5` and 1,000 nodes with `--max-surge 50`, provisioning through a
//!   `curl` POST of the Node (as a kubelet registers), the simulated kubelet Ready 1 s later, two pods
//!   of 1 s each per node: the wall time against the ideal, pool / surge x per-node time (Ready
//!   delay + termination), and the API requests the roll made per replaced node.
//!
//! Usage: bench-rollout PATH/TO/kubectl-kiln [RUNS]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_kube_sim::Sim;

const PODS: usize = 200;
const DRAIN_GRACE_S: i64 = 5;
const READY_AFTER_MS: u64 = 1000;
const GRACE_S: i64 = 1;

const PROVISION: &str = r#"#!/bin/sh
set -eu
new="$KILN_NODE-next"
curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' "$SIM/api/v1/nodes" --data-binary @- <<EOF
{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "$new",
 "labels": {"pool": "bench", "kiln.dev/bundle-version": "$KILN_TARGET_BUNDLE"},
 "annotations": {"sim.kiln.dev/ready-after-ms": "$READY_AFTER"}}}
EOF
echo "$new"
"#;

fn cluster(dir: &Path) -> (Sim, PathBuf) {
    let sim = Sim::start();
    let kc = dir.join(format!("kubeconfig-{}", sim.url().rsplit(':').next().unwrap_or("0")));
    std::fs::write(&kc, sim.kubeconfig()).unwrap();
    (sim, kc)
}

fn drain_once(dir: &Path, program: &Path, args: &[&str]) -> f64 {
    let (sim, kc) = cluster(dir);
    sim.add_node("node-a", &[], "v1.36.4", "containerd://2.3.4");
    sim.add_node("node-b", &[], "v1.36.4", "containerd://2.3.4");
    for i in 0..PODS {
        sim.add_rs_pod("default", &format!("web-{i}"), "node-a", "web", DRAIN_GRACE_S);
    }
    let t = Instant::now();
    let out = Command::new(program)
        .args(args)
        .env("KUBECONFIG", &kc)
        .env("HOME", dir)
        .output()
        .expect("run the drain");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sim.pods_on("node-a").is_empty(), "the drain left pods behind");
    assert!(sim.violations().is_empty());
    secs
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kiln = std::fs::canonicalize(args.get(1).expect("usage: bench-rollout KUBECTL_KILN [RUNS]")).unwrap();
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let kubectl = Path::new("kubectl");

    let drain_args = [
        "drain",
        "node-a",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout",
        "120s",
    ];
    // A first kubectl call warms its discovery cache; neither side pays for that in the figures.
    let (_warm, kc) = cluster(dir);
    Command::new(kubectl)
        .args(["get", "nodes"])
        .env("KUBECONFIG", &kc)
        .env("HOME", dir)
        .output()
        .expect("kubectl is installed");
    let (mut k, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        b.push(drain_once(dir, kubectl, &drain_args));
        k.push(drain_once(dir, &kiln, &drain_args));
    }
    let (k, b) = (median(&mut k), median(&mut b));
    let floor = DRAIN_GRACE_S as f64;
    println!("drain: {PODS} pods, each {DRAIN_GRACE_S} s to terminate (median of {runs})");
    println!("  kubectl kiln drain  {k:>6.2} s");
    println!("  kubectl drain       {b:>6.2} s");
    println!("  ratio               {:>6.2}x (target <= 1.0)", k / b);
    println!("  grace-period floor  {floor:>6.2} s");
    println!("  kiln / floor        {:>6.2}x (target <= 1.1)", k / floor);

    let provision = dir.join("provision");
    std::fs::write(&provision, PROVISION).unwrap();
    std::fs::set_permissions(&provision, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (pool, surge) in [(50, 5), (1000, 50)] {
        roll(dir, &kiln, &provision, pool, surge, true);
    }
    // The same roll without Events: what they cost in API requests.
    roll(dir, &kiln, &provision, 1000, 50, false);
}

fn roll(dir: &Path, kiln: &Path, provision: &Path, pool: usize, surge: usize, events: bool) {
    let (sim, kc) = cluster(dir);
    sim.run_replicaset_controller(Duration::from_millis(200));
    for i in 0..pool {
        let node = format!("node-{i:04}");
        sim.add_node(
            &node,
            &[("pool", "bench"), ("kiln.dev/bundle-version", "1")],
            "v1.36.4",
            "containerd://2.3.4",
        );
        for j in 0..2 {
            sim.add_rs_pod("default", &format!("app-{i}-{j}"), &node, "app", GRACE_S);
        }
    }
    let before = sim.requests();
    let t = Instant::now();
    let out = Command::new(kiln)
        .arg(format!("--events={events}"))
        .args(["roll", "--selector", "pool=bench", "--to-bundle", "2", "--max-surge"])
        .arg(surge.to_string())
        .arg("--provision-cmd")
        .arg(provision)
        .args(["--ignore-daemonsets", "--ready-timeout", "120s", "-o", "json"])
        .env("KUBECONFIG", &kc)
        .env("HOME", dir)
        .env("SIM", sim.url())
        .env("READY_AFTER", READY_AFTER_MS.to_string())
        .output()
        .expect("run kubectl kiln roll");
    let wall = t.elapsed().as_secs_f64();
    let requests = sim.requests() - before;
    // The roll's progress lines, for finding where its time goes.
    if let Some(log) = std::env::var_os("BENCH_ROLL_LOG") {
        std::fs::write(format!("{}.{pool}", log.to_string_lossy()), &out.stderr).unwrap();
    }
    assert!(
        out.status.success(),
        "roll failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sim.nodes().len(), pool, "one replacement per node");
    assert!(
        sim.nodes().iter().all(|n| n.ends_with("-next")),
        "every old node replaced"
    );
    assert!(sim.violations().is_empty());
    let per_node = READY_AFTER_MS as f64 / 1000.0 + GRACE_S as f64;
    let ideal = (pool as f64 / surge as f64).ceil() * per_node;
    println!();
    println!(
        "roll: {pool} nodes, max surge {surge}, Ready {READY_AFTER_MS} ms after registering, 2 pods x {GRACE_S} s each, Events {}",
        if events { "on" } else { "off" }
    );
    println!("  kubectl kiln roll   {wall:>6.2} s");
    println!("  ideal               {ideal:>6.2} s  ({pool}/{surge} x {per_node:.1} s per node)");
    println!("  ratio               {:>6.2}x (target <= 1.1)", wall / ideal);
    println!(
        "  API requests        {:>6.1} per replaced node ({requests} in all, the provision POSTs included)",
        requests as f64 / pool as f64
    );
    let written = sim.k8s_events();
    let series: i64 = written.iter().map(|e| e["series"]["count"].as_i64().unwrap_or(1)).sum();
    println!(
        "  Events              {:>6.1} per replaced node ({} objects for {series} occurrences)",
        written.len() as f64 / pool as f64,
        written.len()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let per: Vec<f64> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["seconds"].as_f64())
        .collect();
    println!(
        "  per node, measured  {:>6.2} s  (provision + Ready + drain + delete, mean of {})",
        per.iter().sum::<f64>() / per.len().max(1) as f64,
        per.len()
    );
}
