//! kubectl kiln next to kubectl, against the real API server (v1.32, `../shared/k8s/` or
//! `KILN_K8S_BIN`; etcd from Debian): for the same case, the same effect, the same exit code and
//! kubectl's own words. Nodes are Node objects without kubelets (nothing here needs one to run).

use std::process::{Command, Output};

use kiln_testkit::cluster::{Cluster, Options};

fn kiln(c: &Cluster, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .arg("--kubeconfig")
        .arg(&c.admin_kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn add_node(c: &Cluster, name: &str) {
    c.apply(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kiln.dev/bundle-version: \"1.0\"\n"
    ));
}

fn unschedulable(c: &Cluster, name: &str) -> bool {
    let out = c.kubectl(&["get", "node", name, "-o", "jsonpath={.spec.unschedulable}"]);
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

#[test]
fn kubectl_kiln_speaks_and_acts_like_kubectl() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(&tmp.path().join("cluster"), &Options::default());
    add_node(&c, "worker-1");
    add_node(&c, "worker-2");

    // Every name is checked before anything changes, and the error is the API's.
    let notfound = "Error from server (NotFound): nodes \"nope\" not found";
    let k = c.kubectl(&["cordon", "worker-1", "nope", "worker-2"]);
    let ours = kiln(&c, &["cordon", "worker-1", "nope", "worker-2"]);
    assert_eq!(ours.status.code(), k.status.code(), "{}", stderr(&ours));
    assert_eq!(ours.status.code(), Some(1));
    assert!(stderr(&k).contains(notfound), "kubectl: {}", stderr(&k));
    assert_eq!(stderr(&ours).trim(), notfound);
    assert!(
        !unschedulable(&c, "worker-1") && !unschedulable(&c, "worker-2"),
        "nothing was cordoned"
    );

    // A dry run of a node that does not exist is not a silent success.
    let k = c.kubectl(&["drain", "nope", "--dry-run=client"]);
    let ours = kiln(&c, &["drain", "nope", "--dry-run"]);
    assert_eq!(ours.status.code(), k.status.code());
    assert!(stderr(&k).contains(notfound), "kubectl: {}", stderr(&k));
    assert_eq!(stderr(&ours).trim(), notfound);

    // No node at all: the usage line, exit 1.
    for verb in ["drain", "cordon", "uncordon"] {
        let k = c.kubectl(&[verb]);
        let ours = kiln(&c, &[verb]);
        assert_eq!(ours.status.code(), k.status.code(), "{verb}");
        assert!(
            stderr(&k).starts_with(&format!("error: USAGE: {verb} NODE")),
            "{}",
            stderr(&k)
        );
        assert!(
            stderr(&ours).starts_with(&format!("error: USAGE: kubectl kiln {verb} NODE")),
            "{}",
            stderr(&ours)
        );
    }

    // A node cannot replace itself: refused before anything happens.
    let ours = kiln(
        &c,
        &["replace", "worker-1", "--with", "worker-1", "--ready-timeout", "5s"],
    );
    assert_eq!(ours.status.code(), Some(1));
    assert!(
        stderr(&ours).contains("worker-1 cannot replace worker-1: it is the node being replaced"),
        "{}",
        stderr(&ours)
    );
    assert!(!unschedulable(&c, "worker-1"));
    let nodes = c.kubectl(&["get", "node", "worker-1"]);
    assert!(nodes.status.success(), "worker-1 still exists");

    // --dry-run=server: the API server judges the cordon and each eviction (here a budget
    // refuses one), and nothing changes.
    let pods = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: guarded\n  namespace: default\n  labels: {app: guarded}\nspec:\n  nodeName: worker-2\n  containers: [{name: c, image: busybox}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: free\n  namespace: default\nspec:\n  nodeName: worker-2\n  containers: [{name: c, image: busybox}]\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: guard\n  namespace: default\nspec:\n  minAvailable: 1\n  selector:\n    matchLabels: {app: guarded}\n";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // The namespace's default ServiceAccount appears shortly after the control plane starts.
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&c.admin_kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), pods.as_bytes()).unwrap();
        if child.wait().unwrap().success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "cannot create the pods");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // While no kubelet has started them they are Pending, and evicting a Pending pod ignores its
    // budget: both succeed (the simulator does the same, tests/kiln_drain.rs).
    let k = c.kubectl(&["drain", "worker-2", "--dry-run=server", "--force", "--timeout=5s"]);
    let ours = kiln(
        &c,
        &["drain", "worker-2", "--dry-run=server", "--force", "--timeout=5s"],
    );
    assert_eq!(
        (ours.status.code(), k.status.code()),
        (Some(0), Some(0)),
        "{}",
        stderr(&k)
    );
    // Mark them Running and Ready as a kubelet would, and wait until the disruption controller
    // counts the guarded one healthy.
    for pod in ["guarded", "free"] {
        let out = c.kubectl(&[
            "patch",
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while String::from_utf8_lossy(
        &c.kubectl(&["get", "pdb", "guard", "-o", "jsonpath={.status.currentHealthy}"])
            .stdout,
    ) != "1"
    {
        assert!(std::time::Instant::now() < deadline, "the budget never counted the pod");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let k = c.kubectl(&["drain", "worker-2", "--dry-run=server", "--force", "--timeout=5s"]);
    let ours = kiln(
        &c,
        &["drain", "worker-2", "--dry-run=server", "--force", "--timeout=5s"],
    );
    assert_eq!(
        ours.status.code(),
        k.status.code(),
        "kubectl: {}{}\nours: {}{}",
        String::from_utf8_lossy(&k.stdout),
        stderr(&k),
        String::from_utf8_lossy(&ours.stdout),
        stderr(&ours)
    );
    assert_eq!(ours.status.code(), Some(1));
    let out = String::from_utf8_lossy(&ours.stdout);
    assert!(out.contains("would evict default/free"), "{out}");
    assert!(
        out.contains(
            "default/guarded (the server refuses: Cannot evict pod as it would violate the pod's disruption budget."
        ) && String::from_utf8_lossy(&k.stderr)
            .contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{out}\nkubectl: {}",
        stderr(&k)
    );
    assert!(!unschedulable(&c, "worker-2"), "a server dry run cordons nothing");
    assert!(
        c.kubectl(&["get", "pod", "free"]).status.success(),
        "and evicts nothing"
    );

    // An API server that cannot be reached: one line, no log noise, exit 1.
    let dead = tmp.path().join("dead.kubeconfig");
    let text = std::fs::read_to_string(&c.admin_kubeconfig)
        .unwrap()
        .replace(&c.server(), "https://127.0.0.1:1");
    std::fs::write(&dead, text).unwrap();
    let k = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&dead)
        .args(["cordon", "worker-1"])
        .output()
        .unwrap();
    let ours = Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .arg("--kubeconfig")
        .arg(&dead)
        .args(["cordon", "worker-1"])
        .output()
        .unwrap();
    assert_eq!(ours.status.code(), k.status.code());
    let e = stderr(&ours);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.starts_with("Unable to connect to the server:") && !e.contains("ERROR"),
        "{e}"
    );
}
