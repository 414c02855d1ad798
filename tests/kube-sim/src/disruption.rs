//! PodDisruptionBudgets and the eviction subresource, as the disruption controller accounts them.

use serde_json::{json, Value};

use crate::*;

impl State {
    /// PDB status as the disruption controller computes it: healthy pods are matching, Ready and not
    /// terminating; allowed = healthy - minAvailable, or maxUnavailable - (expected - healthy).
    pub(crate) fn pdb_allowed(&self, pdb: &Value) -> (i64, i64, i64) {
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

    pub(crate) fn pdbs_for(&self, pod: &Value) -> Vec<Value> {
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

    pub(crate) fn with_pdb_status(&self, pdb: &Value) -> Value {
        let (allowed, healthy, expected) = self.pdb_allowed(pdb);
        let mut p = pdb.clone();
        let desired = pdb["spec"]["minAvailable"]
            .as_i64()
            .unwrap_or_else(|| expected - pdb["spec"]["maxUnavailable"].as_i64().unwrap_or(0));
        p["status"] = json!({"disruptionsAllowed": allowed, "currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected, "observedGeneration": 1});
        p
    }
}

pub(crate) fn evict(s: &mut State, ns: &str, name: &str, body: &[u8]) -> (u16, Value) {
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
