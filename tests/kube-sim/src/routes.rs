//! The API's routes: each request answered from the store, in the API server's shapes.

use serde_json::{json, Value};

use crate::*;

pub(crate) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

pub(crate) fn list(kind: &str, items: Vec<Value>, rv: u64) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

pub(crate) fn api_resources(group_version: &str, resources: Value) -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

/// A meta.k8s.io/v1 Table of nodes, with the columns and STATUS text kube-apiserver prints.
pub(crate) fn node_table(nodes: &[Value]) -> Value {
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

pub(crate) fn wants_table(req: &Request) -> bool {
    req.headers.get("accept").is_some_and(|a| a.contains("as=Table"))
}

/// JSON merge patch (RFC 7386).
pub(crate) fn merge(target: &mut Value, patch: &Value) {
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

pub(crate) fn route(s: &mut State, req: &Request) -> (u16, Value) {
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
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group("apps"), group("policy"), group("events.k8s.io")]}),
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
            if let Some(bundle) = n["metadata"]["annotations"][REBOOT_INTO_ANNOTATION].as_str() {
                let bundle = bundle.to_string();
                s.reboot(&mut n, &bundle);
            }
            s.bump("Node", "MODIFIED", &mut n);
            s.nodes.insert(name.to_string(), n.clone());
            s.count_cordoned();
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
        ("GET", ["apis", "events.k8s.io", "v1"]) => (
            200,
            api_resources(
                "events.k8s.io/v1",
                json!([{"name": "events", "singularName": "event", "namespaced": true, "kind": "Event", "verbs": ["create", "get", "list", "patch"], "shortNames": ["ev"]}]),
            ),
        ),
        ("GET", ["apis", "events.k8s.io", "v1", "events"]) => {
            let items = s.k8s_events.values().cloned().collect();
            (200, event_list(items, s.rv))
        }
        ("GET", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => {
            let items = s
                .k8s_events
                .iter()
                .filter(|((n, _), _)| n == ns)
                .map(|(_, e)| e.clone())
                .collect();
            (200, event_list(items, s.rv))
        }
        ("POST", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => {
            let Ok(mut e) = serde_json::from_slice::<Value>(&req.body) else {
                return (400, status(400, "BadRequest", "the event is not JSON"));
            };
            let name = e["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if name.is_empty() || e["eventTime"].is_null() || e["reportingController"].is_null() {
                // What the API server's validation insists on for events.k8s.io/v1.
                return (
                    422,
                    status(
                        422,
                        "Invalid",
                        "Event is invalid: name, eventTime and reportingController are required",
                    ),
                );
            }
            let key = (ns.to_string(), name.clone());
            if s.k8s_events.contains_key(&key) {
                return (
                    409,
                    status(
                        409,
                        "AlreadyExists",
                        &format!("events.events.k8s.io \"{name}\" already exists"),
                    ),
                );
            }
            s.rv += 1;
            e["apiVersion"] = json!("events.k8s.io/v1");
            e["kind"] = json!("Event");
            e["metadata"]["namespace"] = json!(ns);
            e["metadata"]["uid"] = json!(format!("uid-event-{ns}-{name}"));
            e["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            e["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            s.k8s_events.insert(key, e.clone());
            (201, e)
        }
        ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", name]) => {
            let Ok(patch) = serde_json::from_slice::<Value>(&req.body) else {
                return (400, status(400, "BadRequest", "the patch is not JSON"));
            };
            let key = (ns.to_string(), name.to_string());
            let Some(e) = s.k8s_events.get_mut(&key) else {
                return (
                    404,
                    status(404, "NotFound", &format!("events.events.k8s.io \"{name}\" not found")),
                );
            };
            merge(e, &patch);
            s.rv += 1;
            e["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            (200, e.clone())
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

fn event_list(items: Vec<Value>, rv: u64) -> Value {
    json!({"apiVersion": "events.k8s.io/v1", "kind": "EventList", "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

pub(crate) fn lease_not_found(name: &str) -> Value {
    status(
        404,
        "NotFound",
        &format!("leases.coordination.k8s.io \"{name}\" not found"),
    )
}
