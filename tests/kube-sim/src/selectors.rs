//! Label and field selectors, and readiness, as the API server and controllers read them.

use serde_json::Value;

pub(crate) fn labels_match(obj: &Value, selector: &str) -> bool {
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

pub(crate) fn fields_match(obj: &Value, selector: &str) -> bool {
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

pub(crate) fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

pub(crate) fn node_ready(n: &Value) -> bool {
    n["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}
