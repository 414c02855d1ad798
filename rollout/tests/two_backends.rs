//! One test body, two backends: each case below runs against the simulator and against the real
//! API server (v1.32 from `../shared/k8s/` or `KILN_K8S_BIN`, with its real scheduler, ReplicaSet
//! and disruption controllers, and the test agent as the nodes' kubelet), and asserts the same
//! outcome, output and exit code on both. A difference between the two is a simulator defect.

mod agent;
mod common;

use common::wait_until;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kiln_testkit::cluster::{Cluster, Options};

/// What a case needs from a cluster.
trait Backend {
    fn name(&self) -> &'static str;
    fn kubeconfig(&self) -> &Path;
    fn add_node(&self, name: &str);
    /// A Ready node with these labels, once its kubelet reported its bootID.
    fn add_labelled_node(&self, name: &str, labels: &[(&str, &str)]);
    /// The Node object as `kubectl get node -o json` prints it.
    fn node_json(&self, name: &str) -> serde_json::Value;
    /// A node that registered but whose kubelet does not report Ready until [`Backend::make_ready`].
    fn add_node_not_ready(&self, name: &str, labels: &[(&str, &str)]);
    fn make_ready(&self, name: &str);
    fn node_exists(&self, name: &str) -> bool;
    /// `replicas` pods of app `app` (a ReplicaSet's, recreated elsewhere when evicted), each taking
    /// `grace` seconds to terminate, all Running and Ready on `node` when this returns.
    fn add_app(&self, app: &str, node: &str, replicas: usize, grace: i64);
    fn add_pdb(&self, name: &str, app: &str, min_available: Option<i64>, max_unavailable: Option<i64>);
    fn pods_on(&self, node: &str) -> Vec<String>;
    /// Once the app had `replicas` pods Ready, it never had fewer than `min`.
    fn budget_held(&self, app: &str, replicas: usize, min: usize) -> bool;
    /// Every container of every pod on `node` restarted once (its `restartCount` one higher).
    fn restart_pods_on(&self, node: &str);

    fn kiln(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .unwrap()
    }

    /// `kubectl kiln roll -l pool=<pool> --to-bundle B --in-place`, reprovisioning with `script`
    /// (which finds its hold and record files under `hooks`); the caller adds the timeouts.
    fn roll_in_place(&self, pool: &str, script: &Path, hooks: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"));
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["roll", "-l", &format!("pool={pool}"), "--to-bundle", "B", "--in-place"])
            .arg("--reprovision-cmd")
            .arg(script)
            .arg("--ignore-daemonsets")
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOOKS", hooks);
        c
    }
}

struct Simulated(common::Cluster);

impl Backend for Simulated {
    fn name(&self) -> &'static str {
        "simulator"
    }
    fn kubeconfig(&self) -> &Path {
        &self.0.kubeconfig
    }
    fn add_node(&self, name: &str) {
        self.0.sim.add_node(name, &[], "v1.32.13", "containerd://2.3.4");
    }
    fn add_labelled_node(&self, name: &str, labels: &[(&str, &str)]) {
        self.0.sim.add_node(name, labels, "v1.32.13", "containerd://2.3.4");
    }
    fn node_json(&self, name: &str) -> serde_json::Value {
        self.0.sim.node(name).unwrap()
    }
    fn add_node_not_ready(&self, name: &str, labels: &[(&str, &str)]) {
        self.0.sim.add_node(name, labels, "v1.32.13", "containerd://2.3.4");
        self.0.sim.set_node_ready(name, false);
    }
    fn make_ready(&self, name: &str) {
        self.0.sim.set_node_ready(name, true);
    }
    fn node_exists(&self, name: &str) -> bool {
        self.0.sim.node(name).is_some()
    }
    fn add_app(&self, app: &str, node: &str, replicas: usize, grace: i64) {
        self.0.sim.run_replicaset_controller(Duration::from_millis(200));
        for i in 0..replicas {
            self.0
                .sim
                .add_rs_pod("default", &format!("{app}-{i}"), node, app, grace);
        }
    }
    fn add_pdb(&self, name: &str, app: &str, min_available: Option<i64>, max_unavailable: Option<i64>) {
        self.0
            .sim
            .add_pdb("default", name, &[("app", app)], min_available, max_unavailable);
    }
    fn pods_on(&self, node: &str) -> Vec<String> {
        self.0.sim.pods_on(node)
    }
    fn budget_held(&self, _app: &str, _replicas: usize, _min: usize) -> bool {
        self.0.sim.violations().is_empty()
    }
    fn restart_pods_on(&self, node: &str) {
        for pod in self.0.sim.pods_on(node) {
            let (ns, name) = pod.split_once('/').unwrap();
            self.0.sim.restart_containers(ns, name);
        }
    }
}

struct Real {
    cluster: Cluster,
    agent: agent::Agent,
    _dir: tempfile::TempDir,
}

impl Real {
    fn start() -> Real {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::start(&dir.path().join("cluster"), &Options::default());
        let agent = agent::Agent::start(&cluster.admin_kubeconfig);
        Real {
            cluster,
            agent,
            _dir: dir,
        }
    }

    fn jsonpath(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.cluster.kubectl(args).stdout)
            .trim()
            .to_string()
    }
}

impl Backend for Real {
    fn name(&self) -> &'static str {
        "real API server"
    }
    fn kubeconfig(&self) -> &Path {
        &self.cluster.admin_kubeconfig
    }
    fn add_node(&self, name: &str) {
        self.cluster
            .apply(&format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n"));
    }
    fn add_labelled_node(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
        self.cluster.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{{}}}\n",
            labels.join(", ")
        ));
        wait_until(
            &format!("{name} reports Ready and a bootID"),
            Duration::from_secs(30),
            || {
                let n = self.node_json(name);
                n["status"]["nodeInfo"]["bootID"]
                    .as_str()
                    .is_some_and(|b| !b.is_empty())
            },
        );
    }
    fn node_json(&self, name: &str) -> serde_json::Value {
        let out = self.cluster.kubectl(&["get", "node", name, "-o", "json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
    fn add_node_not_ready(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
        self.cluster.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{{}}}\n  annotations: {{sim.kiln.dev/ready-after-ms: never}}\n",
            labels.join(", ")
        ));
    }
    fn make_ready(&self, name: &str) {
        let out = self
            .cluster
            .kubectl(&["annotate", "node", name, "sim.kiln.dev/ready-after-ms-"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    fn node_exists(&self, name: &str) -> bool {
        self.cluster.kubectl(&["get", "node", name]).status.success()
    }
    fn add_app(&self, app: &str, node: &str, replicas: usize, grace: i64) {
        // The scheduler places the pods; pinning them to `node` at first keeps the case the same
        // as the simulator's, and the pin is lifted so the ReplicaSet can recreate them elsewhere.
        self.cluster.apply(&format!(
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: {app}, namespace: default}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {app}}}}}\n  template:\n    metadata: {{labels: {{app: {app}}}}}\n    spec:\n      terminationGracePeriodSeconds: {grace}\n      nodeName: {node}\n      containers: [{{name: c, image: busybox}}]\n"
        ));
        wait_until(
            &format!("{replicas} {app} pods are Ready on {node}"),
            Duration::from_secs(60),
            || {
                let ready = self.jsonpath(&[
                    "get",
                    "pods",
                    "-l",
                    &format!("app={app}"),
                    "-o",
                    "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
                ]);
                ready.lines().filter(|l| *l == "True").count() == replicas
            },
        );
        let out = self.cluster.kubectl(&[
            "patch",
            "rs",
            app,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/template/spec/nodeName"}]"#,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    fn add_pdb(&self, name: &str, app: &str, min_available: Option<i64>, max_unavailable: Option<i64>) {
        let mut spec = String::new();
        if let Some(m) = min_available {
            spec.push_str(&format!("  minAvailable: {m}\n"));
        }
        if let Some(m) = max_unavailable {
            spec.push_str(&format!("  maxUnavailable: {m}\n"));
        }
        self.cluster.apply(&format!(
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}  selector: {{matchLabels: {{app: {app}}}}}\n"
        ));
        // The disruption controller computes the budget's status shortly after.
        wait_until(
            &format!("the disruption controller observes {name}"),
            Duration::from_secs(30),
            || {
                !self
                    .jsonpath(&["get", "pdb", name, "-o", "jsonpath={.status.observedGeneration}"])
                    .is_empty()
            },
        );
    }
    fn pods_on(&self, node: &str) -> Vec<String> {
        let names = self.jsonpath(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            &format!("spec.nodeName={node}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        names.split_whitespace().map(String::from).collect()
    }
    fn budget_held(&self, app: &str, replicas: usize, min: usize) -> bool {
        self.agent.budget_held(app, replicas, min)
    }
    fn restart_pods_on(&self, node: &str) {
        // What the kubelet reports after it restarted a crashed container, written as it would.
        let status = r#"{"status":{"containerStatuses":[{"name":"c","image":"busybox","imageID":"","ready":true,"restartCount":1,"state":{"running":{}}}]}}"#;
        for pod in self.pods_on(node) {
            let out = self.cluster.kubectl(&[
                "patch",
                "pod",
                &pod,
                "--subresource=status",
                "--type=merge",
                "-p",
                status,
            ]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn both(case: impl Fn(&dyn Backend)) {
    case(&Simulated(common::Cluster::new()));
    case(&Real::start());
}

fn text(o: &Output) -> String {
    common::text(o)
}

#[test]
fn a_drain_waits_on_the_budget_and_moves_every_pod() {
    both(|b| {
        b.add_node("node-a");
        b.add_app("web", "node-a", 3, 1);
        b.add_node("node-b");
        b.add_pdb("web", "web", None, Some(1));
        let out = b.kiln(&["drain", "node-a", "--ignore-daemonsets", "--timeout", "60s"]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name(), text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.matches(": evicted default/web-").count(),
            3,
            "{}: {stdout}",
            b.name()
        );
        assert!(
            stdout.trim_end().ends_with("node/node-a drained"),
            "{}: {stdout}",
            b.name()
        );
        assert!(b.pods_on("node-a").is_empty(), "{}", b.name());
        assert!(
            b.budget_held("web", 3, 2),
            "{}: maxUnavailable 1 was exceeded",
            b.name()
        );
    });
}

#[test]
fn a_budget_that_can_never_allow_is_reported_at_once_and_the_node_stays_cordoned() {
    both(|b| {
        b.add_node("node-a");
        b.add_app("db", "node-a", 2, 1);
        b.add_pdb("db", "db", Some(2), None);
        let started = std::time::Instant::now();
        let out = b.kiln(&["drain", "node-a", "--timeout", "120s"]);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}: waited for nothing",
            b.name()
        );
        assert_eq!(out.status.code(), Some(1), "{}: {}", b.name(), text(&out));
        let all = text(&out);
        assert!(
            all.contains("blocked by PodDisruptionBudget db: "),
            "{}: {all}",
            b.name()
        );
        assert!(all.contains("left cordoned"), "{}: {all}", b.name());
        assert_eq!(b.pods_on("node-a").len(), 2, "{}", b.name());
    });
}

#[test]
fn replace_waits_for_the_new_node_then_drains_and_deletes_the_old() {
    both(|b| {
        b.add_node("old-0");
        b.add_app("web", "old-0", 2, 1);
        b.add_node_not_ready("new-0", &[("kiln.dev/bundle-version", "2")]);
        let mut replace = Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
            .arg("--kubeconfig")
            .arg(b.kubeconfig())
            .args([
                "replace",
                "old-0",
                "--with",
                "new-0",
                "--bundle",
                "2",
                "--ready-timeout",
                "60s",
            ])
            .args(["--ignore-daemonsets", "--timeout", "60s", "-o", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Once kubectl kiln says it waits for new-0 (NotReady), nothing may have happened to old-0.
        let mut stderr = std::io::BufReader::new(replace.stderr.take().unwrap());
        let mut said = String::new();
        while !said.contains("waiting for new-0 to be Ready") {
            let mut line = String::new();
            let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
            assert!(n > 0, "{}: kubectl kiln ended before waiting: {said}", b.name());
            said.push_str(&line);
        }
        assert!(b.node_exists("old-0"), "{}", b.name());
        assert_eq!(b.pods_on("old-0").len(), 2, "{}: nothing evicted yet", b.name());
        b.make_ready("new-0");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        let mut out = replace.wait_with_output().unwrap();
        out.stderr = format!("{said}{rest}").into_bytes();
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name(), text(&out));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["result"], "replaced", "{}: {r}", b.name());
        assert_eq!(r["replacement"], "new-0", "{}: {r}", b.name());
        assert!(!b.node_exists("old-0"), "{}: the old node is deleted", b.name());
        wait_until("the web pods run on new-0", Duration::from_secs(30), || {
            b.pods_on("new-0").len() == 2
        });
    });
}

/// The in-place roll's rules on both backends: the reprovision command (`reprovision.sh`: the
/// simulated machine's reboot) first brings the node back on the old bundle, as a node whose
/// new kubelet failed and booted back; the roll halts there with the node cordoned. Then a reboot
/// into the target: each node keeps its name, reports a new bootID and the target bundle, and the
/// budget holds throughout.
#[test]
fn an_in_place_roll_keeps_each_node_and_halts_on_one_that_came_back_on_the_old_bundle() {
    let hooks = tempfile::tempdir().unwrap();
    let script = hooks.path().join("reprovision");
    std::fs::write(&script, include_str!("reprovision.sh")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    both(|b| {
        let _ = std::fs::remove_file(hooks.path().join("reprovisioned"));
        for n in ["n-0", "n-1"] {
            b.add_labelled_node(n, &[("pool", "blue"), ("kiln.dev/bundle-version", "A")]);
        }
        b.add_app("web", "n-0", 2, 1);
        b.add_pdb("web", "web", None, Some(1));
        let boot = |n: &str| {
            b.node_json(n)["status"]["nodeInfo"]["bootID"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let before = [boot("n-0"), boot("n-1")];
        let roll = |mode: &str, timeout: &str| {
            b.roll_in_place("blue", &script, hooks.path())
                .args(["--timeout", "60s", "--ready-timeout", timeout])
                .env("MODE", mode)
                .env("ROLLBACK_TO", "A")
                .output()
                .unwrap()
        };
        let out = roll("rollback", "5s");
        assert_eq!(out.status.code(), Some(1), "{}: {}", b.name(), text(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("roll HALTED: n-0: n-0 did not come back Ready on bundle B after a new boot within 5s (bundle A, not B); it stays cordoned"),
            "{}: {said}",
            b.name()
        );
        let n0 = b.node_json("n-0");
        assert_eq!(n0["spec"]["unschedulable"], true, "{}: {n0}", b.name());
        assert_eq!(
            n0["metadata"]["annotations"]["kiln.dev/roll-phase"],
            "halted",
            "{}",
            b.name()
        );
        assert_ne!(boot("n-0"), before[0], "{}: it did reboot", b.name());
        let n1 = b.node_json("n-1");
        assert!(n1["spec"]["unschedulable"].is_null(), "{}: n-1 untouched", b.name());
        assert_eq!(boot("n-1"), before[1], "{}", b.name());

        let out = roll("reboot", "60s");
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name(), text(&out));
        let status = b.kiln(&["status", "-l", "pool=blue", "-o", "json"]);
        let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(s["bundleVersions"], serde_json::json!(["B"]), "{}: {s}", b.name());
        for (i, n) in ["n-0", "n-1"].iter().enumerate() {
            let node = &s["nodes"][i];
            assert_eq!(node["name"], *n, "{}: the same nodes", b.name());
            assert_eq!(node["schedulable"], true, "{}: {node}", b.name());
            assert_ne!(node["bootId"], before[i].as_str(), "{}: {node}", b.name());
        }
        assert!(
            b.budget_held("web", 2, 1),
            "{}: maxUnavailable 1 was exceeded",
            b.name()
        );
    });
}

/// Pause and resume from another process, and the roll's status read from the cluster alone, on
/// both backends: paused while its first node is being reprovisioned, the roll says so within a
/// bound, lets that node finish and starts no other; `roll status` shows the holder, the pause and
/// each node's phase; resumed, it rolls the rest. A real Prometheus scrapes the roll's metrics
/// meanwhile and sees the node in flight, the pause, the node replaced and its drain.
#[test]
fn a_paused_roll_finishes_the_node_in_flight_and_starts_no_other_until_resumed() {
    let hooks = tempfile::tempdir().unwrap();
    let script = hooks.path().join("reprovision");
    std::fs::write(&script, include_str!("reprovision.sh")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    both(|b| {
        let _ = std::fs::remove_file(hooks.path().join("reprovisioned"));
        for n in ["p-0", "p-1"] {
            b.add_labelled_node(n, &[("pool", "green"), ("kiln.dev/bundle-version", "A")]);
        }
        let boot_1 = b.node_json("p-1")["status"]["nodeInfo"]["bootID"].clone();
        std::fs::write(hooks.path().join("hold"), "").unwrap();
        let log = hooks.path().join(format!("roll-{}.log", b.name()));
        let mut roll = b
            .roll_in_place("green", &script, hooks.path())
            .args(["--timeout", "60s", "--ready-timeout", "60s"])
            .args(["--metrics-bind-address", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let said = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until("p-0 is being reprovisioned", Duration::from_secs(30), || {
            std::fs::read_to_string(hooks.path().join("reprovisioned")).is_ok_and(|r| r.starts_with("p-0 B "))
        });
        let log_text = said();
        let endpoint = log_text
            .split("serving the roll's metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split("/metrics").next())
            .unwrap_or_else(|| panic!("{}: the roll names its metrics address: {log_text}", b.name()));
        let prom =
            kiln_testkit::prometheus::Prometheus::start(&hooks.path().join(format!("prom-{}", b.name())), endpoint);
        let series = |name: &str| format!("{name}{{job=\"kiln\",pool=\"pool=green\",target=\"B\"}}");
        let figures = |want: &[(&str, f64)]| want.iter().all(|(name, v)| prom.value(&series(name)) == Some(*v));
        wait_until("Prometheus sees p-0 in flight", Duration::from_secs(30), || {
            figures(&[
                ("kiln_roll_nodes_to_roll", 2.0),
                ("kiln_roll_nodes_in_flight", 1.0),
                ("kiln_roll_nodes_replaced_total", 0.0),
                ("kiln_roll_paused", 0.0),
            ])
        });

        let paused = b.kiln(&["roll", "pause", "-l", "pool=green"]);
        assert_eq!(paused.status.code(), Some(0), "{}: {}", b.name(), text(&paused));
        assert_eq!(String::from_utf8_lossy(&paused.stdout), "roll of pool=green paused\n");
        let asked = std::time::Instant::now();
        wait_until("the roll saw the pause", Duration::from_secs(10), || {
            said().contains("roll paused (")
        });
        let seen_s = asked.elapsed().as_secs_f64();
        let again = b.kiln(&["roll", "pause", "-l", "pool=green"]);
        assert_eq!(again.status.code(), Some(1), "{}", b.name());
        assert!(
            text(&again).contains("is already paused"),
            "{}: {}",
            b.name(),
            text(&again)
        );

        // Seen from the cluster alone.
        let status = b.kiln(&["roll", "status", "-l", "pool=green", "-o", "json"]);
        assert_eq!(status.status.code(), Some(0), "{}: {}", b.name(), text(&status));
        let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert!(
            s["lease"]["holder"]
                .as_str()
                .unwrap()
                .ends_with(&format!(" pid {}", roll.id())),
            "{}: {s}",
            b.name()
        );
        assert!(
            s["lease"]["paused"].as_str().unwrap().contains(" at "),
            "{}: {s}",
            b.name()
        );
        assert_eq!(s["targets"], serde_json::json!(["B"]), "{}: {s}", b.name());
        assert_eq!(s["nodes"][0]["phase"], "reprovisioning", "{}: {s}", b.name());
        assert!(s["nodes"][1]["phase"].is_null(), "{}: {s}", b.name());
        let table = String::from_utf8_lossy(&b.kiln(&["roll", "status", "-l", "pool=green"]).stdout).into_owned();
        assert!(
            table.contains("PAUSED   yes, by ")
                && table.contains(" held by ")
                && table.contains("reprovisioning,cordoned"),
            "{}: {table}",
            b.name()
        );

        // The node in flight finishes; the next does not start.
        std::fs::remove_file(hooks.path().join("hold")).unwrap();
        wait_until("p-1 waits for the resume", Duration::from_secs(60), || {
            said().contains("p-1: waiting to start: the roll is paused")
        });
        wait_until(
            "Prometheus sees the pause, p-0 replaced and drained",
            Duration::from_secs(30),
            || {
                figures(&[
                    ("kiln_roll_nodes_in_flight", 0.0),
                    ("kiln_roll_nodes_replaced_total", 1.0),
                    ("kiln_roll_nodes_halted_total", 0.0),
                    ("kiln_roll_paused", 1.0),
                    ("kiln_roll_halted", 0.0),
                    ("kiln_roll_drain_duration_seconds_count", 1.0),
                ])
            },
        );
        assert!(
            prom.targets().contains("\"health\":\"up\""),
            "{}: {}",
            b.name(),
            prom.targets()
        );
        let p0 = b.node_json("p-0");
        assert_eq!(
            p0["metadata"]["labels"]["kiln.dev/bundle-version"],
            "B",
            "{}: {p0}",
            b.name()
        );
        assert!(p0["spec"]["unschedulable"].is_null(), "{}: p-0 uncordoned", b.name());
        let p1 = b.node_json("p-1");
        assert!(p1["spec"]["unschedulable"].is_null(), "{}: p-1 untouched", b.name());
        assert!(
            p1["metadata"]["annotations"]["kiln.dev/roll-phase"].is_null(),
            "{}: {p1}",
            b.name()
        );
        assert_eq!(p1["status"]["nodeInfo"]["bootID"], boot_1, "{}", b.name());

        let resumed = b.kiln(&["roll", "resume", "-l", "pool=green"]);
        assert_eq!(resumed.status.code(), Some(0), "{}: {}", b.name(), text(&resumed));
        let done = roll.wait().unwrap();
        assert!(done.success(), "{}: {}", b.name(), said());
        assert!(said().contains("roll resumed"), "{}: {}", b.name(), said());
        let p1 = b.node_json("p-1");
        assert_eq!(
            p1["metadata"]["labels"]["kiln.dev/bundle-version"],
            "B",
            "{}: {p1}",
            b.name()
        );
        let again = b.kiln(&["roll", "resume", "-l", "pool=green"]);
        assert_eq!(again.status.code(), Some(1), "{}", b.name());
        assert!(text(&again).contains("is not paused"), "{}: {}", b.name(), text(&again));
        let status = String::from_utf8_lossy(&b.kiln(&["roll", "status", "-l", "pool=green"]).stdout).into_owned();
        assert!(
            status.contains("PAUSED   no") && status.contains("not held (no roll is running)"),
            "{}: {status}",
            b.name()
        );
        println!(
            "{}: the pause reached the roll {seen_s:.1} s after `roll pause` returned",
            b.name()
        );
    });
}

/// `roll status` while a roll's drain waits on a budget, on both backends: the node's phase and
/// which pod the budget holds back and why, read from the cluster alone; the roll goes on once the
/// budget allows.
#[test]
fn roll_status_shows_what_a_blocked_drain_waits_for() {
    let hooks = tempfile::tempdir().unwrap();
    let script = hooks.path().join("reprovision");
    std::fs::write(&script, include_str!("reprovision.sh")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    both(|b| {
        for n in ["q-0", "q-1"] {
            b.add_labelled_node(n, &[("pool", "amber"), ("kiln.dev/bundle-version", "A")]);
        }
        b.add_app("shop", "q-0", 2, 1);
        b.add_pdb("shop", "shop", None, Some(1));
        // Nowhere for an evicted pod to go: the budget holds the second eviction back.
        let out = b.kiln(&["cordon", "q-1"]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name(), text(&out));
        let mut roll = b
            .roll_in_place("amber", &script, hooks.path())
            .args(["--timeout", "90s", "--ready-timeout", "60s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut seen = serde_json::Value::Null;
        wait_until(
            "roll status names the budget the drain waits on",
            Duration::from_secs(30),
            || {
                let out = b.kiln(&["roll", "status", "-l", "pool=amber", "-o", "json"]);
                seen = serde_json::from_slice(&out.stdout).unwrap_or_default();
                seen["nodes"][0]["waiting"].as_array().is_some_and(|w| !w.is_empty())
            },
        );
        let q0 = &seen["nodes"][0];
        assert_eq!(q0["name"], "q-0", "{}: {seen}", b.name());
        assert_eq!(q0["phase"], "draining-in-place", "{}: {seen}", b.name());
        let why = q0["waiting"][0].as_str().unwrap();
        assert!(
            // The healthy count is the disruption controller's: right after an eviction the
            // real one may still say 2.
            why.starts_with("default/shop-")
                && why.contains(": waiting for PodDisruptionBudget shop: ")
                && why.ends_with(" of 2 pods healthy, it needs more than 1"),
            "{}: {why}",
            b.name()
        );
        let table = String::from_utf8_lossy(&b.kiln(&["roll", "status", "-l", "pool=amber"]).stdout).into_owned();
        assert!(
            table.contains("draining-in-place,cordoned") && table.contains("waiting for PodDisruptionBudget shop"),
            "{}: {table}",
            b.name()
        );

        // The refusals are one Event with a growing series, not one object per retry.
        wait_until(
            "the blocked eviction's Event has a series",
            Duration::from_secs(30),
            || {
                let blocked = node_events(b, "q-0", "EvictionBlocked");
                blocked.len() == 1 && blocked[0]["series"]["count"].as_i64().unwrap_or(0) >= 2
            },
        );

        let out = b.kiln(&["uncordon", "q-1"]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name(), text(&out));
        assert!(roll.wait().unwrap().success(), "{}", b.name());
        // The story, read back with kubectl.
        let blocked = node_events(b, "q-0", "EvictionBlocked");
        assert_eq!(blocked[0]["type"], "Warning", "{}", b.name());
        assert!(
            blocked[0]["note"]
                .as_str()
                .unwrap()
                .contains("waiting for PodDisruptionBudget shop"),
            "{}: {blocked:?}",
            b.name()
        );
        for reason in ["Cordoned", "Drained", "Reprovisioned"] {
            let got = node_events(b, "q-0", reason);
            assert_eq!(got.len(), 1, "{}: one {reason} Event on q-0: {got:?}", b.name());
            assert_eq!(got[0]["reportingController"], "kiln.dev/kubectl-kiln", "{}", b.name());
            assert_eq!(got[0]["type"], "Normal", "{}", b.name());
        }
        assert!(
            node_events(b, "q-0", "Reprovisioned")[0]["note"]
                .as_str()
                .unwrap()
                .starts_with("back Ready on bundle B after a new boot (bootID "),
            "{}",
            b.name()
        );
        assert_eq!(node_events(b, "q-1", "Reprovisioned").len(), 1, "{}", b.name());
        let s: serde_json::Value =
            serde_json::from_slice(&b.kiln(&["roll", "status", "-l", "pool=amber", "-o", "json"]).stdout).unwrap();
        assert!(
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["bundle"] == "B" && n["phase"].is_null()),
            "{}: {s}",
            b.name()
        );
    });
}

/// The `events.k8s.io/v1` Events about Node `node` with `reason`, as `kubectl get` reads them.
fn node_events(b: &dyn Backend, node: &str, reason: &str) -> Vec<serde_json::Value> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(b.kubeconfig())
        .args(["get", "events.events.k8s.io", "-n", "default", "-o", "json"])
        .output()
        .expect("kubectl (scripts/setup installs it)");
    assert!(out.status.success(), "{}: {}", b.name(), text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["kind"] == "Node" && e["regarding"]["name"] == node && e["reason"] == reason)
        .cloned()
        .collect()
}

/// The blocked-drain policy both ways, on both backends: a budget that never lets a pod go halts
/// the roll with the node cordoned (the default); with `--on-blocked-drain=delete` the pods are
/// deleted, the roll goes on, and a `DrainForced` Warning Event says why.
#[test]
fn a_blocked_drain_halts_the_roll_unless_asked_to_delete_the_pods() {
    let hooks = tempfile::tempdir().unwrap();
    let script = hooks.path().join("reprovision");
    std::fs::write(&script, include_str!("reprovision.sh")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    both(|b| {
        for n in ["r-0", "r-1"] {
            b.add_labelled_node(n, &[("pool", "rose"), ("kiln.dev/bundle-version", "A")]);
        }
        b.add_app("cart", "r-0", 2, 1);
        b.add_pdb("cart", "cart", Some(2), None);
        let roll = |policy: &str| {
            b.roll_in_place("rose", &script, hooks.path())
                .args(["--timeout", "5s", "--ready-timeout", "60s"])
                .args(["--on-blocked-drain", policy])
                .output()
                .unwrap()
        };
        let out = roll("halt");
        assert_eq!(out.status.code(), Some(1), "{}: {}", b.name(), text(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("roll HALTED: r-0: drain stopped: default/cart-")
                && said.contains("never allows this eviction"),
            "{}: {said}",
            b.name()
        );
        let r0 = b.node_json("r-0");
        assert_eq!(r0["spec"]["unschedulable"], true, "{}: r-0 stays cordoned", b.name());
        assert_eq!(b.pods_on("r-0").len(), 2, "{}: nothing deleted", b.name());
        assert!(node_events(b, "r-0", "DrainForced").is_empty(), "{}", b.name());
        assert_eq!(node_events(b, "r-0", "RollHalted").len(), 1, "{}", b.name());

        let refused = b.kiln(&[
            "roll",
            "-l",
            "pool=rose",
            "--to-bundle",
            "B",
            "--in-place",
            "--reprovision-cmd",
            "true",
            "--on-blocked-drain",
            "delete",
        ]);
        assert_eq!(refused.status.code(), Some(1), "{}", b.name());
        assert!(
            text(&refused).contains("--on-blocked-drain=delete needs a drain --timeout"),
            "{}: {}",
            b.name(),
            text(&refused)
        );

        let out = roll("delete");
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name(), text(&out));
        let forced = node_events(b, "r-0", "DrainForced");
        assert_eq!(forced.len(), 1, "{}: {forced:?}", b.name());
        assert_eq!(forced[0]["type"], "Warning", "{}", b.name());
        assert!(
            forced[0]["note"]
                .as_str()
                .unwrap()
                .contains("never allows this eviction")
                && forced[0]["note"]
                    .as_str()
                    .unwrap()
                    .contains("--on-blocked-drain=delete"),
            "{}: {forced:?}",
            b.name()
        );
        let r0 = b.node_json("r-0");
        assert_eq!(
            r0["metadata"]["labels"]["kiln.dev/bundle-version"],
            "B",
            "{}: {r0}",
            b.name()
        );
        assert!(r0["spec"]["unschedulable"].is_null(), "{}: r-0 uncordoned", b.name());
    });
}

/// Canary and soak, on both backends: `--canary 1` rolls the first node alone, soaks it, and halts
/// the roll before the rest when the soak check fails or a container on the canary restarts
/// during the soak (each a `CanaryFailed` Warning Event); when the soak passes, the rest follow
/// (a `CanarySoaked` Event). A re-run's canary is the first node not yet on the target.
#[test]
fn a_canary_that_fails_its_soak_halts_the_roll_before_the_rest() {
    let hooks = tempfile::tempdir().unwrap();
    let script = hooks.path().join("reprovision");
    std::fs::write(&script, include_str!("reprovision.sh")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let check = hooks.path().join("soak-check");
    std::fs::write(
        &check,
        "#!/bin/sh\necho \"$KILN_CANARY_NODES $KILN_TARGET_BUNDLE $KILN_SELECTOR\" >> \"$HOOKS/checked\"\necho 'p99 latency 900ms > 300ms' >&2\nexit \"$CHECK_EXIT\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    both(|b| {
        let _ = std::fs::remove_file(hooks.path().join("checked"));
        for n in ["c-0", "c-1", "c-2"] {
            b.add_labelled_node(n, &[("pool", "coral"), ("kiln.dev/bundle-version", "A")]);
        }
        let roll = |soak: &str, exit: &str| {
            b.roll_in_place("coral", &script, hooks.path())
                .args(["--timeout", "60s", "--ready-timeout", "60s"])
                .args(["--canary", "1", "--soak", soak, "--soak-check"])
                .arg(&check)
                .env("CHECK_EXIT", exit)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let bundle = |n: &str| b.node_json(n)["metadata"]["labels"]["kiln.dev/bundle-version"].clone();
        let checked = || std::fs::read_to_string(hooks.path().join("checked")).unwrap_or_default();

        // The soak check fails: c-0 rolled and soaked, the rest untouched.
        let out = roll("2s", "1").wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}: {}", b.name(), text(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("roll HALTED: canary failed: soak check command")
                && said.contains("p99 latency 900ms > 300ms"),
            "{}: {said}",
            b.name()
        );
        assert_eq!(checked(), "c-0 B pool=coral\n", "{}", b.name());
        assert_eq!(bundle("c-0"), "B", "{}", b.name());
        assert!(b.node_json("c-0")["spec"]["unschedulable"].is_null(), "{}", b.name());
        for n in ["c-1", "c-2"] {
            assert_eq!(bundle(n), "A", "{}: {n} untouched", b.name());
        }
        let failed = node_events(b, "c-0", "CanaryFailed");
        assert_eq!(failed.len(), 1, "{}: {failed:?}", b.name());
        assert_eq!(failed[0]["type"], "Warning", "{}", b.name());
        // From anywhere, after the roll's process is gone: why it halted, on the pool's Lease.
        let status = b.kiln(&["roll", "status", "-l", "pool=coral", "-o", "json"]);
        assert_eq!(status.status.code(), Some(0), "{}: {}", b.name(), text(&status));
        let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let halted = s["lease"]["halted"].as_str().unwrap_or_default();
        assert!(
            halted.starts_with("canary failed: soak check command")
                && halted.contains(" pid ")
                && halted.contains(" at "),
            "{}: {s}",
            b.name()
        );
        let table = String::from_utf8_lossy(&b.kiln(&["roll", "status", "-l", "pool=coral"]).stdout).into_owned();
        assert!(table.contains("HALTED   canary failed: "), "{}: {table}", b.name());

        // A container on the canary (now c-1) restarts during the soak: halted at once.
        // Once the roll says the soak began, its baseline of restart counts is taken.
        let mut running = roll("60s", "0");
        let (began, soaking) = std::sync::mpsc::channel();
        let stderr = std::io::BufReader::new(running.stderr.take().unwrap());
        let said_on_stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
                if line.contains("canary c-1: soaking for") {
                    let _ = began.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let started = soaking.recv_timeout(Duration::from_secs(60));
        let n = b.node_json("c-1");
        assert!(
            started.is_ok()
                && n["metadata"]["labels"]["kiln.dev/bundle-version"] == "B"
                && n["spec"]["unschedulable"].is_null(),
            "{}: c-1 is not soaking on B, uncordoned: {n}",
            b.name()
        );
        b.add_app("probe", "c-1", 1, 0);
        b.restart_pods_on("c-1");
        let out = running.wait_with_output().unwrap();
        let progress = said_on_stderr.join().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}: {}{progress}", b.name(), text(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("roll HALTED: canary failed: container c of pod default/probe")
                && said.contains("on canary c-1 restarted during the soak (0 → 1 restarts)"),
            "{}: {said}",
            b.name()
        );
        assert_eq!(
            checked(),
            "c-0 B pool=coral\n",
            "{}: no check after a failed soak",
            b.name()
        );
        assert_eq!(bundle("c-2"), "A", "{}: c-2 untouched", b.name());
        assert_eq!(node_events(b, "c-1", "CanaryFailed").len(), 1, "{}", b.name());

        // The soak passes: the canary (c-2, the last one left) is soaked and the roll ends.
        let out = roll("1s", "0").wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name(), text(&out));
        assert_eq!(checked(), "c-0 B pool=coral\nc-2 B pool=coral\n", "{}", b.name());
        for n in ["c-0", "c-1", "c-2"] {
            assert_eq!(bundle(n), "B", "{}: {n}", b.name());
        }
        assert_eq!(node_events(b, "c-2", "CanarySoaked").len(), 1, "{}", b.name());
        let table = String::from_utf8_lossy(&b.kiln(&["roll", "status", "-l", "pool=coral"]).stdout).into_owned();
        assert!(
            !table.contains("HALTED"),
            "{}: the last roll did not halt: {table}",
            b.name()
        );
    });
}
