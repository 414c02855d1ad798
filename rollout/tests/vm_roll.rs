//! `kubectl kiln roll` across booted VMs, against the real control plane (`just e2e`): two nodes
//! booted from bundle A (kubelet v1.32 and containerd 2.3.4 from `../shared/k8s/` or
//! `KILN_K8S_BIN`) run a Deployment spread over both with a PodDisruptionBudget; a roll to bundle B
//! provisions each replacement as a new QEMU VM (`kiln-vm provision`, a fresh NoCloud seed), waits
//! until it is Ready on B (the label set by its own kubelet), drains and deletes the old Node and
//! stops the old VM (`kiln-vm decommission`). Checked: the PDB is never violated, the pods run
//! again on the new nodes (real scheduler), `kubectl kiln status` shows only B, every old VM is
//! gone; then a roll to a bundle whose kubelet cannot start halts with the nodes untouched.
//! Guests get `-netdev user,restrict=on` with one `guestfwd` to the API server on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_testkit::cluster::{self, Cluster};
use kiln_testkit::k8s;
use kiln_testkit::qemu::GUEST_API;

const POOL: &str = "kiln.dev/pool=vmroll";
const A: &str = "1.32.13-1";
const B: &str = "1.32.13-2";
const BAD: &str = "1.32.13-bad";

fn sibling(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_kubectl-kiln")).with_file_name(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Build bundle `version` (extra manifest config in `config`) and its raw image as
/// `images/<version>.raw`.
fn bundle_and_image(dir: &Path, version: &str, config: &str, firstboot: &Path) {
    let manifest = k8s::node_manifest(&dir.join(format!("src-{version}")), "kiln-node", version, config, false);
    let out = dir.join("bundles");
    run(Command::new(sibling("kiln"))
        .args(["build"])
        .arg(&manifest)
        .arg("-o")
        .arg(&out)
        .env("KILN_CACHE", dir.join("cache")));
    let bundle = out.join(format!("kiln-node-{version}-amd64.kiln.tar.zst"));
    let work = dir.join(format!("img-{version}"));
    run(Command::new(sibling("kiln"))
        .arg("image")
        .arg(kiln_testkit::workspace_root().join("images/debian-12.yaml"))
        .arg("--bundle")
        .arg(&bundle)
        .arg("-o")
        .arg(&work)
        .args(["--format", "raw", "--firstboot"])
        .arg(firstboot)
        .env(
            "KILN_CACHE",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kiln-image-cache"),
        ));
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::rename(
        work.join(format!("debian-12-kiln-node-{version}.raw")),
        dir.join("images").join(format!("{version}.raw")),
    )
    .unwrap();
}

/// Stops every VM of the test by PID, whatever happens.
struct Machines {
    state: PathBuf,
}

impl Drop for Machines {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.state).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(node) = name.strip_suffix(".pid") {
                let _ = Command::new(sibling("kiln-vm"))
                    .args(["decommission", "--name", node, "--state"])
                    .arg(&self.state)
                    .output();
            }
        }
    }
}

fn json(out: Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ready_nodes(c: &Cluster) -> Vec<(String, String)> {
    let nodes = json(c.kubectl(&["get", "nodes", "-l", POOL, "-o", "json"]));
    nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                n["metadata"]["labels"]["kiln.dev/bundle-version"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// Ready pods of the web Deployment and the nodes they run on.
fn web_pods(c: &Cluster) -> Vec<String> {
    let out = c.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let pods: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 2
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: web}
      containers:
      - name: web
        image: docker.io/kiln/busybox:e2e
        imagePullPolicy: Never
        command: ["/bin/busybox", "sleep", "100000"]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  namespace: default
spec:
  minAvailable: 1
  selector:
    matchLabels: {app: web}
"#;

#[test]
fn roll_replaces_booted_vms_and_halts_on_a_kubelet_that_cannot_start() {
    let tmp = tempfile::Builder::new()
        .prefix("kiln-vm-roll-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path();
    let c = Cluster::start(&dir.join("cluster"), &cluster::Options::for_guests());
    let firstboot = dir.join("kiln-firstboot");
    run(Command::new("strip")
        .arg("-o")
        .arg(&firstboot)
        .arg(sibling("kiln-firstboot")));
    bundle_and_image(dir, A, "", &firstboot);
    bundle_and_image(dir, B, "", &firstboot);
    // kubelet exits on a flag it cannot parse: never Ready. (An unknown feature gate would not
    // do: this kubelet only warns about one.)
    bundle_and_image(
        dir,
        BAD,
        "  config:\n    kubelet:\n      flags:\n        v: not-a-number\n",
        &firstboot,
    );

    let ca: String = c.ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    let template = dir.join("user-data");
    std::fs::write(
        &template,
        format!(
            "#cloud-config\nhostname: {{name}}\nkiln:\n  apiServer: https://{GUEST_API}\n  clusterCA: |\n{ca}  bootstrapToken: {}\n  nodeIP: 10.0.2.15\n  clusterDNS: 10.96.0.10\n  labels:\n    kiln.dev/pool: vmroll\n",
            c.bootstrap_token
        ),
    )
    .unwrap();
    let state = dir.join("machines");
    let _machines = Machines { state: state.clone() };
    let provision = format!(
        "{} provision --images {} --state {} --user-data {} --api-port {}",
        sibling("kiln-vm").display(),
        dir.join("images").display(),
        state.display(),
        template.display(),
        c.api_port
    );
    let decommission = format!(
        "{} decommission --state {}",
        sibling("kiln-vm").display(),
        state.display()
    );

    // Two nodes on A.
    for name in ["vm-a-1", "vm-a-2"] {
        let words = shlex::split(&provision).unwrap();
        run(Command::new(&words[0])
            .args(&words[1..])
            .args(["--name", name, "--bundle", A]));
    }
    wait("two nodes Ready on A", Duration::from_secs(900), || {
        ready_nodes(&c).iter().filter(|(_, v)| v == A).count() == 2
    });
    c.apply(WEB);
    wait("two web pods Ready on two nodes", Duration::from_secs(300), || {
        let mut nodes = web_pods(&c);
        nodes.sort();
        nodes.dedup();
        nodes.len() == 2
    });

    // Watch the PDB's promise while the roll runs.
    let stop = Arc::new(AtomicBool::new(false));
    let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
    let watcher = watch_budget(&c, stop.clone(), min_ready.clone());
    let started = Instant::now();
    let roll = Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .arg("--kubeconfig")
        .arg(&c.admin_kubeconfig)
        .args(["roll", "-l", POOL, "--to-bundle", B, "--provision-cmd", &provision])
        .args(["--decommission-cmd", &decommission])
        .args([
            "--max-surge",
            "1",
            "--ready-timeout",
            "15m",
            "--ignore-daemonsets",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let roll_s = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(
        roll.status.success(),
        "the roll failed:\n{}\n{}",
        String::from_utf8_lossy(&roll.stdout),
        String::from_utf8_lossy(&roll.stderr)
    );
    assert!(
        min_ready.load(Ordering::Relaxed) >= 1,
        "the PDB (minAvailable 1) was violated: {} healthy at one point",
        min_ready.load(Ordering::Relaxed)
    );
    let nodes = ready_nodes(&c);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(
        nodes.iter().all(|(n, v)| v == B && n != "vm-a-1" && n != "vm-a-2"),
        "{nodes:?}"
    );
    let all = json(c.kubectl(&["get", "nodes", "-o", "json"]));
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"vm-a-1") && !names.contains(&"vm-a-2"),
        "old Nodes deleted: {names:?}"
    );
    for old in ["vm-a-1", "vm-a-2"] {
        assert!(!state.join(format!("{old}.pid")).exists(), "{old}'s VM was stopped");
    }
    wait(
        "the pods running again on the new nodes",
        Duration::from_secs(300),
        || {
            let pods = web_pods(&c);
            pods.len() == 2 && pods.iter().all(|n| nodes.iter().any(|(m, _)| m == n))
        },
    );
    let status: serde_json::Value = serde_json::from_str(&run(Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .arg("--kubeconfig")
        .arg(&c.admin_kubeconfig)
        .args(["status", "-l", POOL, "-o", "json"])))
    .unwrap();
    let text = status.to_string();
    assert!(text.contains(B) && !text.contains(&format!("\"{A}\"")), "{status}");

    // A bundle whose kubelet cannot start: the roll halts, the nodes on B stay as they are.
    let before = ready_nodes(&c);
    let halted = Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .arg("--kubeconfig")
        .arg(&c.admin_kubeconfig)
        .args(["roll", "-l", POOL, "--to-bundle", BAD, "--provision-cmd", &provision])
        .args(["--decommission-cmd", &decommission])
        .args(["--max-surge", "1", "--ready-timeout", "3m", "--ignore-daemonsets"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&halted.stdout);
    let err = String::from_utf8_lossy(&halted.stderr);
    assert!(!halted.status.success(), "{out}");
    assert!(out.contains("roll HALTED"), "{out}");
    assert!(
        err.contains(&format!("no replacement became Ready on bundle {BAD}")),
        "{err}"
    );
    assert_eq!(ready_nodes(&c), before, "the nodes on B are untouched");
    let nodes = json(c.kubectl(&["get", "nodes", "-l", POOL, "-o", "json"]));
    for n in nodes["items"].as_array().unwrap() {
        assert!(
            n["spec"]["unschedulable"].is_null(),
            "{} stays schedulable",
            n["metadata"]["name"]
        );
    }
    assert_eq!(web_pods(&c).len(), 2, "the pods were not evicted");
    // The replacement that never became Ready is left for its operator; stop it here.
    let on_b: Vec<String> = before.iter().map(|(n, _)| n.clone()).collect();
    for e in std::fs::read_dir(&state).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(vm) = name.strip_suffix(".pid").filter(|vm| !on_b.iter().any(|n| n == vm)) {
            run(Command::new(sibling("kiln-vm"))
                .args(["decommission", "--name", vm, "--state"])
                .arg(&state));
        }
    }

    // In place, back to A: the same machines reimaged under their own names.
    let reimage = format!(
        "{} reimage --images {} --state {} --user-data {} --api-port {}",
        sibling("kiln-vm").display(),
        dir.join("images").display(),
        state.display(),
        template.display(),
        c.api_port
    );
    let (p, q) = (on_b[0].clone(), on_b[1].clone());
    let boots_before = [boot_id(&c, &p), boot_id(&c, &q)];

    // The floor, by hand as an operator does it: drain, reimage, wait for the node back Ready on
    // A after a new boot, uncordon.
    let started = Instant::now();
    let drained = c.kubectl(&[
        "drain",
        &p,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout",
        "5m",
    ]);
    assert!(drained.status.success(), "{}", String::from_utf8_lossy(&drained.stderr));
    let words = shlex::split(&reimage).unwrap();
    run(Command::new(&words[0])
        .args(&words[1..])
        .args(["--name", &p, "--bundle", A]));
    wait(
        &format!("{p} back Ready on A after a new boot"),
        Duration::from_secs(900),
        || boot_id(&c, &p) != boots_before[0] && ready_nodes(&c).contains(&(p.clone(), A.to_string())),
    );
    let uncordoned = c.kubectl(&["uncordon", &p]);
    assert!(
        uncordoned.status.success(),
        "{}",
        String::from_utf8_lossy(&uncordoned.stderr)
    );
    let by_hand_s = started.elapsed().as_secs_f64();
    wait("two web pods Ready on two nodes", Duration::from_secs(300), || {
        let mut nodes = web_pods(&c);
        nodes.sort();
        nodes.dedup();
        nodes.len() == 2
    });

    // kiln: the pool rolled in place to A; p is there already, q is reimaged by the roll.
    let stop = Arc::new(AtomicBool::new(false));
    let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
    let watcher = watch_budget(&c, stop.clone(), min_ready.clone());
    let roll = Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .arg("--kubeconfig")
        .arg(&c.admin_kubeconfig)
        .args([
            "roll",
            "-l",
            POOL,
            "--to-bundle",
            A,
            "--in-place",
            "--reprovision-cmd",
            &reimage,
        ])
        .args(["--ready-timeout", "15m", "--ignore-daemonsets", "-o", "json"])
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert!(
        roll.status.success(),
        "the in-place roll failed:\n{}\n{}",
        String::from_utf8_lossy(&roll.stdout),
        String::from_utf8_lossy(&roll.stderr)
    );
    assert!(
        min_ready.load(Ordering::Relaxed) >= 1,
        "the PDB (minAvailable 1) was violated in place: {} healthy at one point",
        min_ready.load(Ordering::Relaxed)
    );
    let report: serde_json::Value = serde_json::from_slice(&roll.stdout).unwrap();
    let outcomes = report["nodes"].as_array().expect("the roll's JSON lists its nodes");
    let of = |n: &str| {
        outcomes
            .iter()
            .find(|o| o["node"] == n)
            .unwrap_or_else(|| panic!("{n} in {report}"))
    };
    assert_eq!(of(&p)["result"], "at-target", "{report}");
    assert_eq!(of(&q)["result"], "reprovisioned", "{report}");
    let kiln_s = of(&q)["seconds"].as_f64().unwrap();
    let status: serde_json::Value = serde_json::from_str(&run(Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .arg("--kubeconfig")
        .arg(&c.admin_kubeconfig)
        .args(["status", "-l", POOL, "-o", "json"])))
    .unwrap();
    assert_eq!(status["bundleVersions"], serde_json::json!([A]), "{status}");
    let listed = status["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{status}");
    for (name, old) in [(&p, &boots_before[0]), (&q, &boots_before[1])] {
        let node = listed
            .iter()
            .find(|n| n["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} kept its name: {status}"));
        assert_eq!(node["schedulable"], true, "{node}");
        assert_ne!(node["bootId"], old.as_str(), "{name} booted again: {node}");
        assert_eq!(node["bootId"], boot_id(&c, name).as_str(), "{node}");
    }
    assert_eq!(of(&q)["bootId"], boot_id(&c, &q).as_str(), "{report}");
    wait("the pods running again on both nodes", Duration::from_secs(300), || {
        let mut nodes = web_pods(&c);
        nodes.sort();
        nodes.dedup();
        nodes.len() == 2
    });

    // In place to a bundle whose kubelet cannot start: the first node never comes back, the roll
    // halts, that node stays cordoned with the reason, the other is untouched.
    let boots_a = [boot_id(&c, &p), boot_id(&c, &q)];
    let halted = Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
        .arg("--kubeconfig")
        .arg(&c.admin_kubeconfig)
        .args([
            "roll",
            "-l",
            POOL,
            "--to-bundle",
            BAD,
            "--in-place",
            "--reprovision-cmd",
            &reimage,
        ])
        .args(["--ready-timeout", "2m", "--ignore-daemonsets"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&halted.stdout);
    assert_eq!(
        halted.status.code(),
        Some(1),
        "{out}{}",
        String::from_utf8_lossy(&halted.stderr)
    );
    assert!(
        out.contains(&format!(
            "roll HALTED: {p}: {p} did not come back Ready on bundle {BAD} after a new boot within 120s"
        )) && out.contains(&format!("no new boot since the drain (bootID {})", boots_a[0])),
        "{out}"
    );
    let node = json(c.kubectl(&["get", "node", &p, "-o", "json"]));
    assert_eq!(node["spec"]["unschedulable"], true, "{p} stays cordoned: {node}");
    let notes = &node["metadata"]["annotations"];
    assert_eq!(notes["kiln.dev/roll-phase"], "halted", "{notes}");
    assert!(
        notes["kiln.dev/roll-message"]
            .as_str()
            .unwrap_or_default()
            .contains("no new boot since the drain"),
        "{notes}"
    );
    let other = json(c.kubectl(&["get", "node", &q, "-o", "json"]));
    assert!(other["spec"]["unschedulable"].is_null(), "{q} untouched: {other}");
    assert_eq!(other["metadata"]["labels"]["kiln.dev/bundle-version"], A, "{other}");
    assert_eq!(boot_id(&c, &q), boots_a[1], "{q} was not rebooted");
    assert!(!web_pods(&c).is_empty(), "a web pod still runs on {q}");

    println!("vm-roll: roll of 2 booted nodes A -> B (surge 1)   {roll_s:.1} s");
    println!(
        "vm-roll: one node in place B -> A: kiln {kiln_s:.1} s, by hand (drain, reimage, Ready, uncordon) {by_hand_s:.1} s, ratio {:.2}",
        kiln_s / by_hand_s
    );
}

/// The bootID the Node `name` reports.
fn boot_id(c: &Cluster, name: &str) -> String {
    json(c.kubectl(&["get", "node", name, "-o", "json"]))["status"]["nodeInfo"]["bootID"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Record the fewest healthy pods the web budget counts until `stop`.
fn watch_budget(c: &Cluster, stop: Arc<AtomicBool>, min_ready: Arc<AtomicUsize>) -> std::thread::JoinHandle<()> {
    let kubeconfig = c.admin_kubeconfig.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let out = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "pdb", "web", "-o", "jsonpath={.status.currentHealthy}"])
                .output()
                .unwrap();
            if let Ok(n) = String::from_utf8_lossy(&out.stdout).trim().parse::<usize>() {
                min_ready.fetch_min(n, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    })
}
