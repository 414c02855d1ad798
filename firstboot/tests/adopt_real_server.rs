//! Adoption against the real API server (v1.32 from `../shared/k8s/` or `KILN_K8S_BIN`, with the
//! Node authorizer and NodeRestriction): the worker's own kubeconfig and client certificate, where
//! the old kubelet kept them, are its identity before, during and after adoption. The systemd side
//! is the recording system; a small agent posts the Node's Ready heartbeat as a kubelet would.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::worker::*;
use common::*;
use kiln_firstboot::activate::Options;
use kiln_firstboot::adopt::{adopt, AdoptOptions, Adopted, Phase, Record};
use kiln_firstboot::node::Kubeconfig;
use kiln_testkit::cluster::{Cluster, Options as ClusterOptions};

/// The worker's files with real credentials for Node `name` from `c`.
fn real_worker(c: &Cluster, dir: &Path, name: &str) -> std::path::PathBuf {
    let root = worker(dir);
    let (cert, key) = c.node_credentials(name);
    write(
        &root,
        "var/lib/kubelet/pki/kubelet-client-current.pem",
        &format!("{cert}{key}"),
    );
    write(&root, "etc/kubernetes/pki/ca.crt", &c.ca_pem);
    write(
        &root,
        "etc/kubernetes/kubelet.conf",
        &KUBECONFIG.replace("https://10.8.0.1:6443", &c.server()),
    );
    root
}

fn kubelet_status(kc: &Kubeconfig, name: &str, runtime: &str) {
    let now = kiln_bundle::time::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let status = serde_json::json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "addresses": [{"type": "InternalIP", "address": "10.8.0.205"}, {"type": "Hostname", "address": name}],
        "nodeInfo": {"containerRuntimeVersion": runtime}}});
    let (code, body) = kc
        .merge_patch(&format!("/api/v1/nodes/{name}/status"), &status, Duration::from_secs(5))
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
}

/// What the node's kubelet does, as the Node: registers it once, then posts Ready every second.
fn kubelet_agent(c: &Cluster, root: &Path, name: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let kc = Kubeconfig::load(root, "/etc/kubernetes/kubelet.conf").unwrap();
    let manifest = root.join("../node.json");
    let node = serde_json::json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"pool": "blue"}}});
    std::fs::write(&manifest, node.to_string()).unwrap();
    let out = c.kubectl(&["create", "-f", manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let name = name.to_string();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            kubelet_status(&kc, &name, "containerd://1.6.20~ds1");
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}

fn node(c: &Cluster, name: &str) -> serde_json::Value {
    let out = c.kubectl(&["get", "node", name, "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_adopted_worker_keeps_its_node_and_identity_on_the_real_api_server() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(&tmp.path().join("cluster"), &ClusterOptions::default());
    let mirror = production_mirror();
    let bundle = build_bundle(tmp.path(), &mirror, "1.36.4-1", true, KEEPS_MAX_PODS);
    let root = real_worker(&c, &tmp.path().join("w96"), "worker96");
    let stop = Arc::new(AtomicBool::new(false));
    let agent = kubelet_agent(&c, &root, "worker96", stop.clone());
    let uid = node(&c, "worker96")["metadata"]["uid"].clone();

    let mut run = Options::default();
    run.endpoints.timeout = Duration::from_secs(5);
    run.endpoints.retries = 1;
    let opts = AdoptOptions {
        bundle: bundle.clone(),
        accept_losses: false,
        kubelet_unit: "kubelet.service".into(),
        stop_after: None,
        run,
    };

    // A bundle that fails: the worker is put back, and its Node is checked Ready again with the
    // old kubelet's kubeconfig (/etc/kubernetes/kubelet.conf), from a heartbeat after the restart.
    let mut sys = worker_system(&root);
    sys.node_api = true;
    sys.unhealthy_versions.insert("1.36.4-1".into());
    let e = format!("{:#}", adopt(&root, &mut sys, &opts).unwrap_err());
    assert!(e.contains("the worker was put back as it was"), "{e}");
    assert_eq!(Record::load(&root).unwrap().unwrap().phase, Phase::RolledBack);
    assert!(node(&c, "worker96")["metadata"]["labels"]
        .get("kiln.dev/bundle-version")
        .is_none());

    // A healthy bundle: the same Node object (same uid), relabelled by the node's own credentials
    // (kiln's kubelet reads the kubeconfig adoption copied to /var/lib/kubelet/kubeconfig).
    sys.unhealthy_versions.clear();
    let done = adopt(&root, &mut sys, &opts).unwrap();
    assert!(matches!(done, Adopted::Done { already: false, .. }), "{done:?}");
    stop.store(true, Ordering::Relaxed);
    agent.join().unwrap();
    let n = node(&c, "worker96");
    assert_eq!(n["metadata"]["uid"], uid, "the same Node object");
    let labels = &n["metadata"]["labels"];
    assert_eq!(labels["kiln.dev/bundle-version"], "1.36.4-1", "{labels}");
    assert_eq!(labels["pool"], "blue", "{labels}");
    let addresses = n["status"]["addresses"].to_string();
    assert!(addresses.contains("10.8.0.205"), "{addresses}");
}
