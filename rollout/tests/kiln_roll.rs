//! `kubectl kiln replace` and `roll` against the simulator, with simulated provisioning: the
//! provision command registers a Node through the real `kubectl create` (as a new machine's kubelet
//! would), and the simulated kubelet reports it Ready after a delay. A ReplicaSet controller brings
//! evicted pods back elsewhere, so PodDisruptionBudgets can be honoured throughout; after each test
//! the simulator's record says no PDB was ever violated and no DaemonSet or mirror pod was evicted.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use kiln_kube_sim::Faults;

const OLD: &str = "1.36.4-1";
const NEW: &str = "1.36.4-2";

/// A pool of `n` nodes on bundle OLD, each with two web pods (one PDB over all of them, at most
/// one down), a DaemonSet pod and a mirror pod.
fn pool(c: &Cluster, n: usize) {
    let s = &c.sim;
    s.run_replicaset_controller(Duration::from_millis(200));
    for i in 0..n {
        let node = format!("old-{i}");
        s.add_node(
            &node,
            &[("pool", "blue"), ("kiln.dev/bundle-version", OLD)],
            "v1.36.4",
            "containerd://2.3.4",
        );
        for j in 0..2 {
            s.add_rs_pod("default", &format!("web-{i}-{j}"), &node, "web", 1);
        }
        s.add_ds_pod("kube-system", &format!("proxy-{i}"), &node, "proxy", 1);
        s.add_pod(
            "kube-system",
            &format!("static-{node}"),
            &node,
            &[("tier", "node")],
            None,
            true,
            false,
            1,
        );
    }
    s.add_pdb("default", "web", &[("app", "web")], None, Some(1));
}

/// The in-place roll's reprovision command (what it does: the script's header).
const REPROVISION: &str = include_str!("reprovision.sh");

/// The provision and decommission commands, as scripts: provisioning is idempotent (the new node
/// is named after the old one) and registers the node with `kubectl create`; both log their calls.
struct Hooks {
    dir: PathBuf,
}

impl Hooks {
    fn new(c: &Cluster) -> Hooks {
        let dir = c.home().join("hooks");
        std::fs::create_dir_all(&dir).unwrap();
        let provision = r#"#!/bin/sh
set -eu
new="$KILN_NODE-next"
echo "$KILN_NODE $KILN_TARGET_BUNDLE $KILN_SELECTOR" >> "$HOOKS/provisioned"
# Like a real provisioning script, retry the API a few times; creating twice is harmless.
ok=
for attempt in 1 2 3 4 5 6; do
  if kubectl get node "$new" >/dev/null 2>&1; then ok=1; break; fi
  if kubectl create --validate=false -f - >&2 <<EOF; then ok=1; break; fi
apiVersion: v1
kind: Node
metadata:
  name: $new
  labels: {pool: blue, kiln.dev/bundle-version: "$KILN_TARGET_BUNDLE"}
  annotations: {sim.kiln.dev/ready-after-ms: "$READY_AFTER"}
EOF
  sleep 0.2
done
[ -n "$ok" ] || { echo "cannot create $new" >&2; exit 1; }
[ "${NAME_IT:-yes}" = yes ] && echo "$new"
exit 0
"#;
        let decommission = "#!/bin/sh\necho \"$KILN_NODE $KILN_REPLACEMENT\" >> \"$HOOKS/decommissioned\"\n";
        for (name, body) in [
            ("provision", provision),
            ("decommission", decommission),
            ("reprovision", REPROVISION),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        Hooks { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn log(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        v.sort();
        v
    }
}

fn roll_cmd(c: &Cluster, h: &Hooks, ready_after: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"));
    cmd.args([
        "roll",
        "--selector",
        "pool=blue",
        "--to-bundle",
        NEW,
        "--provision-cmd",
        &h.path("provision"),
        "--decommission-cmd",
        &h.path("decommission"),
        "--ignore-daemonsets",
        "--timeout",
        "60s",
    ])
    .args(extra)
    .env("KUBECONFIG", &c.kubeconfig)
    .env("HOME", c.home())
    .env("HOOKS", &h.dir)
    .env("READY_AFTER", ready_after);
    cmd
}

fn assert_invariants(c: &Cluster) {
    assert!(c.sim.violations().is_empty(), "{:?}", c.sim.violations());
}

fn bundle_of(c: &Cluster, node: &str) -> String {
    c.sim.node(node).unwrap()["metadata"]["labels"]["kiln.dev/bundle-version"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn roll_replaces_the_pool_surge_first_and_holds_the_pdb_under_faults() {
    let c = Cluster::new();
    pool(&c, 4);
    let h = Hooks::new(&c);
    c.sim.set_faults(Faults {
        latency: Duration::from_millis(2),
        error_every: 23,
        throttle_every: 5,
        drop_watch_after: None,
    });
    let out = roll_cmd(
        &c,
        &h,
        "800",
        &["--max-surge", "2", "--ready-timeout", "60s", "-o", "json"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["halted"].is_null());
    assert_eq!(
        c.sim.nodes(),
        ["old-0-next", "old-1-next", "old-2-next", "old-3-next"],
        "every old node deleted, one replacement each"
    );
    for n in c.sim.nodes() {
        assert_eq!(bundle_of(&c, &n), NEW);
        let node = c.sim.node(&n).unwrap();
        assert!(
            node["metadata"]["annotations"]["kiln.dev/replaces"].is_null(),
            "claims released after decommissioning: {node}"
        );
    }
    assert!(
        c.sim.max_nodes() <= 4 + 2,
        "surge bounded: {} nodes at once",
        c.sim.max_nodes()
    );
    assert!(c.sim.max_nodes() > 4, "and it did surge");
    assert_eq!(
        h.log("decommissioned"),
        [
            "old-0 old-0-next",
            "old-1 old-1-next",
            "old-2 old-2-next",
            "old-3 old-3-next"
        ]
    );
    assert_eq!(h.log("provisioned")[0], format!("old-0 {NEW} pool=blue"));
    // The web pods all live on the new nodes now.
    wait_until("the evicted web pods run again", Duration::from_secs(10), || {
        c.sim.pending_pods().is_empty()
    });
    assert_invariants(&c);
    assert!(
        c.sim.evictions().iter().any(|e| e.outcome == "blocked"),
        "the PDB and the injected faults did push back"
    );
    // kubectl kiln status agrees.
    let out = c.kiln(&["status", "-o", "json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["bundleVersions"], serde_json::json!([NEW]));
}

#[test]
fn a_replacement_that_never_becomes_ready_halts_the_roll() {
    let c = Cluster::new();
    pool(&c, 3);
    let h = Hooks::new(&c);
    let started = Instant::now();
    let out = roll_cmd(&c, &h, "never", &["--max-surge", "1", "--ready-timeout", "3s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(30));
    let t = text(&out);
    assert!(t.contains("roll HALTED: old-0:"), "{t}");
    assert!(
        t.contains(&format!("no replacement became Ready on bundle {NEW} within 3s")),
        "{t}"
    );
    assert!(
        t.contains("old-0-next: not Ready"),
        "says what the new node last was: {t}"
    );
    // Every old node is still there and schedulable; nothing was evicted; nothing decommissioned.
    for i in 0..3 {
        let n = c.sim.node(&format!("old-{i}")).unwrap();
        assert!(n["spec"]["unschedulable"].is_null(), "{n}");
        assert_eq!(c.sim.pods_on(&format!("old-{i}")).len(), 4);
    }
    assert!(c.sim.evictions().is_empty());
    assert!(h.log("decommissioned").is_empty());
    assert_eq!(h.log("provisioned").len(), 1, "no further node was provisioned");
    let old0 = c.sim.node("old-0").unwrap();
    assert_eq!(old0["metadata"]["annotations"]["kiln.dev/roll-phase"], "halted");
    assert!(old0["metadata"]["annotations"]["kiln.dev/roll-message"]
        .as_str()
        .unwrap()
        .contains("no replacement became Ready"));
    assert_invariants(&c);
}

#[test]
fn an_interrupted_roll_resumes_where_it_stopped() {
    let c = Cluster::new();
    pool(&c, 3);
    let h = Hooks::new(&c);
    // Unnamed replacements: the roll finds them by bundle, pool and creation time.
    let mut first = roll_cmd(&c, &h, "1500", &["--max-surge", "1", "--ready-timeout", "60s"])
        .env("NAME_IT", "no")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once old-0 is replaced and old-1's replacement is on its way.
    wait_until(
        "old-0 is replaced and old-1's replacement started",
        Duration::from_secs(60),
        || {
            !c.sim.nodes().contains(&"old-0".to_string())
                && c.sim.node("old-1").unwrap()["metadata"]["annotations"]["kiln.dev/roll-phase"].is_string()
        },
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let phase = c.sim.node("old-1").unwrap()["metadata"]["annotations"]["kiln.dev/roll-phase"].clone();
    assert!(phase.is_string(), "progress is in the cluster");

    // The plan shows the resume.
    let out = roll_cmd(&c, &h, "300", &["--dry-run"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("old-1: resume from {}", phase.as_str().unwrap())),
        "{}",
        text(&out)
    );

    let out = roll_cmd(&c, &h, "300", &["--max-surge", "1", "--ready-timeout", "60s"])
        .env("NAME_IT", "no")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.sim.nodes(), ["old-0-next", "old-1-next", "old-2-next"]);
    assert_eq!(
        h.log("decommissioned"),
        ["old-0 old-0-next", "old-1 old-1-next", "old-2 old-2-next"],
        "each old node decommissioned exactly once"
    );
    // Provisioning is at-least-once: old-1's command may have run twice, old-2's once.
    let provisioned = h.log("provisioned");
    assert_eq!(provisioned.iter().filter(|l| l.starts_with("old-0 ")).count(), 1);
    assert_eq!(provisioned.iter().filter(|l| l.starts_with("old-2 ")).count(), 1);
    assert_invariants(&c);
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let c = Cluster::new();
    pool(&c, 2);
    c.sim.add_node(
        "fresh",
        &[("pool", "blue"), ("kiln.dev/bundle-version", NEW)],
        "v1.36.4",
        "containerd://2.3.4",
    );
    let h = Hooks::new(&c);
    let out = roll_cmd(&c, &h, "300", &["--max-surge", "5", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "roll pool=blue to bundle {NEW}: 2 node(s) to replace, 1 already on it; max surge 5"
        )),
        "{t}"
    );
    assert!(t.contains("old-0: provision a replacement"), "{t}");
    assert!(h.log("provisioned").is_empty());
    assert_eq!(c.sim.nodes(), ["fresh", "old-0", "old-1"]);
    assert!(c.sim.node("old-0").unwrap()["metadata"]["annotations"].is_null());

    let out = roll_cmd(&c, &h, "300", &["--max-surge", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("--max-surge and --max-unavailable cannot both be 0"));
}

#[test]
fn drain_first_with_max_unavailable_and_no_surge() {
    let c = Cluster::new();
    pool(&c, 2);
    // A spare node takes the web pods while an old node is drained before its replacement exists.
    c.sim
        .add_node("spare", &[("pool", "green")], "v1.36.4", "containerd://2.3.4");
    let h = Hooks::new(&c);
    let out = roll_cmd(
        &c,
        &h,
        "300",
        &["--max-surge", "0", "--max-unavailable", "1", "--ready-timeout", "30s"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.sim.nodes(), ["old-0-next", "old-1-next", "spare"]);
    // Drained first, provisioned after; one old node out of service at a time.
    let log = c.sim.log();
    let first_eviction = log.iter().position(|l| l.contains("/eviction -> 201")).unwrap();
    let first_node = log.iter().position(|l| l.starts_with("POST /api/v1/nodes ")).unwrap();
    assert!(first_eviction < first_node, "{log:?}");
    assert!(
        c.sim.max_nodes() <= 4,
        "one replacement at a time: {}",
        c.sim.max_nodes()
    );
    assert_invariants(&c);
}

fn replace_cmd(c: &Cluster, h: &Hooks, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .arg("replace")
        .args(args)
        .args(["--decommission-cmd", &h.path("decommission"), "--ignore-daemonsets"])
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOOKS", &h.dir)
        .output()
        .unwrap()
}

#[test]
fn replace_waits_for_the_new_node_then_drains_and_deletes_the_old() {
    let c = Cluster::new();
    pool(&c, 1);
    let h = Hooks::new(&c);
    c.sim.add_node(
        "new-0",
        &[("pool", "blue"), ("kiln.dev/bundle-version", OLD)],
        "v1.36.4",
        "containerd://2.3.4",
    );
    // The wrong bundle: OLD is left untouched.
    let out = replace_cmd(
        &c,
        &h,
        &["old-0", "--with", "new-0", "--bundle", NEW, "--ready-timeout", "1s"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!(
            "new-0 did not become a usable replacement within 1s (bundle {OLD}, not {NEW}); old-0 left untouched"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(c.sim.pods_on("old-0").len(), 4);
    assert!(c.sim.node("old-0").unwrap()["spec"]["unschedulable"].is_null());

    // A node not yet Ready: replace waits for it.
    c.sim.add_node(
        "new-1",
        &[("pool", "blue"), ("kiln.dev/bundle-version", NEW)],
        "v1.36.4",
        "containerd://2.3.4",
    );
    c.sim.set_node_ready("new-1", false);
    let t = std::thread::spawn({
        let kubeconfig = c.kubeconfig.clone();
        let hooks = h.dir.clone();
        let decommission = h.path("decommission");
        move || {
            Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
                .args([
                    "replace",
                    "old-0",
                    "--with",
                    "new-1",
                    "--bundle",
                    NEW,
                    "--ready-timeout",
                    "30s",
                ])
                .args(["--decommission-cmd", &decommission, "--ignore-daemonsets", "-o", "json"])
                .env("KUBECONFIG", kubeconfig)
                .env("HOOKS", hooks)
                .output()
                .unwrap()
        }
    });
    // Once kiln watches the nodes it is waiting for new-1: nothing may have happened to old-0.
    wait_until("kubectl kiln waits on new-1", Duration::from_secs(10), || {
        c.sim.log().iter().any(|l| l.starts_with("GET /api/v1/nodes ->"))
    });
    assert!(c.sim.node("old-0").is_some(), "nothing happens before new-1 is Ready");
    assert!(c.sim.evictions().is_empty());
    c.sim.set_node_ready("new-1", true);
    let out = t.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["result"], "replaced");
    assert!(c.sim.node("old-0").is_none());
    assert_eq!(h.log("decommissioned"), ["old-0 new-1"]);
    assert_invariants(&c);
    let evicted: Vec<String> = c.sim.evictions().iter().map(|e| e.pod.clone()).collect();
    assert!(evicted.iter().all(|p| p.starts_with("web-")), "{evicted:?}");
}

#[test]
fn replace_refuses_an_unknown_old_node() {
    let c = Cluster::new();
    let h = Hooks::new(&c);
    let out = replace_cmd(&c, &h, &["ghost", "--with", "new-0"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Error from server (NotFound): nodes \"ghost\" not found"),
        "{}",
        text(&out)
    );
}

#[test]
fn one_roll_per_pool_a_lease_says_who_holds_it_and_a_stale_one_is_taken_over() {
    let c = Cluster::new();
    pool(&c, 2);
    let h = Hooks::new(&c);
    let name = kiln_rollout::lease::lease_name("pool=blue");
    let lease = |holder: &str, renewed_ago: Duration| {
        let t = std::time::SystemTime::now() - renewed_ago;
        let at = k8s_openapi::jiff::Timestamp::try_from(t).unwrap();
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 60,
                     "renewTime": format!("{at:.6}"), "leaseTransitions": 3}
        })
    };

    // Held and fresh: refused, naming the holder, and nothing touched.
    c.sim
        .put_lease("kube-system", lease("alice@laptop pid 7", Duration::from_secs(5)));
    let out = roll_cmd(&c, &h, "300", &["--max-surge", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is being rolled by alice@laptop pid 7") && err.contains(&format!("kube-system/{name}")),
        "{err}"
    );
    assert_eq!(c.sim.nodes(), ["old-0", "old-1"]);
    assert!(c.sim.node("old-0").unwrap()["metadata"]["annotations"]["kiln.dev/roll-phase"].is_null());
    assert!(h.log("provisioned").is_empty());

    // Not renewed for longer than its duration: taken over, and released when the roll ends.
    c.sim
        .put_lease("kube-system", lease("alice@laptop pid 7", Duration::from_secs(90)));
    let out = roll_cmd(&c, &h, "300", &["--max-surge", "1", "--max-unavailable", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.sim.nodes(), ["old-0-next", "old-1-next"]);
    let l = c.sim.lease("kube-system", &name).unwrap();
    assert!(l["spec"]["holderIdentity"].is_null(), "released: {l}");
    assert_eq!(l["spec"]["leaseTransitions"], 4, "{l}");

    // Two rolls at once: the second is refused while the first holds the pool. The first one's
    // provisioning waits for a gate file, so it holds the lease for as long as the test needs.
    c.sim.add_node(
        "old-9",
        &[("pool", "blue"), ("kiln.dev/bundle-version", OLD)],
        "v1.36.4",
        "containerd://2.3.4",
    );
    let gate = h.dir.join("gate");
    let real = h.dir.join("provision-ungated");
    std::fs::rename(h.path("provision"), &real).unwrap();
    let script = format!(
        "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.05; done\nexec {}\n",
        gate.display(),
        real.display()
    );
    std::fs::write(h.path("provision"), script).unwrap();
    std::fs::set_permissions(h.path("provision"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let first = roll_cmd(&c, &h, "300", &["--max-surge", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = first.id();
    wait_until("the first roll holds the lease", Duration::from_secs(20), || {
        c.sim.lease("kube-system", &name).is_some_and(|l| {
            l["spec"]["holderIdentity"]
                .as_str()
                .is_some_and(|h| h.ends_with(&format!(" pid {pid}")))
        })
    });
    let second = roll_cmd(&c, &h, "300", &["--max-surge", "1"]).output().unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(text(&second).contains(&format!("pid {pid}")), "{}", text(&second));
    std::fs::write(&gate, "go\n").unwrap();
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(c.sim.nodes(), ["old-0-next", "old-1-next", "old-9-next"]);
    assert_invariants(&c);
}

fn in_place_cmd(c: &Cluster, h: &Hooks, mode: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"));
    cmd.args([
        "roll",
        "--selector",
        "pool=blue",
        "--to-bundle",
        NEW,
        "--in-place",
        "--reprovision-cmd",
        &h.path("reprovision"),
        "--ignore-daemonsets",
        "--timeout",
        "60s",
    ])
    .args(extra)
    .env("KUBECONFIG", &c.kubeconfig)
    .env("HOME", c.home())
    .env("HOOKS", &h.dir)
    .env("MODE", mode)
    .env("ROLLBACK_TO", OLD);
    cmd
}

fn boot_id(c: &Cluster, node: &str) -> String {
    c.sim.node(node).unwrap()["status"]["nodeInfo"]["bootID"]
        .as_str()
        .unwrap()
        .to_string()
}

fn roll_annotations(c: &Cluster, node: &str) -> Vec<String> {
    let n = c.sim.node(node).unwrap();
    let ann = n["metadata"]["annotations"].as_object().cloned().unwrap_or_default();
    ann.keys()
        .filter(|k| k.starts_with("kiln.dev/roll-"))
        .cloned()
        .collect()
}

fn cordoned(c: &Cluster, node: &str) -> bool {
    c.sim.node(node).unwrap()["spec"]["unschedulable"] == true
}

#[test]
fn an_in_place_roll_keeps_every_node_and_its_name_and_needs_a_new_boot() {
    let c = Cluster::new();
    pool(&c, 3);
    let h = Hooks::new(&c);
    let before: Vec<String> = (0..3).map(|i| boot_id(&c, &format!("old-{i}"))).collect();
    c.sim.set_faults(Faults {
        latency: Duration::from_millis(2),
        error_every: 23,
        throttle_every: 5,
        drop_watch_after: None,
    });
    let out = in_place_cmd(&c, &h, "reboot", &["--ready-timeout", "60s", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["halted"].is_null(), "{report}");
    assert_eq!(c.sim.nodes(), ["old-0", "old-1", "old-2"], "every node kept its name");
    assert_eq!(c.sim.max_nodes(), 3, "no node was added");
    assert_eq!(c.sim.max_cordoned(), 1, "one node out of service at a time");
    for (i, old_boot) in before.iter().enumerate() {
        let n = format!("old-{i}");
        let r = &report["nodes"][i];
        assert_eq!(
            (r["node"].as_str(), r["result"].as_str()),
            (Some(n.as_str()), Some("reprovisioned"))
        );
        assert_eq!(bundle_of(&c, &n), NEW);
        let now = boot_id(&c, &n);
        assert_ne!(&now, old_boot, "{n} booted again");
        assert_eq!(r["bootId"], now.as_str());
        assert!(!cordoned(&c, &n), "{n} uncordoned");
        assert!(
            roll_annotations(&c, &n).is_empty(),
            "{n}: {:?}",
            roll_annotations(&c, &n)
        );
    }
    // The command ran once a node, with the boot the node had to leave behind.
    assert_eq!(
        h.log("reprovisioned"),
        (0..3)
            .map(|i| format!("old-{i} {NEW} {}", before[i]))
            .collect::<Vec<_>>()
    );
    wait_until("the evicted web pods run again", Duration::from_secs(10), || {
        c.sim.pending_pods().is_empty()
    });
    assert_invariants(&c);
    assert!(
        c.sim.evictions().iter().any(|e| e.outcome == "evicted"),
        "the nodes were drained"
    );
    let out = c.kiln(&["status", "-o", "json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["bundleVersions"], serde_json::json!([NEW]));
    assert_eq!(s["nodes"][0]["bootId"], boot_id(&c, "old-0").as_str());
}

#[test]
fn a_node_back_without_a_new_boot_or_not_ready_or_on_the_old_bundle_halts_the_roll_and_stays_cordoned() {
    let c = Cluster::new();
    pool(&c, 2);
    let h = Hooks::new(&c);
    let first_boot = boot_id(&c, "old-0");
    let cases = [
        ("relabel", format!("no new boot since the drain (bootID {first_boot})")),
        ("hang", "not Ready".to_string()),
        ("rollback", format!("bundle {OLD}, not {NEW}")),
    ];
    for (runs, (mode, why)) in cases.iter().enumerate() {
        let started = Instant::now();
        let out = in_place_cmd(&c, &h, mode, &["--ready-timeout", "2s"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{mode}: {}", text(&out));
        assert!(started.elapsed() < Duration::from_secs(30), "{mode}");
        let t = text(&out);
        let said = format!(
            "roll HALTED: old-0: old-0 did not come back Ready on bundle {NEW} after a new boot within 2s ({why}); it stays cordoned"
        );
        assert!(t.contains(&said), "{mode}: {t}");
        assert!(t.contains("old-0: failed: "), "{mode}: {t}");
        assert!(t.contains("old-1: untouched"), "{mode}: {t}");
        // Fail-closed: cordoned, drained, and annotated with the reason; old-1 untouched.
        assert!(cordoned(&c, "old-0"), "{mode}");
        let n = c.sim.node("old-0").unwrap();
        assert_eq!(n["metadata"]["annotations"]["kiln.dev/roll-phase"], "halted", "{mode}");
        assert!(
            n["metadata"]["annotations"]["kiln.dev/roll-message"]
                .as_str()
                .unwrap()
                .contains(why.as_str()),
            "{mode}: {n}"
        );
        assert!(!cordoned(&c, "old-1"), "{mode}");
        wait_until(
            "old-1 runs its pods and old-0's web pods",
            Duration::from_secs(10),
            || c.sim.pods_on("old-1").len() == 2 + 2 + 2,
        );
        assert_eq!(
            h.log("reprovisioned").len(),
            runs + 1,
            "{mode}: only old-0 was reprovisioned"
        );
    }
    // Each halted attempt starts over from the boot the node was in then.
    let tried: Vec<String> = h.log("reprovisioned");
    assert!(
        tried.iter().all(|l| l.starts_with(&format!("old-0 {NEW} "))),
        "{tried:?}"
    );
    // Fixed: the halted node is rolled again from the start, then the rest.
    let out = in_place_cmd(&c, &h, "reboot", &["--ready-timeout", "30s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for n in ["old-0", "old-1"] {
        assert_eq!(bundle_of(&c, n), NEW);
        assert!(!cordoned(&c, n));
        assert!(roll_annotations(&c, n).is_empty(), "{n}: {:?}", roll_annotations(&c, n));
    }
    assert_invariants(&c);
}

#[test]
fn an_interrupted_in_place_roll_resumes_and_a_surge_roll_cannot_take_it_over() {
    let c = Cluster::new();
    pool(&c, 2);
    let h = Hooks::new(&c);
    let boot0 = boot_id(&c, "old-0");
    std::fs::write(h.dir.join("hold"), "").unwrap();
    let mut first = in_place_cmd(&c, &h, "reboot", &["--ready-timeout", "60s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("old-0's reprovision command runs", Duration::from_secs(60), || {
        h.dir.join("reprovision.pid").exists()
    });
    // The roll and the machine running the command die together.
    first.kill().unwrap();
    first.wait().unwrap();
    let pid = std::fs::read_to_string(h.dir.join("reprovision.pid")).unwrap();
    Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
    let n = c.sim.node("old-0").unwrap();
    assert_eq!(n["metadata"]["annotations"]["kiln.dev/roll-phase"], "reprovisioning");
    assert_eq!(n["metadata"]["annotations"]["kiln.dev/roll-boot-id"], boot0.as_str());
    assert!(cordoned(&c, "old-0"));

    let out = in_place_cmd(&c, &h, "reboot", &["--dry-run"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "roll pool=blue to bundle {NEW} in place: 2 node(s) to reprovision, 0 already on it"
        )),
        "{t}"
    );
    assert!(t.contains("old-0: resume from reprovisioning"), "{t}");
    assert!(t.contains("old-1: cordon, drain, reprovision"), "{t}");

    // A surge roll may not take the pool over halfway.
    let out = roll_cmd(&c, &h, "300", &["--max-surge", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("node old-0 is in the middle of a roll of the other kind"),
        "{}",
        text(&out)
    );
    assert!(h.log("provisioned").is_empty());

    std::fs::remove_file(h.dir.join("hold")).unwrap();
    let out = in_place_cmd(&c, &h, "reboot", &["--ready-timeout", "60s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(c.sim.nodes(), ["old-0", "old-1"]);
    assert_ne!(boot_id(&c, "old-0"), boot0);
    let calls = h.log("reprovisioned");
    // At least once: old-0's command ran again on resume (same recorded boot), old-1's once.
    assert_eq!(
        calls.iter().filter(|l| **l == format!("old-0 {NEW} {boot0}")).count(),
        2,
        "{calls:?}"
    );
    assert_eq!(calls.iter().filter(|l| l.starts_with("old-1 ")).count(), 1, "{calls:?}");
    for n in ["old-0", "old-1"] {
        assert!(!cordoned(&c, n));
        assert!(roll_annotations(&c, n).is_empty());
    }
    assert_invariants(&c);
}

#[test]
fn a_node_back_on_the_target_but_still_cordoned_is_finished_without_reprovisioning_it_again() {
    let c = Cluster::new();
    pool(&c, 1);
    let h = Hooks::new(&c);
    // As an in-place roll killed after the node came back, before it uncordoned it.
    let boot = boot_id(&c, "old-0");
    for args in [
        vec!["cordon", "old-0"],
        vec![
            "annotate",
            "node",
            "old-0",
            "kiln.dev/roll-target=1.36.4-2",
            "kiln.dev/roll-phase=reprovisioned",
        ],
        vec!["annotate", "node", "old-0", &format!("kiln.dev/roll-boot-id={boot}")],
        vec!["annotate", "node", "old-0", "sim.kiln.dev/reboot-into=1.36.4-2"],
    ] {
        let out = c.kubectl(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    assert_eq!(bundle_of(&c, "old-0"), NEW);
    let out = in_place_cmd(&c, &h, "reboot", &["--ready-timeout", "30s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("old-0: reprovisioned (bootID "), "{}", text(&out));
    assert!(h.log("reprovisioned").is_empty(), "not reprovisioned again");
    assert!(!cordoned(&c, "old-0"));
    assert!(roll_annotations(&c, "old-0").is_empty());
}

#[test]
fn in_place_takes_the_reprovision_command_and_none_of_the_surge_flags() {
    let c = Cluster::new();
    pool(&c, 1);
    let h = Hooks::new(&c);
    let refused = [
        (
            vec!["--provision-cmd", "true"],
            "it takes --reprovision-cmd, not --provision-cmd",
        ),
        (
            vec!["--max-surge", "1"],
            "--max-surge does not apply to an in-place roll",
        ),
        (
            vec!["--max-unavailable", "0"],
            "--max-unavailable cannot be 0 in an in-place roll",
        ),
    ];
    for (extra, why) in refused {
        let out = in_place_cmd(&c, &h, "reboot", &extra).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", text(&out));
        assert!(text(&out).contains(why), "{extra:?}: {}", text(&out));
    }
    // The flags go together (a usage error, as kubectl's).
    let out = c.kiln(&["roll", "-l", "pool=blue", "--to-bundle", NEW, "--in-place"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--reprovision-cmd"), "{}", text(&out));
    let out = c.kiln(&[
        "roll",
        "-l",
        "pool=blue",
        "--to-bundle",
        NEW,
        "--reprovision-cmd",
        "true",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--in-place"), "{}", text(&out));
    assert!(h.log("reprovisioned").is_empty());
    assert!(!cordoned(&c, "old-0"));
    assert!(roll_annotations(&c, "old-0").is_empty());
}
