//! Planning a drain: a pure function over the node's pods that says which are evicted, which are
//! skipped and why, and which block the drain, with `kubectl drain`'s rules and flags.

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

#[derive(Debug, Clone, Default)]
pub struct DrainOptions {
    pub ignore_daemonsets: bool,
    pub delete_emptydir_data: bool,
    pub force: bool,
    /// Pods whose deletion started more than this many seconds ago are skipped (0 = never).
    pub skip_wait_for_delete_timeout: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub pod: PodRef,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Pods to evict (with a warning, if any).
    pub evict: Vec<Decision>,
    /// Pods left alone, and why.
    pub skipped: Vec<Decision>,
    /// Pods that stop the drain unless a flag allows them.
    pub errors: Vec<Decision>,
}

fn pod_ref(p: &Pod) -> PodRef {
    PodRef {
        namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
    }
}

fn finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Decide every pod's fate; `now` is Unix seconds (for the deletion-timeout skip).
pub fn plan(pods: &[Pod], o: &DrainOptions, now: i64) -> Plan {
    let mut plan = Plan::default();
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| pod_ref(p));
    for p in sorted {
        let r = pod_ref(p);
        let decide = |reason: &str| Decision {
            pod: r.clone(),
            reason: reason.to_string(),
        };
        let meta = &p.metadata;
        if meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
        {
            plan.skipped.push(decide("mirror (static) pod"));
            continue;
        }
        if let Some(ts) = &meta.deletion_timestamp {
            if o.skip_wait_for_delete_timeout > 0 && now - ts.0.as_second() > o.skip_wait_for_delete_timeout {
                plan.skipped.push(decide(
                    "deletion started longer ago than --skip-wait-for-delete-timeout",
                ));
                continue;
            }
        }
        let controller = meta
            .owner_references
            .as_ref()
            .and_then(|o| o.iter().find(|r| r.controller == Some(true)));
        if controller.is_some_and(|c| c.kind == "DaemonSet") {
            if o.ignore_daemonsets {
                plan.skipped.push(decide("DaemonSet-managed"));
            } else {
                plan.errors.push(decide(
                    "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)",
                ));
            }
            continue;
        }
        let mut warnings = Vec::new();
        if controller.is_none() && !finished(p) {
            if o.force {
                warnings.push("deleting Pods that declare no controller");
            } else {
                plan.errors.push(decide(
                    "cannot delete Pods that declare no controller (use --force to override)",
                ));
                continue;
            }
        }
        let local = p
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()));
        if local && !finished(p) {
            if o.delete_emptydir_data {
                warnings.push("deleting Pods with local storage");
            } else {
                plan.errors.push(decide(
                    "cannot delete Pods with local storage (use --delete-emptydir-data to override)",
                ));
                continue;
            }
        }
        plan.evict.push(decide(&warnings.join("; ")));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, extra: serde_json::Value) -> Pod {
        let mut v = json!({"metadata": {"name": name, "namespace": "default", "uid": name}, "spec": {"containers": []}, "status": {"phase": "Running"}});
        merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: &serde_json::Value) {
        if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        } else {
            *a = b.clone();
        }
    }

    fn owned(kind: &str) -> serde_json::Value {
        json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": "x", "uid": "u", "controller": true}]}})
    }

    #[test]
    fn kubectl_rules() {
        let pods = vec![
            pod("ds", owned("DaemonSet")),
            pod(
                "mirror",
                json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "h"}}}),
            ),
            pod("bare", json!({})),
            pod("local", {
                let mut v = owned("ReplicaSet");
                merge(&mut v, &json!({"spec": {"volumes": [{"name": "s", "emptyDir": {}}]}}));
                v
            }),
            pod("web", owned("ReplicaSet")),
            pod("done", json!({"status": {"phase": "Succeeded"}})),
        ];
        let p = plan(&pods, &DrainOptions::default(), 0);
        let names = |d: &[Decision]| d.iter().map(|d| d.pod.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&p.evict), ["done", "web"]);
        assert_eq!(names(&p.skipped), ["mirror"]);
        assert_eq!(names(&p.errors), ["bare", "ds", "local"]);
        assert!(p.errors[1].reason.contains("--ignore-daemonsets"));

        let all = DrainOptions {
            ignore_daemonsets: true,
            delete_emptydir_data: true,
            force: true,
            ..Default::default()
        };
        let p = plan(&pods, &all, 0);
        assert_eq!(names(&p.evict), ["bare", "done", "local", "web"]);
        assert_eq!(names(&p.skipped), ["ds", "mirror"]);
        assert!(p.errors.is_empty());
        assert_eq!(p.evict[0].reason, "deleting Pods that declare no controller");
    }
}
