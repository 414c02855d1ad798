//! A kubelet stand-in for tests against the real API server, doing for Node objects without a
//! kubelet what the simulator's fake kubelet does: a node reports Ready (with capacity, so the
//! real scheduler places pods on it) once its `sim.kiln.dev/ready-after-ms` has passed since it
//! was created (`never`: it stays NotReady), and keeps its heartbeat fresh; a pod bound to such a
//! node becomes Running and Ready; a pod being deleted is removed once its grace period is over,
//! as a kubelet confirms a terminated pod. Like the simulator, it reports a `bootID` and acts on
//! `sim.kiln.dev/reboot-into` (the machine reboots into that bundle: a new bootID, the bundle label
//! set as kiln-firstboot sets it, Ready unless `ready-after-ms` is `never`). It also records how
//! many pods of each app label were Ready at each look, to check PodDisruptionBudgets were never
//! violated.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

pub struct Agent {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// app label → the number of its pods Ready (and not terminating) at each look, in order.
    pub ready: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

use kiln_kube_sim::{READY_AFTER_ANNOTATION as ANNOTATION, REBOOT_INTO_ANNOTATION};

/// A fresh boot ID, shaped like the kernel's.
fn boot_id() -> String {
    static BOOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BOOTS.fetch_add(1, Ordering::SeqCst);
    let t = Timestamp::now().as_millisecond() as u64;
    format!("a9e7{:04x}-0000-4000-8000-{:012x}", n & 0xffff, t & 0xffff_ffff_ffff)
}

impl Agent {
    /// Start acting as the kubelet of every node in the cluster `kubeconfig` points at.
    pub fn start(kubeconfig: &Path) -> Agent {
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(Mutex::new(BTreeMap::new()));
        let (s, m, kc) = (stop.clone(), ready.clone(), kubeconfig.to_path_buf());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let kc = Kubeconfig::read_from(&kc).unwrap();
                let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .unwrap();
                let client = Client::try_from(config).unwrap();
                while !s.load(Ordering::SeqCst) {
                    if let Err(e) = tick(&client, &m).await {
                        eprintln!("test agent: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        });
        Agent {
            stop,
            thread: Some(thread),
            ready,
        }
    }

    /// Once `app` had `replicas` pods Ready, it never had fewer than `min`.
    pub fn budget_held(&self, app: &str, replicas: usize, min: usize) -> bool {
        let ready = self.ready.lock().unwrap();
        let seen = ready.get(app).map(Vec::as_slice).unwrap_or_default();
        match seen.iter().position(|n| *n >= replicas) {
            Some(full) => seen[full..].iter().all(|n| *n >= min),
            None => false,
        }
    }

    /// `app` has had `replicas` pods Ready at some look.
    pub fn was_full(&self, app: &str, replicas: usize) -> bool {
        let ready = self.ready.lock().unwrap();
        ready.get(app).is_some_and(|v| v.iter().any(|n| *n >= replicas))
    }
}

fn ready_condition(conditions: Option<&Vec<k8s_openapi::api::core::v1::NodeCondition>>) -> Option<Timestamp> {
    conditions?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0))
}

async fn tick(client: &Client, history: &Mutex<BTreeMap<String, Vec<usize>>>) -> kube::Result<()> {
    let now = Timestamp::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut ready_nodes = Vec::new();
    for n in nodes.list(&ListParams::default()).await? {
        let name = n.metadata.name.clone().unwrap_or_default();
        let after = n.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION)).cloned();
        let annotations = n.metadata.annotations.clone().unwrap_or_default();
        if let Some(bundle) = annotations.get(REBOOT_INTO_ANNOTATION) {
            let t = now.to_string();
            let ready = if after.as_deref() == Some("never") {
                "False"
            } else {
                "True"
            };
            let status = json!({"status": {
                "nodeInfo": {"bootID": boot_id()},
                "conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady",
                                "message": "test agent, rebooted", "lastHeartbeatTime": t, "lastTransitionTime": t}],
            }});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
                .await?;
            let meta = json!({"metadata": {
                "labels": {"kiln.dev/bundle-version": bundle},
                "annotations": {REBOOT_INTO_ANNOTATION: null},
            }});
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&meta))
                .await?;
            continue;
        }
        if after.as_deref() == Some("never") {
            continue;
        }
        let after_ms: i64 = after.and_then(|a| a.parse().ok()).unwrap_or(0);
        let created = n.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
        if now.duration_since(created).as_millis() < after_ms as i128 {
            continue;
        }
        ready_nodes.push(name.clone());
        let heartbeat = ready_condition(n.status.as_ref().and_then(|s| s.conditions.as_ref()));
        if heartbeat.is_some_and(|h| now.duration_since(h).as_secs() < 10) {
            continue;
        }
        let t = now.to_string();
        let has_boot = n
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .is_some_and(|i| !i.boot_id.is_empty());
        let mut status = json!({"status": {
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "test agent", "lastHeartbeatTime": t, "lastTransitionTime": t}],
        }});
        if !has_boot {
            // A kubelet reports the boot it runs in from its first status on.
            status["status"]["nodeInfo"] = json!({"bootID": boot_id()});
        }
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
            .await?;
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let mut ready_by_app: BTreeMap<String, usize> = BTreeMap::new();
    for p in pods.list(&ListParams::default()).await? {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if let Some(gone_at) = &p.metadata.deletion_timestamp {
            // deletionTimestamp is when the grace period ends: the kubelet then confirms.
            if now >= gone_at.0 {
                let _ = api.delete(&name, &DeleteParams::default().grace_period(0)).await;
            }
            continue;
        }
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            if let Some(app) = p.metadata.labels.as_ref().and_then(|l| l.get("app")) {
                *ready_by_app.entry(app.clone()).or_default() += 1;
            }
        } else if ready_nodes.contains(&node) {
            let status = json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
                .await?;
        }
    }
    let mut history = history.lock().unwrap();
    let apps: Vec<String> = history.keys().chain(ready_by_app.keys()).cloned().collect();
    for app in apps {
        let n = ready_by_app.get(&app).copied().unwrap_or(0);
        history.entry(app).or_default().push(n);
    }
    Ok(())
}
