//! What the controllers and kubelets do over time: graceful deletion, ReplicaSet recreation and
//! scheduling, node registration and readiness.

use serde_json::{json, Value};

use crate::*;

impl State {
    pub(crate) fn begin_delete(&mut self, ns: &str, name: &str, grace: Option<i64>) -> Option<Value> {
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
    pub(crate) fn tick(&mut self) -> bool {
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
    pub(crate) fn recreate(&mut self, gone: &Value) {
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
    pub(crate) fn schedule(&mut self) -> bool {
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

    /// A fresh `bootID`, shaped like the kernel's `/proc/sys/kernel/random/boot_id`.
    pub(crate) fn next_boot_id(&mut self) -> String {
        self.boots += 1;
        format!("5b1e0000-0000-4000-8000-{:012x}", self.boots)
    }

    /// The machine behind `node` reboots into `bundle` (see [`REBOOT_INTO_ANNOTATION`]).
    pub(crate) fn reboot(&mut self, node: &mut Value, bundle: &str) {
        let name = node["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if let Some(a) = node["metadata"]["annotations"].as_object_mut() {
            a.remove(REBOOT_INTO_ANNOTATION);
        }
        node["metadata"]["labels"]["kiln.dev/bundle-version"] = json!(bundle);
        node["status"]["nodeInfo"]["bootID"] = json!(self.next_boot_id());
        node["status"]["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "container runtime is starting", "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()}]);
        let after = match node["metadata"]["annotations"][READY_AFTER_ANNOTATION].as_str() {
            Some("never") => None,
            Some(ms) => ms.parse().ok().map(Duration::from_millis),
            None => Some(self.kubelet_ready_after),
        };
        // A Ready report still due from an earlier boot no longer applies.
        self.becoming_ready.retain(|(_, r)| *r != Ready::Node(name.clone()));
        if let Some(after) = after {
            self.becoming_ready.push((Instant::now() + after, Ready::Node(name)));
        }
    }

    pub(crate) fn count_cordoned(&mut self) {
        let cordoned = self
            .nodes
            .values()
            .filter(|n| n["spec"]["unschedulable"] == json!(true))
            .count();
        self.max_cordoned = self.max_cordoned.max(cordoned);
    }

    /// `POST /api/v1/nodes`, as a kubelet registers its node: NotReady until its kubelet reports
    /// Ready (after `kubelet_ready_after`, or the node's own `sim.kiln.dev/ready-after-ms`).
    pub(crate) fn register_node(&mut self, body: &[u8]) -> (u16, Value) {
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
            "nodeInfo": {"kubeletVersion": "v1.36.4", "containerRuntimeVersion": "containerd://2.3.4", "kubeProxyVersion": "", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.1.0", "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": self.next_boot_id()},
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
    pub(crate) fn delete_node(&mut self, name: &str) -> (u16, Value) {
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
