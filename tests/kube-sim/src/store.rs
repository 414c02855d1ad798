//! The object store: pods indexed by node, resource versions and watch events.

use serde_json::{json, Value};

use crate::*;

impl State {
    /// Store a pod, keeping the by-node index.
    pub(crate) fn put_pod(&mut self, key: (String, String), pod: Value) {
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

    pub(crate) fn take_pod(&mut self, key: &(String, String)) -> Option<Value> {
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
    pub(crate) fn list_pods(&self, ns: Option<&str>, label: &str, field: &str) -> Vec<Value> {
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

    pub(crate) fn bump(&mut self, kind: &'static str, ty: &'static str, obj: &mut Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.events.push((self.rv, kind, ty, obj.clone()));
        // A watch whose connection is gone has dropped its receiver: forget it.
        self.watchers
            .retain(|w| !w.wants(kind, obj) || w.tx.send(json!({"type": ty, "object": obj})).is_ok());
    }
}
