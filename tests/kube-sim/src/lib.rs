//! A Kubernetes API simulator for kiln's tests: an HTTP server on 127.0.0.1 serving the parts of
//! the API that `kubectl drain`, `kubectl cordon`, `kubectl get nodes` and `kubectl kiln` use:
//! discovery, nodes, pods (list by field and label selector, get, graceful delete, watch), the
//! `pods/eviction` subresource with PodDisruptionBudget accounting as the disruption controller does
//! it, DaemonSets and ReplicaSets for owner references, and fault injection. Every eviction is
//! recorded; [`Sim::violations`] lists any PDB that was ever violated and any DaemonSet or mirror pod
//! that was evicted.

mod controllers;
mod disruption;
mod http;
mod routes;
mod selectors;
mod server;
mod store;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use disruption::*;
use http::{chunk, read_request, respond, start_chunked, Request};
use routes::*;
use selectors::*;
use server::*;

/// Injected failures.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Added to every response.
    pub latency: Duration,
    /// Every Nth request (1-based count) answers 500; 0 = never.
    pub error_every: u64,
    /// Every Nth eviction answers 429 regardless of PDBs; 0 = never.
    pub throttle_every: u64,
    /// Watches are closed after this long (clients must re-watch).
    pub drop_watch_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    /// `evicted` or `blocked` (429).
    pub outcome: String,
}

#[derive(Default)]
struct State {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    /// The pods on each node, as `spec.nodeName` says: lists of one node's pods at fleet scale.
    pods_by_node: BTreeMap<String, std::collections::BTreeSet<(String, String)>>,
    pdbs: BTreeMap<(String, String), Value>,
    daemonsets: BTreeMap<(String, String), Value>,
    replicasets: BTreeMap<(String, String), Value>,
    leases: BTreeMap<(String, String), Value>,
    /// `events.k8s.io/v1` Events, by namespace and name.
    k8s_events: BTreeMap<(String, String), Value>,
    /// (resourceVersion, kind, type, object) for watches.
    events: Vec<(u64, &'static str, &'static str, Value)>,
    /// Open watches: each gets the events that match it, and only those wake it.
    watchers: Vec<Watcher>,
    /// Pods being deleted: when their grace period ends.
    terminating: BTreeMap<(String, String), Instant>,
    evictions: Vec<Eviction>,
    violations: Vec<String>,
    requests: u64,
    eviction_requests: u64,
    faults: Faults,
    log: Vec<String>,
    /// How long a node registered through the API (`POST /api/v1/nodes`, as a kubelet does) stays
    /// NotReady before its simulated kubelet reports Ready.
    kubelet_ready_after: Duration,
    /// Nodes and pods that become Ready at a given time.
    becoming_ready: Vec<(Instant, Ready)>,
    /// When set, a ReplicaSet controller and scheduler run: a ReplicaSet pod that is gone is recreated
    /// on a schedulable Ready node and becomes Ready after this long.
    replicaset_start: Option<Duration>,
    /// Names handed to recreated pods.
    generation: u64,
    /// The most nodes there ever were at once.
    max_nodes: usize,
    /// The most nodes cordoned at once.
    max_cordoned: usize,
    /// Boots so far, for fresh bootIDs.
    boots: u64,
}

struct Watcher {
    kind: &'static str,
    label: String,
    field: String,
    tx: std::sync::mpsc::Sender<Value>,
}

impl Watcher {
    fn wants(&self, kind: &str, obj: &Value) -> bool {
        kind == self.kind && labels_match(obj, &self.label) && fields_match(obj, &self.field)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ready {
    Node(String),
    Pod(String, String),
}

/// Annotation on a Node created through the API: milliseconds until its kubelet reports Ready, or
/// `never`.
pub const READY_AFTER_ANNOTATION: &str = "sim.kiln.dev/ready-after-ms";

/// Annotation a test's reprovision command sets on a Node to reboot its machine into a bundle: the
/// simulated kubelet goes NotReady, comes back with a new `status.nodeInfo.bootID` and the
/// `kiln.dev/bundle-version` label set to the annotation's value (as kiln-firstboot relabels its
/// Node), and reports Ready after the node's `sim.kiln.dev/ready-after-ms` (default
/// [`Sim::set_kubelet_ready_after`]). The annotation is removed once acted on.
pub const REBOOT_INTO_ANNOTATION: &str = "sim.kiln.dev/reboot-into";

pub struct Sim {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

fn now_rfc3339() -> String {
    kiln_bundle::time::rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

impl Sim {
    /// Start the simulator on 127.0.0.1 (a free port).
    pub fn start() -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            kubelet_ready_after: Duration::from_millis(500),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let _ = c.set_nodelay(true);
                    let s = s.clone();
                    let st = st.clone();
                    std::thread::spawn(move || serve(c, &s, &st));
                }
            }
        });
        // The reaper ends graceful deletions on time (its events reach the watches that want them).
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                s.lock().unwrap().tick();
            }
        });
        Sim { addr, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this simulator.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\ncurrent-context: sim\nusers:\n- name: sim\n  user:\n    token: sim\n",
            self.url()
        )
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.with(|s| s.faults = faults);
    }

    /// Add a Ready node with the given labels and kubelet/runtime versions.
    pub fn add_node(&self, name: &str, labels: &[(&str, &str)], kubelet: &str, runtime: &str) {
        let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let mut node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": format!("uid-node-{name}"), "labels": labels, "creationTimestamp": now_rfc3339()},
            "spec": {},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}],
                "nodeInfo": {"kubeletVersion": kubelet, "containerRuntimeVersion": runtime, "kubeProxyVersion": "", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0", "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": ""},
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": name}]
            }
        });
        self.with(|s| {
            node["status"]["nodeInfo"]["bootID"] = json!(s.next_boot_id());
            s.bump("Node", "ADDED", &mut node);
            s.nodes.insert(name.to_string(), node);
            s.max_nodes = s.max_nodes.max(s.nodes.len());
        });
    }

    /// How long a node registered through the API stays NotReady (default 500 ms).
    pub fn set_kubelet_ready_after(&self, after: Duration) {
        self.with(|s| s.kubelet_ready_after = after);
    }

    /// Run a ReplicaSet controller and scheduler: ReplicaSet pods that are gone come back on a
    /// schedulable Ready node and are Ready after `start`.
    pub fn run_replicaset_controller(&self, start: Duration) {
        self.with(|s| s.replicaset_start = Some(start));
    }

    /// The most nodes there ever were at once.
    pub fn max_nodes(&self) -> usize {
        self.with(|s| s.max_nodes)
    }

    /// The most nodes there ever were cordoned (`spec.unschedulable`) at once.
    pub fn max_cordoned(&self) -> usize {
        self.with(|s| s.max_cordoned)
    }

    /// Node names, sorted.
    pub fn nodes(&self) -> Vec<String> {
        self.with(|s| s.nodes.keys().cloned().collect())
    }

    /// Pods, as `namespace/name`, with no node yet.
    pub fn pending_pods(&self) -> Vec<String> {
        self.with(|s| {
            s.pods
                .iter()
                .filter(|(_, p)| p["spec"]["nodeName"].is_null())
                .map(|((ns, n), _)| format!("{ns}/{n}"))
                .collect()
        })
    }

    pub fn set_node_ready(&self, name: &str, ready: bool) {
        self.with(|s| {
            if let Some(mut n) = s.nodes.get(name).cloned() {
                n["status"]["conditions"][0]["status"] = json!(if ready { "True" } else { "False" });
                s.bump("Node", "MODIFIED", &mut n);
                s.nodes.insert(name.to_string(), n);
            }
        });
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.with(|s| s.nodes.get(name).cloned())
    }

    /// Add a Running, Ready pod. `owner` is `("DaemonSet"|"ReplicaSet", name)`; `mirror` marks a static
    /// pod; `empty_dir` gives it an emptyDir volume; `grace` is its termination grace period.
    #[allow(clippy::too_many_arguments)]
    pub fn add_pod(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
        owner: Option<(&str, &str)>,
        mirror: bool,
        empty_dir: bool,
        grace: i64,
    ) {
        let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let mut meta = json!({"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "labels": labels, "creationTimestamp": now_rfc3339()});
        if let Some((kind, oname)) = owner {
            let api = "apps/v1";
            meta["ownerReferences"] = json!([{"apiVersion": api, "kind": kind, "name": oname, "uid": format!("uid-{kind}-{oname}"), "controller": true}]);
        }
        if mirror {
            meta["annotations"] = json!({"kubernetes.io/config.mirror": "hash", "kubernetes.io/config.source": "file"});
        }
        let volumes = if empty_dir {
            json!([{"name": "scratch", "emptyDir": {}}])
        } else {
            json!([])
        };
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}], "volumes": volumes, "terminationGracePeriodSeconds": grace},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        self.with(|s| {
            if let Some((kind, oname)) = owner {
                let obj = json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": oname, "namespace": ns, "uid": format!("uid-{kind}-{oname}")}, "spec": {}, "status": {}});
                let key = (ns.to_string(), oname.to_string());
                if kind == "DaemonSet" {
                    s.daemonsets.insert(key, obj);
                } else {
                    s.replicasets.insert(key, obj);
                }
            }
            s.bump("Pod", "ADDED", &mut pod);
            s.put_pod((ns.to_string(), name.to_string()), pod);
        });
    }

    /// A Running, Ready pod of ReplicaSet `app`, labelled `app=<app>`.
    pub fn add_rs_pod(&self, ns: &str, name: &str, node: &str, app: &str, grace: i64) {
        self.add_pod(
            ns,
            name,
            node,
            &[("app", app)],
            Some(("ReplicaSet", app)),
            false,
            false,
            grace,
        );
    }

    /// A Running, Ready pod of DaemonSet `app`, labelled `app=<app>`.
    pub fn add_ds_pod(&self, ns: &str, name: &str, node: &str, app: &str, grace: i64) {
        self.add_pod(
            ns,
            name,
            node,
            &[("app", app)],
            Some(("DaemonSet", app)),
            false,
            false,
            grace,
        );
    }

    /// A PodDisruptionBudget on `matchLabels` with `minAvailable` or `maxUnavailable`.
    pub fn add_pdb(
        &self,
        ns: &str,
        name: &str,
        match_labels: &[(&str, &str)],
        min_available: Option<i64>,
        max_unavailable: Option<i64>,
    ) {
        let ml: serde_json::Map<String, Value> = match_labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let mut spec = json!({"selector": {"matchLabels": ml}});
        if let Some(m) = min_available {
            spec["minAvailable"] = json!(m);
        }
        if let Some(m) = max_unavailable {
            spec["maxUnavailable"] = json!(m);
        }
        let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "namespace": ns, "uid": format!("uid-pdb-{name}")}, "spec": spec});
        self.with(|s| {
            s.pdbs.insert((ns.to_string(), name.to_string()), pdb);
        });
    }

    /// Set a pod's phase (and its Ready condition: only Running pods are Ready).
    pub fn set_pod_phase(&self, ns: &str, name: &str, phase: &str) {
        self.with(|s| {
            if let Some(p) = s.pods.get_mut(&(ns.to_string(), name.to_string())) {
                p["status"] = json!({"phase": phase, "conditions": [{"type": "Ready", "status": if phase == "Running" { "True" } else { "False" }}]});
            }
        });
    }

    /// Restart every container of pod `ns/name` once, as a kubelet reports a crashed container
    /// that it started again (`restartCount` one higher).
    pub fn restart_containers(&self, ns: &str, name: &str) {
        self.with(|s| {
            if let Some(p) = s.pods.get_mut(&(ns.to_string(), name.to_string())) {
                let before = p["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0);
                p["status"]["containerStatuses"] = json!([{"name": "c", "image": "busybox", "imageID": "", "ready": true, "restartCount": before + 1}]);
            }
        });
    }

    /// The Lease `ns/name`, if there is one.
    pub fn lease(&self, ns: &str, name: &str) -> Option<Value> {
        self.with(|s| s.leases.get(&(ns.to_string(), name.to_string())).cloned())
    }

    /// Store a Lease as another client would have written it.
    pub fn put_lease(&self, ns: &str, lease: Value) {
        self.with(|s| {
            s.rv += 1;
            let mut lease = lease;
            let name = lease["metadata"]["name"].as_str().unwrap_or_default().to_string();
            lease["metadata"]["namespace"] = json!(ns);
            lease["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            s.leases.insert((ns.to_string(), name), lease);
        })
    }

    /// Every `events.k8s.io/v1` Event written so far.
    pub fn k8s_events(&self) -> Vec<Value> {
        self.with(|s| s.k8s_events.values().cloned().collect())
    }

    /// Every request the API answered so far (watches count once, when they start).
    pub fn requests(&self) -> u64 {
        self.with(|s| s.requests)
    }

    pub fn pods_on(&self, node: &str) -> Vec<String> {
        self.with(|s| {
            s.pods
                .iter()
                .filter(|(_, p)| p["spec"]["nodeName"] == node)
                .map(|((ns, n), _)| format!("{ns}/{n}"))
                .collect()
        })
    }

    pub fn evictions(&self) -> Vec<Eviction> {
        self.with(|s| s.evictions.clone())
    }

    /// Every invariant broken so far: a PDB violated by an eviction, a DaemonSet or mirror pod evicted.
    pub fn violations(&self) -> Vec<String> {
        self.with(|s| s.violations.clone())
    }

    /// Requests served, as `METHOD path -> status`.
    pub fn log(&self) -> Vec<String> {
        self.with(|s| s.log.clone())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}
