//! The bundle's labels on a Node that existed before this boot, against the real API server
//! (v1.32 from `../shared/k8s/` or `KILN_K8S_BIN`, with the Node authorizer and NodeRestriction):
//! kubelet applies `--node-labels` only when it creates its Node, so a machine reimaged or updated
//! in place that comes back under its own name keeps the old `kiln.dev/bundle-*` labels until the
//! health check sets them with kubelet's own credentials. The credentials are the ones kubelet
//! holds after its TLS bootstrap, in the files where kubelet keeps them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_firstboot::node::{node_ready, reconcile_labels, Kubeconfig, Refused};
use kiln_firstboot::state::NodeJoin;
use kiln_firstboot::system::{Host, System};
use kiln_testkit::cluster::{Cluster, Options};

/// Lay out a node root with kubelet's kubeconfig for `name`, as kubelet writes it after bootstrap.
fn node_root(c: &Cluster, dir: &Path, name: &str) -> std::path::PathBuf {
    let root = dir.join(name);
    let (cert, key) = c.node_credentials(name);
    for (path, text) in [
        (
            "var/lib/kubelet/pki/kubelet-client-current.pem",
            format!("{cert}{key}"),
        ),
        ("etc/kubernetes/pki/ca.crt", c.ca_pem.clone()),
        (
            "var/lib/kubelet/kubeconfig",
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n    server: {}\n    certificate-authority: /etc/kubernetes/pki/ca.crt\ncontexts:\n- name: default-context\n  context: {{cluster: default-cluster, user: default-auth, namespace: default}}\ncurrent-context: default-context\nusers:\n- name: default-auth\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
                c.server()
            ),
        ),
    ] {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    // The same credentials for kubectl on this machine (paths outside the node root).
    let host = std::fs::read_to_string(root.join("var/lib/kubelet/kubeconfig"))
        .unwrap()
        .replace("/var/lib/", &format!("{}/var/lib/", root.display()))
        .replace("/etc/kubernetes/", &format!("{}/etc/kubernetes/", root.display()));
    std::fs::write(root.join("host.kubeconfig"), host).unwrap();
    root
}

/// `kubectl` as the node `root` belongs to.
fn kubectl_as_node(root: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(root.join("host.kubeconfig"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl (scripts/setup installs it)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Register Node `name` and report it Ready, as its kubelet does, with its own credentials.
fn register(root: &Path, name: &str, bundle: &str) {
    let node = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{pool: blue, kiln.dev/bundle-version: \"{bundle}\", kiln.dev/bundle-digest: old0digest}}\n"
    );
    let out = kubectl_as_node(root, &["create", "-f", "-"], &node);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kc = Kubeconfig::load(root, "/var/lib/kubelet/kubeconfig").unwrap();
    let now = "2026-01-01T00:00:00Z";
    let status = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "message": "kubelet is posting ready status",
        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {"bootID": format!("{name}-boot-1")}}});
    let (code, body) = kc
        .merge_patch(&format!("/api/v1/nodes/{name}/status"), &status, Duration::from_secs(5))
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
}

fn labels(c: &Cluster, name: &str) -> serde_json::Value {
    let out = c.kubectl(&["get", "node", name, "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["metadata"]["labels"].clone()
}

fn bundle(version: &str, digest: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kiln.dev/bundle-version".to_string(), version.to_string()),
        ("kiln.dev/bundle-digest".to_string(), digest.to_string()),
    ])
}

#[test]
fn the_health_check_sets_the_bundle_labels_on_an_existing_node_with_its_own_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(&tmp.path().join("cluster"), &Options::default());
    let worker = node_root(&c, tmp.path(), "worker96");
    let other = node_root(&c, tmp.path(), "worker97");
    register(&worker, "worker96", "A");
    register(&other, "worker97", "A");

    // The machine came back on bundle B under its existing Node, in a new boot: the Ready status
    // there is the last boot's until kubelet reports this one, and does not count.
    let boot_id = worker.join("proc/sys/kernel/random/boot_id");
    std::fs::create_dir_all(boot_id.parent().unwrap()).unwrap();
    std::fs::write(&boot_id, "worker96-boot-2\n").unwrap();
    let early = NodeJoin {
        name: "worker96".into(),
        timeout_s: 2,
        labels: bundle("B", "b1b2b3b4"),
        since: None,
        kubeconfig: None,
    };
    let e = format!("{:#}", Host::default().node_joined(&worker, &early).unwrap_err());
    assert!(
        e.contains("Node worker96 did not become Ready within 2s: Node worker96 is Ready from an earlier boot (bootID worker96-boot-1), kubelet has not reported this boot (worker96-boot-2) yet"),
        "{e}"
    );
    assert_eq!(
        labels(&c, "worker96")["kiln.dev/bundle-version"],
        "A",
        "not relabelled before"
    );

    // Once kubelet reports this boot, the health check relabels it.
    let kc = Kubeconfig::load(&worker, "/var/lib/kubelet/kubeconfig").unwrap();
    let this = serde_json::json!({"status": {"nodeInfo": {"bootID": "worker96-boot-2"}}});
    let (code, body) = kc
        .merge_patch("/api/v1/nodes/worker96/status", &this, Duration::from_secs(5))
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    // A kubelet restarted within the boot (an update at once, an adoption) has the same bootID as
    // the one before it: its Ready counts only once reported after the restart.
    let restarted = NodeJoin {
        name: "worker96".into(),
        timeout_s: 2,
        labels: bundle("B", "b1b2b3b4"),
        since: Some("2026-06-01T00:00:00Z".into()),
        kubeconfig: None,
    };
    let e = format!("{:#}", Host::default().node_joined(&worker, &restarted).unwrap_err());
    assert!(
        e.contains("Node worker96 is Ready as reported at 2026-01-01T00:00:00Z by the kubelet that ran before, not yet by the one started at 2026-06-01T00:00:00Z"),
        "{e}"
    );
    assert_eq!(labels(&c, "worker96")["kiln.dev/bundle-version"], "A");
    let later = "2026-06-01T00:00:03Z";
    let beat = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "message": "kubelet is posting ready status",
        "lastHeartbeatTime": later, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    let (code, body) = kc
        .merge_patch("/api/v1/nodes/worker96/status", &beat, Duration::from_secs(5))
        .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let join = NodeJoin {
        name: "worker96".into(),
        timeout_s: 20,
        labels: bundle("B", "b1b2b3b4"),
        since: None,
        kubeconfig: None,
    };
    Host::default().node_joined(&worker, &join).unwrap();
    let l = labels(&c, "worker96");
    assert_eq!(l["kiln.dev/bundle-version"], "B", "{l}");
    assert_eq!(l["kiln.dev/bundle-digest"], "b1b2b3b4", "{l}");
    assert_eq!(l["pool"], "blue", "the node's other labels are left alone: {l}");
    assert_eq!(labels(&c, "worker97")["kiln.dev/bundle-version"], "A");

    // Already right: nothing to change.
    let node = node_ready(&kc, "worker96", Some("worker96-boot-2")).unwrap();
    assert!(reconcile_labels(&kc, &node, &join.labels).unwrap().is_empty());

    // What NodeRestriction allows: a label under kubernetes.io is refused on the node's own Node
    // (node-role.kubernetes.io is not one kubelet may set), at once and by name.
    let role = BTreeMap::from([("node-role.kubernetes.io/worker".to_string(), String::new())]);
    let e = reconcile_labels(&kc, &node, &role).unwrap_err();
    assert!(e.is::<Refused>(), "{e:#}");
    let e = format!("{e:#}");
    assert!(
        e.contains("refuses to set node-role.kubernetes.io/worker on Node worker96")
            && e.contains("(403)")
            && e.contains("is not allowed to modify labels: node-role.kubernetes.io/worker"),
        "{e}"
    );

    // Another node's credentials may not relabel worker96, nor even read it (the v1.32 Node
    // authorizer limits a node to its own Node object): the health check fails at once, naming
    // the refusal, rather than waiting out its timeout.
    let as_other = NodeJoin {
        name: "worker96".into(),
        timeout_s: 20,
        labels: bundle("C", "c1c2c3c4"),
        since: None,
        kubeconfig: None,
    };
    let started = Instant::now();
    let e = format!("{:#}", Host::default().node_joined(&other, &as_other).unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(10), "{e}");
    assert!(
        e.contains("the API server answered 403 for Node worker96 to /var/lib/kubelet/kubeconfig's credentials")
            && e.contains("User \"system:node:worker97\" cannot get resource \"nodes\""),
        "{e}"
    );
    assert_eq!(labels(&c, "worker96")["kiln.dev/bundle-version"], "B");
    // And its patch of worker96's labels, tried directly with worker96 as it last was: refused.
    let kc97 = Kubeconfig::load(&other, "/var/lib/kubelet/kubeconfig").unwrap();
    let e = format!("{:#}", reconcile_labels(&kc97, &node, &as_other.labels).unwrap_err());
    assert!(
        e.contains("refuses to set kiln.dev/bundle-digest, kiln.dev/bundle-version on Node worker96")
            && e.contains("(403)"),
        "{e}"
    );
    assert_eq!(labels(&c, "worker96")["kiln.dev/bundle-version"], "B");
}
