//! A Kubernetes API simulator for kiln's tests: an HTTP server on 127.0.0.1 serving the parts of
//! the API that `kubectl drain`, `kubectl cordon`, `kubectl get nodes` and `kubectl kiln` use:
//! discovery, nodes, pods (list by field and label selector, get, graceful delete, watch), the
//! `pods/eviction` subresource with PodDisruptionBudget accounting as the disruption controller does
//! it, DaemonSets and ReplicaSets for owner references, and fault injection. Every eviction is
//! recorded; [`Sim::violations`] lists any PDB that was ever violated and any DaemonSet or mirror pod
//! that was evicted.

mod http;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use http::{chunk, read_request, respond, start_chunked, Request};

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

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim().trim_end_matches('=')].as_str() == Some(v.trim().trim_start_matches('='))
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k.trim()).is_none()
        } else {
            labels.get(term.trim()).is_some()
        }
    })
}

fn fields_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v, neg) = match term.split_once("!=") {
            Some((k, v)) => (k, v, true),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, false),
                None => return true,
            },
        };
        let actual = match k.trim() {
            "spec.nodeName" => obj["spec"]["nodeName"].as_str().unwrap_or(""),
            "metadata.name" => obj["metadata"]["name"].as_str().unwrap_or(""),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str().unwrap_or(""),
            "status.phase" => obj["status"]["phase"].as_str().unwrap_or(""),
            _ => return true,
        };
        (actual == v.trim()) != neg
    })
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

impl State {
    /// Store a pod, keeping the by-node index.
    fn put_pod(&mut self, key: (String, String), pod: Value) {
        if let Some(old) = self.pods.get(&key).and_then(|p| p["spec"]["nodeName"].as_str()) {
            if let Some(set) = self.pods_by_node.get_mut(old) {
                set.remove(&key);
            }
        }
        if let Some(node) = pod["spec"]["nodeName"].as_str() {
            self.pods_by_node
                .entry(node.to_string())
                .or_default()
                .insert(key.clone());
        }
        self.pods.insert(key, pod);
    }

    fn take_pod(&mut self, key: &(String, String)) -> Option<Value> {
        let pod = self.pods.remove(key)?;
        if let Some(set) = pod["spec"]["nodeName"]
            .as_str()
            .and_then(|n| self.pods_by_node.get_mut(n))
        {
            set.remove(key);
        }
        Some(pod)
    }

    /// The pods a list asks for, through the by-node index when the field selector is one node.
    fn list_pods(&self, ns: Option<&str>, label: &str, field: &str) -> Vec<Value> {
        let keep = |p: &Value| labels_match(p, label) && fields_match(p, field);
        let in_ns = |k: &(String, String)| ns.is_none_or(|n| k.0 == n);
        match field
            .strip_prefix("spec.nodeName=")
            .filter(|n| !n.contains(',') && !n.starts_with('='))
        {
            Some(node) => self
                .pods_by_node
                .get(node)
                .into_iter()
                .flatten()
                .filter(|k| in_ns(k))
                .filter_map(|k| self.pods.get(k))
                .filter(|p| keep(p))
                .cloned()
                .collect(),
            None => self
                .pods
                .iter()
                .filter(|(k, p)| in_ns(k) && keep(p))
                .map(|(_, p)| p.clone())
                .collect(),
        }
    }

    fn bump(&mut self, kind: &'static str, ty: &'static str, obj: &mut Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.events.push((self.rv, kind, ty, obj.clone()));
        // A watch whose connection is gone has dropped its receiver: forget it.
        self.watchers
            .retain(|w| !w.wants(kind, obj) || w.tx.send(json!({"type": ty, "object": obj})).is_ok());
    }

    /// PDB status as the disruption controller computes it: healthy pods are matching, Ready and not
    /// terminating; allowed = healthy - minAvailable, or maxUnavailable - (expected - healthy).
    fn pdb_allowed(&self, pdb: &Value) -> (i64, i64, i64) {
        let ns = pdb["metadata"]["namespace"].as_str().unwrap_or("default");
        let sel = &pdb["spec"]["selector"]["matchLabels"];
        let matching: Vec<&Value> = self
            .pods
            .iter()
            .filter(|((pns, _), p)| {
                pns == ns
                    && sel
                        .as_object()
                        .is_some_and(|m| m.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v))
            })
            .map(|(_, p)| p)
            .collect();
        let expected = matching.len() as i64;
        let healthy = matching
            .iter()
            .filter(|p| is_ready(p) && p["metadata"]["deletionTimestamp"].is_null())
            .count() as i64;
        let allowed = if let Some(min) = pdb["spec"]["minAvailable"].as_i64() {
            healthy - min
        } else if let Some(max) = pdb["spec"]["maxUnavailable"].as_i64() {
            max - (expected - healthy)
        } else {
            healthy
        };
        (allowed.max(0), healthy, expected)
    }

    fn pdbs_for(&self, pod: &Value) -> Vec<Value> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        self.pdbs
            .iter()
            .filter(|((pns, _), pdb)| {
                pns == ns
                    && pdb["spec"]["selector"]["matchLabels"]
                        .as_object()
                        .is_some_and(|m| m.iter().all(|(k, v)| pod["metadata"]["labels"][k] == *v))
            })
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn with_pdb_status(&self, pdb: &Value) -> Value {
        let (allowed, healthy, expected) = self.pdb_allowed(pdb);
        let mut p = pdb.clone();
        let desired = pdb["spec"]["minAvailable"]
            .as_i64()
            .unwrap_or_else(|| expected - pdb["spec"]["maxUnavailable"].as_i64().unwrap_or(0));
        p["status"] = json!({"disruptionsAllowed": allowed, "currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected, "observedGeneration": 1});
        p
    }

    fn begin_delete(&mut self, ns: &str, name: &str, grace: Option<i64>) -> Option<Value> {
        let key = (ns.to_string(), name.to_string());
        let mut pod = self.pods.get(&key)?.clone();
        if pod["metadata"]["deletionTimestamp"].is_null() {
            let g = grace
                .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
                .max(0);
            pod["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            pod["metadata"]["deletionGracePeriodSeconds"] = json!(g);
            self.terminating
                .insert(key.clone(), Instant::now() + Duration::from_millis((g as u64) * 1000));
            self.bump("Pod", "MODIFIED", &mut pod);
            self.put_pod(key, pod.clone());
        }
        Some(pod)
    }

    /// The controllers' work, run every few milliseconds: remove pods whose grace period has passed
    /// (recreating ReplicaSet pods when the controller runs), report Ready what is due, and schedule
    /// pending pods. True when anything changed.
    fn tick(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<(String, String)> = self
            .terminating
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = !due.is_empty();
        for k in &due {
            self.terminating.remove(k);
            if let Some(mut p) = self.take_pod(k) {
                self.bump("Pod", "DELETED", &mut p);
                if self.replicaset_start.is_some() && p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet" {
                    self.recreate(&p);
                }
            }
        }
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.becoming_ready)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.becoming_ready = later;
        for (_, r) in ready {
            changed = true;
            match r {
                Ready::Node(name) => {
                    if let Some(mut n) = self.nodes.get(&name).cloned() {
                        n["status"]["conditions"] = json!([{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}]);
                        self.bump("Node", "MODIFIED", &mut n);
                        self.nodes.insert(name, n);
                    }
                }
                Ready::Pod(ns, name) => {
                    let key = (ns, name);
                    if let Some(mut p) = self.pods.get(&key).cloned() {
                        p["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
                        self.bump("Pod", "MODIFIED", &mut p);
                        self.put_pod(key, p);
                    }
                }
            }
        }
        changed | self.schedule()
    }

    /// The ReplicaSet controller: a new pod like `gone`, not yet scheduled or Ready.
    fn recreate(&mut self, gone: &Value) {
        self.generation += 1;
        let ns = gone["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let rs = gone["metadata"]["ownerReferences"][0]["name"].as_str().unwrap_or("rs");
        let name = format!("{rs}-g{}", self.generation);
        let mut pod = gone.clone();
        pod["metadata"] = json!({"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
            "labels": gone["metadata"]["labels"], "ownerReferences": gone["metadata"]["ownerReferences"],
            "creationTimestamp": now_rfc3339()});
        pod["spec"]["nodeName"] = Value::Null;
        pod["status"] = json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]});
        self.bump("Pod", "ADDED", &mut pod);
        self.put_pod((ns, name), pod);
    }

    /// The scheduler: bind each pending pod to the schedulable Ready node with the fewest pods.
    fn schedule(&mut self) -> bool {
        let Some(start) = self.replicaset_start else {
            return false;
        };
        let pending: Vec<(String, String)> = self
            .pods
            .iter()
            .filter(|(_, p)| p["spec"]["nodeName"].is_null())
            .map(|(k, _)| k.clone())
            .collect();
        if pending.is_empty() {
            return false;
        }
        // Pods per schedulable Ready node, counted once and kept as pods are placed.
        let mut load: BTreeMap<String, usize> = self
            .nodes
            .iter()
            .filter(|(_, n)| n["spec"]["unschedulable"] != true && node_ready(n))
            .map(|(name, _)| (name.clone(), 0))
            .collect();
        for p in self.pods.values() {
            if let Some(c) = p["spec"]["nodeName"].as_str().and_then(|n| load.get_mut(n)) {
                *c += 1;
            }
        }
        let mut changed = false;
        for key in pending {
            let Some(node) = load.iter().min_by_key(|(n, c)| (**c, *n)).map(|(n, _)| n.clone()) else {
                break;
            };
            *load.get_mut(&node).expect("a counted node") += 1;
            let mut p = self.pods[&key].clone();
            p["spec"]["nodeName"] = json!(node);
            p["status"]["phase"] = json!("Running");
            self.bump("Pod", "MODIFIED", &mut p);
            self.put_pod(key.clone(), p);
            self.becoming_ready
                .push((Instant::now() + start, Ready::Pod(key.0, key.1)));
            changed = true;
        }
        changed
    }

    /// `POST /api/v1/nodes`, as a kubelet registers its node: NotReady until its kubelet reports
    /// Ready (after `kubelet_ready_after`, or the node's own `sim.kiln.dev/ready-after-ms`).
    fn register_node(&mut self, body: &[u8]) -> (u16, Value) {
        let Ok(mut node) = serde_json::from_slice::<Value>(body) else {
            return (400, status(400, "BadRequest", "the body is not a JSON Node"));
        };
        let Some(name) = node["metadata"]["name"].as_str().map(String::from) else {
            return (
                422,
                status(422, "Invalid", "Node \"\" is invalid: metadata.name: Required value"),
            );
        };
        if self.nodes.contains_key(&name) {
            return (
                409,
                status(409, "AlreadyExists", &format!("nodes \"{name}\" already exists")),
            );
        }
        let ready_after = match node["metadata"]["annotations"][READY_AFTER_ANNOTATION].as_str() {
            Some("never") => None,
            Some(ms) => ms.parse().ok().map(Duration::from_millis),
            None => Some(self.kubelet_ready_after),
        };
        node["metadata"]["uid"] = json!(format!("uid-node-{name}"));
        node["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        if node["spec"].is_null() {
            node["spec"] = json!({});
        }
        node["status"] = json!({
            "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "container runtime network not ready", "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}],
            "nodeInfo": {"kubeletVersion": "v1.36.4", "containerRuntimeVersion": "containerd://2.3.4", "kubeProxyVersion": "", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0", "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": ""},
            "addresses": [{"type": "Hostname", "address": name}]
        });
        if let Some(after) = ready_after {
            self.becoming_ready
                .push((Instant::now() + after, Ready::Node(name.clone())));
        }
        self.bump("Node", "ADDED", &mut node);
        self.nodes.insert(name, node.clone());
        self.max_nodes = self.max_nodes.max(self.nodes.len());
        (201, node)
    }

    /// `DELETE /api/v1/nodes/NAME`; the pod garbage collector then removes the pods bound to it.
    fn delete_node(&mut self, name: &str) -> (u16, Value) {
        let Some(mut n) = self.nodes.remove(name) else {
            return (404, status(404, "NotFound", &format!("nodes \"{name}\" not found")));
        };
        self.bump("Node", "DELETED", &mut n);
        let orphans: Vec<(String, String)> = self
            .pods
            .iter()
            .filter(|(_, p)| p["spec"]["nodeName"] == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in orphans {
            self.terminating.remove(&k);
            if let Some(mut p) = self.take_pod(&k) {
                self.bump("Pod", "DELETED", &mut p);
            }
        }
        (200, status(200, "", "deleted"))
    }
}

fn node_ready(n: &Value) -> bool {
    n["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
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

fn serve(conn: TcpStream, state: &Arc<Mutex<State>>, stop: &AtomicBool) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut w = conn;
    while let Some(req) = read_request(&mut reader) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (latency, fail) = {
            let mut s = state.lock().unwrap();
            s.requests += 1;
            (
                s.faults.latency,
                s.faults.error_every > 0 && s.requests % s.faults.error_every == 0,
            )
        };
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        if fail && !req.query.contains_key("watch") {
            let body = status(500, "InternalError", "injected fault").to_string();
            state
                .lock()
                .unwrap()
                .log
                .push(format!("{} {} -> 500", req.method, req.path));
            if respond(&mut w, 500, body.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        if req.query.get("watch").is_some_and(|v| v == "1" || v == "true") {
            watch(&mut w, &req, state, stop);
            return;
        }
        let (code, body) = {
            let mut s = state.lock().unwrap();
            let r = route(&mut s, &req);
            s.log.push(format!("{} {} -> {}", req.method, req.path, r.0));
            r
        };
        if respond(&mut w, code, body.to_string().as_bytes()).is_err() {
            return;
        }
    }
}

fn watch(w: &mut TcpStream, req: &Request, state: &Arc<Mutex<State>>, stop: &AtomicBool) {
    let kind = if req.path.ends_with("/nodes") { "Node" } else { "Pod" };
    let field = req.query.get("fieldSelector").cloned().unwrap_or_default();
    let label = req.query.get("labelSelector").cloned().unwrap_or_default();
    let since: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = std::sync::mpsc::channel();
    let drop_after = {
        let mut s = state.lock().unwrap();
        let watcher = Watcher { kind, label, field, tx };
        // From a resourceVersion: the events after it first (in order), then every new one.
        if since > 0 {
            let first = s.events.partition_point(|(rv, ..)| *rv <= since);
            for (_, k, ty, o) in &s.events[first..] {
                if watcher.wants(k, o) {
                    let _ = watcher.tx.send(json!({"type": ty, "object": o}));
                }
            }
        }
        s.watchers.push(watcher);
        s.faults.drop_watch_after
    };
    if start_chunked(w).is_err() {
        return;
    }
    let started = Instant::now();
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(300));
    loop {
        if stop.load(Ordering::SeqCst)
            || started.elapsed() > timeout
            || drop_after.is_some_and(|d| started.elapsed() > d)
        {
            let _ = chunk(w, b"");
            return;
        }
        let ev = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut line = ev.to_string().into_bytes();
        line.push(b'\n');
        if chunk(w, &line).is_err() {
            return;
        }
    }
}

fn list(kind: &str, items: Vec<Value>, rv: u64) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

fn api_resources(group_version: &str, resources: Value) -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// A meta.k8s.io/v1 Table of nodes, with the columns and STATUS text kube-apiserver prints.
fn node_table(nodes: &[Value]) -> Value {
    let rows: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let ready = n["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).map(|c| c["status"] == "True");
            let mut status = match ready {
                Some(true) => "Ready".to_string(),
                Some(false) => "NotReady".to_string(),
                None => "Unknown".to_string(),
            };
            if n["spec"]["unschedulable"] == true {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = n["metadata"]["labels"]
                .as_object()
                .map(|l| l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(String::from)).collect())
                .unwrap_or_default();
            let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
            let ip = n["status"]["addresses"].as_array().and_then(|a| a.iter().find(|a| a["type"] == "InternalIP")).map(|a| a["address"].clone()).unwrap_or(json!("<none>"));
            let info = &n["status"]["nodeInfo"];
            json!({"cells": [n["metadata"]["name"], status, roles, "1m", info["kubeletVersion"], ip, "<none>", info["osImage"], info["kernelVersion"], info["containerRuntimeVersion"]],
                   "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": n["metadata"]}})
        })
        .collect();
    let col = |name: &str, priority: i64| json!({"name": name, "type": "string", "format": "", "description": "", "priority": priority});
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1"},
           "columnDefinitions": [col("Name", 0), col("Status", 0), col("Roles", 0), col("Age", 0), col("Version", 0), col("Internal-IP", 1), col("External-IP", 1), col("OS-Image", 1), col("Kernel-Version", 1), col("Container-Runtime", 1)],
           "rows": rows})
}

fn wants_table(req: &Request) -> bool {
    req.headers.get("accept").is_some_and(|a| a.contains("as=Table"))
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn route(s: &mut State, req: &Request) -> (u16, Value) {
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let m = req.method.as_str();
    let label = req.query.get("labelSelector").cloned().unwrap_or_default();
    let field = req.query.get("fieldSelector").cloned().unwrap_or_default();
    match (m, parts.as_slice()) {
        ("GET", ["version"]) => (
            200,
            json!({"major": "1", "minor": "36", "gitVersion": "v1.36.4", "platform": "linux/amd64"}),
        ),
        ("GET", ["api"]) => (
            200,
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        ),
        ("GET", ["apis"]) => {
            let group = |name: &str| json!({"name": name, "versions": [{"groupVersion": format!("{name}/v1"), "version": "v1"}], "preferredVersion": {"groupVersion": format!("{name}/v1"), "version": "v1"}});
            (
                200,
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group("apps"), group("policy")]}),
            )
        }
        ("GET", ["api", "v1"]) => (
            200,
            api_resources(
                "v1",
                json!([
                    {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node", "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["no"]},
                    {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["delete", "get", "list", "patch", "watch"], "shortNames": ["po"]},
                    {"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]},
                    {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": ["get", "list"]}
                ]),
            ),
        ),
        ("GET", ["apis", "policy", "v1"]) => (
            200,
            api_resources(
                "policy/v1",
                json!([{"name": "poddisruptionbudgets", "singularName": "poddisruptionbudget", "namespaced": true, "kind": "PodDisruptionBudget", "verbs": ["get", "list"], "shortNames": ["pdb"]}]),
            ),
        ),
        ("GET", ["apis", "apps", "v1"]) => (
            200,
            api_resources(
                "apps/v1",
                json!([
                    {"name": "daemonsets", "singularName": "daemonset", "namespaced": true, "kind": "DaemonSet", "verbs": ["get", "list"]},
                    {"name": "replicasets", "singularName": "replicaset", "namespaced": true, "kind": "ReplicaSet", "verbs": ["get", "list"]}
                ]),
            ),
        ),
        ("GET", ["api", "v1", "nodes"]) => {
            let items: Vec<Value> = s
                .nodes
                .values()
                .filter(|n| labels_match(n, &label) && fields_match(n, &field))
                .cloned()
                .collect();
            if wants_table(req) {
                (200, node_table(&items))
            } else {
                (200, list("Node", items, s.rv))
            }
        }
        ("GET", ["api", "v1", "nodes", name]) => match s.nodes.get(*name) {
            Some(n) if wants_table(req) => (200, node_table(std::slice::from_ref(n))),
            Some(n) => (200, n.clone()),
            None => (404, status(404, "NotFound", &format!("nodes \"{name}\" not found"))),
        },
        ("PATCH", ["api", "v1", "nodes", name]) => {
            let Ok(patch) = serde_json::from_slice::<Value>(&req.body) else {
                return (422, status(422, "Invalid", "the patch is not JSON"));
            };
            let Some(mut n) = s.nodes.get(*name).cloned() else {
                return (404, status(404, "NotFound", &format!("nodes \"{name}\" not found")));
            };
            merge(&mut n, &patch);
            s.bump("Node", "MODIFIED", &mut n);
            s.nodes.insert(name.to_string(), n.clone());
            (200, n)
        }
        ("POST", ["api", "v1", "nodes"]) => s.register_node(&req.body),
        ("DELETE", ["api", "v1", "nodes", name]) => s.delete_node(name),
        ("GET", ["api", "v1", "pods"]) => (200, list("Pod", s.list_pods(None, &label, &field), s.rv)),
        ("GET", ["api", "v1", "namespaces", ns, "pods"]) => {
            (200, list("Pod", s.list_pods(Some(ns), &label, &field), s.rv))
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => match s.pods.get(&(ns.to_string(), name.to_string()))
        {
            Some(p) => (200, p.clone()),
            None => (404, status(404, "NotFound", &format!("pods \"{name}\" not found"))),
        },
        ("DELETE", ["api", "v1", "namespaces", ns, "pods", name]) => {
            let grace = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|b| b["gracePeriodSeconds"].as_i64())
                .or_else(|| req.query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
            match s.begin_delete(ns, name, grace) {
                Some(p) => (200, p),
                None => (404, status(404, "NotFound", &format!("pods \"{name}\" not found"))),
            }
        }
        ("POST", ["api", "v1", "namespaces", ns, "pods", name, "eviction"]) => evict(s, ns, name, &req.body),
        ("GET", ["apis", "policy", "v1", "poddisruptionbudgets"]) => {
            let items = s.pdbs.values().map(|p| s.with_pdb_status(p)).collect();
            (200, list("PodDisruptionBudget", items, s.rv))
        }
        ("GET", ["apis", "policy", "v1", "namespaces", ns, "poddisruptionbudgets"]) => {
            let items = s
                .pdbs
                .iter()
                .filter(|((pns, _), _)| pns == ns)
                .map(|(_, p)| s.with_pdb_status(p))
                .collect();
            (200, list("PodDisruptionBudget", items, s.rv))
        }
        ("GET", ["apis", "apps", "v1", "namespaces", ns, "daemonsets", name]) => {
            match s.daemonsets.get(&(ns.to_string(), name.to_string())) {
                Some(d) => (200, d.clone()),
                None => (
                    404,
                    status(404, "NotFound", &format!("daemonsets.apps \"{name}\" not found")),
                ),
            }
        }
        ("GET", ["apis", "apps", "v1", "namespaces", ns, "replicasets", name]) => {
            match s.replicasets.get(&(ns.to_string(), name.to_string())) {
                Some(d) => (200, d.clone()),
                None => (
                    404,
                    status(404, "NotFound", &format!("replicasets.apps \"{name}\" not found")),
                ),
            }
        }
        ("GET", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
            match s.leases.get(&(ns.to_string(), name.to_string())) {
                Some(l) => (200, l.clone()),
                None => (404, lease_not_found(name)),
            }
        }
        ("POST", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases"]) => {
            let Ok(mut l) = serde_json::from_slice::<Value>(&req.body) else {
                return (400, status(400, "BadRequest", "the lease is not JSON"));
            };
            let name = l["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let key = (ns.to_string(), name.clone());
            if s.leases.contains_key(&key) {
                let msg = format!("leases.coordination.k8s.io \"{name}\" already exists");
                return (409, status(409, "AlreadyExists", &msg));
            }
            s.rv += 1;
            l["metadata"]["namespace"] = json!(ns);
            l["metadata"]["uid"] = json!(format!("uid-lease-{ns}-{name}"));
            l["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            l["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            s.leases.insert(key, l.clone());
            (201, l)
        }
        ("PUT", ["apis", "coordination.k8s.io", "v1", "namespaces", ns, "leases", name]) => {
            let Ok(mut l) = serde_json::from_slice::<Value>(&req.body) else {
                return (400, status(400, "BadRequest", "the lease is not JSON"));
            };
            let key = (ns.to_string(), name.to_string());
            let Some(current) = s.leases.get(&key) else {
                return (404, lease_not_found(name));
            };
            // Optimistic concurrency, as the API server does it: a write must name the version it read.
            if l["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                let msg = format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again");
                return (409, status(409, "Conflict", &msg));
            }
            s.rv += 1;
            l["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            s.leases.insert(key, l.clone());
            (200, l)
        }
        _ => (
            404,
            status(
                404,
                "NotFound",
                &format!(
                    "the server could not find the requested resource ({} {})",
                    req.method, req.path
                ),
            ),
        ),
    }
}

fn lease_not_found(name: &str) -> Value {
    status(
        404,
        "NotFound",
        &format!("leases.coordination.k8s.io \"{name}\" not found"),
    )
}

fn evict(s: &mut State, ns: &str, name: &str, body: &[u8]) -> (u16, Value) {
    s.eviction_requests += 1;
    let key = (ns.to_string(), name.to_string());
    let Some(pod) = s.pods.get(&key).cloned() else {
        return (404, status(404, "NotFound", &format!("pods \"{name}\" not found")));
    };
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
    let record = |s: &mut State, outcome: &str| {
        s.evictions.push(Eviction {
            namespace: ns.into(),
            pod: name.into(),
            node: node.clone(),
            outcome: outcome.into(),
        })
    };
    if s.faults.throttle_every > 0 && s.eviction_requests % s.faults.throttle_every == 0 {
        record(s, "blocked");
        return (429, status(429, "TooManyRequests", "injected: too many requests"));
    }
    // A pod already being deleted, or not running (Pending, Succeeded, Failed), is evicted without
    // PDB accounting, as the API server does (its eviction REST's canIgnorePDB; found next to the
    // real server: a drain of pods no kubelet ever started ignores their budget).
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    let ignores_pdb =
        !pod["metadata"]["deletionTimestamp"].is_null() || matches!(phase, "Pending" | "Succeeded" | "Failed");
    if !ignores_pdb {
        for pdb in s.pdbs_for(&pod) {
            let (allowed, _, _) = s.pdb_allowed(&pdb);
            if allowed == 0 {
                record(s, "blocked");
                let pname = pdb["metadata"]["name"].as_str().unwrap_or("");
                let mut st = status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
                st["details"] = json!({"causes": [{"reason": "DisruptionBudget", "message": format!("The disruption budget {pname} needs {} healthy pods and has {} currently", pdb["spec"]["minAvailable"].as_i64().unwrap_or(0), s.pdb_allowed(&pdb).1)}]});
                return (429, st);
            }
        }
        // Invariants: DaemonSet and mirror pods must never be evicted by a drain.
        let owner = pod["metadata"]["ownerReferences"][0]["kind"].as_str().unwrap_or("");
        if owner == "DaemonSet" {
            s.violations.push(format!("DaemonSet pod {ns}/{name} was evicted"));
        }
        if !pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
            s.violations.push(format!("mirror pod {ns}/{name} was evicted"));
        }
    }
    let grace = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|b| b["deleteOptions"]["gracePeriodSeconds"].as_i64());
    s.begin_delete(ns, name, grace);
    record(s, "evicted");
    // After the eviction, every PDB must still hold.
    for pdb in s.pdbs.values() {
        let (_, healthy, expected) = s.pdb_allowed(pdb);
        if let Some(min) = pdb["spec"]["minAvailable"].as_i64() {
            if healthy < min {
                s.violations.push(format!(
                    "PDB {} violated: {healthy} healthy < minAvailable {min}",
                    pdb["metadata"]["name"]
                ));
            }
        }
        if let Some(max) = pdb["spec"]["maxUnavailable"].as_i64() {
            if expected - healthy > max {
                s.violations.push(format!(
                    "PDB {} violated: {} unavailable > maxUnavailable {max}",
                    pdb["metadata"]["name"],
                    expected - healthy
                ));
            }
        }
    }
    (201, status(201, "", "evicted"))
}
