//! kubectl kiln next to kubectl, against the real API server (v1.32, `../shared/k8s/` or
//! `KILN_K8S_BIN`; etcd from Debian): for the same case, the same effect, the same exit code and
//! kubectl's own words. Nodes are Node objects without kubelets (nothing here needs one to run).

mod agent;
mod common;

use common::wait_until;

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

/// Run kubectl-kiln as a Pod of the cluster would: no kubeconfig anywhere, the ServiceAccount's
/// token and CA at `/var/run/secrets/kubernetes.io/serviceaccount` (a private mount namespace with
/// a tmpfs over /run, so the host's /run is untouched) and `KUBERNETES_SERVICE_HOST`/`_PORT`.
fn kiln_in_cluster(c: &Cluster, home: &std::path::Path, token: &str, args: &[&str]) -> Output {
    in_cluster_command(c, home, token, args)
        .output()
        .expect("unshare (util-linux) runs kubectl-kiln in a mount namespace; CI runs as root")
}

/// [`kiln_in_cluster`]'s command, to spawn.
fn in_cluster_command(c: &Cluster, home: &std::path::Path, token: &str, args: &[&str]) -> Command {
    let sa = home.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), token).unwrap();
    std::fs::write(sa.join("ca.crt"), &c.ca_pem).unwrap();
    std::fs::write(sa.join("namespace"), "kiln-system").unwrap();
    let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount \
                  && cp \"$SA\"/* /run/secrets/kubernetes.io/serviceaccount/ && exec \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", home)
        .env("SA", &sa)
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", c.api_port.to_string())
        .env("ADMIN_KUBECONFIG", &c.admin_kubeconfig);
    cmd
}

fn jsonpath(c: &Cluster, args: &[&str]) -> String {
    String::from_utf8_lossy(&c.kubectl(args).stdout).trim().to_string()
}

/// The roll on the real API server, as a Job would run it: in-cluster config, the ServiceAccount
/// and RBAC of `rollout/deploy/rbac.yaml` and nothing more, a Deployment with a budget placed by
/// the real scheduler and recreated by the real ReplicaSet controller, the test agent as kubelet.
/// Every verb goes through the same ServiceAccount: the roll (with a canary and its soak), and
/// `roll pause`, `roll status` and `roll resume` from a second process while it waits.
#[test]
fn a_roll_in_the_cluster_as_its_service_account_keeps_the_budget_and_holds_the_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Cluster::start(&tmp.path().join("cluster"), &Options::default());
    let agent = agent::Agent::start(&c.admin_kubeconfig);
    for i in 0..2 {
        c.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: old-{i}\n  labels: {{pool: blue, kiln.dev/bundle-version: \"1\"}}\n"
        ));
    }
    let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml");
    let out = c.kubectl(&["apply", "-f", rbac]);
    assert!(out.status.success(), "{}", stderr(&out));
    let app = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\nspec:\n  replicas: 4\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers: [{name: c, image: busybox}]\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web, namespace: default}\nspec:\n  minAvailable: 3\n  selector: {matchLabels: {app: web}}\n";
    c.apply(app);
    wait_until(
        "the 4 web pods run on the old nodes",
        std::time::Duration::from_secs(60),
        || agent.was_full("web", 4),
    );
    let token = c.kubectl(&["create", "token", "kubectl-kiln", "-n", "kiln-system", "--duration=1h"]);
    assert!(token.status.success(), "{}", stderr(&token));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();

    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let provision = home.join("provision");
    std::fs::write(
        &provision,
        "#!/bin/sh\nset -eu\nnew=\"$KILN_NODE-next\"\nkubectl --kubeconfig \"$ADMIN_KUBECONFIG\" apply -f - >&2 <<EOF\napiVersion: v1\nkind: Node\nmetadata:\n  name: $new\n  labels: {pool: blue, kiln.dev/bundle-version: \"$KILN_TARGET_BUNDLE\"}\n  annotations: {sim.kiln.dev/ready-after-ms: \"500\"}\nEOF\necho \"$new\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&provision, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let roll_args = |target: &'static str| {
        vec![
            "roll".to_string(),
            "-l".into(),
            "pool=blue".into(),
            "--to-bundle".into(),
            target.into(),
            "--provision-cmd".into(),
            provision.to_str().unwrap().into(),
            "--max-surge".into(),
            "1".into(),
            "--ignore-daemonsets".into(),
            "--timeout".into(),
            "90s".into(),
            "--ready-timeout".into(),
            "60s".into(),
            "--canary".into(),
            "1".into(),
            "--soak".into(),
            "1s".into(),
        ]
    };
    let as_sa = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kiln_in_cluster(&c, &home, &token, &args)
    };
    let roll = |target: &'static str| as_sa(&roll_args(target));
    let control = |verb: &str| as_sa(&["roll".into(), verb.into(), "-l".into(), "pool=blue".into()]);
    let lease = kiln_rollout::lease::lease_name("pool=blue");

    // Another holder's fresh lease: refused, naming it; nothing touched.
    let now = k8s_openapi::jiff::Timestamp::now();
    c.apply(&format!(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {lease}, namespace: kube-system}}\nspec: {{holderIdentity: ci-job-7, leaseDurationSeconds: 60, renewTime: \"{now:.6}\"}}\n"
    ));
    let out = roll("2");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is being rolled by ci-job-7"), "{}", stderr(&out));
    assert!(!unschedulable(&c, "old-0") && !unschedulable(&c, "old-1"));
    let out = c.kubectl(&["delete", "lease", "-n", "kube-system", &lease]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Paused before it starts (the Lease created by the pause), the roll takes the Lease and
    // waits; its status, read by a second process, says who holds it and who paused it.
    let out = control("pause");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let args: Vec<String> = roll_args("2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = home.join("roll.log");
    let running = in_cluster_command(&c, &home, &token, &args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the roll waits, paused", std::time::Duration::from_secs(30), || {
        said().contains("waiting to start: the roll is paused")
    });
    let status = as_sa(&[
        "roll".into(),
        "status".into(),
        "-l".into(),
        "pool=blue".into(),
        "-o".into(),
        "json".into(),
    ]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        s["lease"]["holder"].as_str().is_some_and(|h| h.contains(" pid ")),
        "{s}"
    );
    assert!(s["lease"]["paused"].as_str().is_some_and(|p| p.contains(" at ")), "{s}");
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(2), "{s}");
    assert!(
        !unschedulable(&c, "old-0") && !unschedulable(&c, "old-1"),
        "paused: nothing started"
    );
    let out = control("resume");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = running.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        said()
    );
    assert!(said().contains("roll resumed"), "{}", said());
    assert!(said().contains("canary old-0-next: soaked"), "{}", said());
    assert_eq!(
        jsonpath(&c, &["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"]),
        "old-0-next old-1-next"
    );
    // Its Events, written with the ServiceAccount's own rights.
    assert!(!said().contains("could not be written"), "{}", said());
    let reasons = jsonpath(
        &c,
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            "default",
            "-o",
            "jsonpath={range .items[?(@.regarding.name==\"old-0\")]}{.reason} {end}",
        ],
    );
    for reason in ["Cordoned", "Drained", "ReplacementReady", "Deleted"] {
        assert!(reasons.split(' ').any(|r| r == reason), "{reason} in {reasons:?}");
    }
    let soaked = jsonpath(
        &c,
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            "default",
            "-o",
            "jsonpath={range .items[?(@.regarding.name==\"old-0-next\")]}{.reason} {end}",
        ],
    );
    assert!(soaked.split(' ').any(|r| r == "CanarySoaked"), "{soaked:?}");
    wait_until(
        "the web pods run again on the new nodes",
        std::time::Duration::from_secs(60),
        || {
            let on = jsonpath(
                &c,
                &[
                    "get",
                    "pods",
                    "-l",
                    "app=web",
                    "-o",
                    "jsonpath={.items[*].spec.nodeName}",
                ],
            );
            on.split_whitespace().filter(|n| n.ends_with("-next")).count() == 4
        },
    );
    assert!(
        agent.budget_held("web", 4, 3),
        "the budget (minAvailable 3) was violated: {:?}",
        agent.ready.lock().unwrap()["web"]
    );
    assert_eq!(
        jsonpath(
            &c,
            &[
                "get",
                "lease",
                "-n",
                "kube-system",
                &lease,
                "-o",
                "jsonpath={.spec.holderIdentity}"
            ]
        ),
        "",
        "the roll released the pool's lease"
    );
}
