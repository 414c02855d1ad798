//! `kubectl kiln status`: every node with Ready, schedulable, bundle version and digest (the labels
//! kiln-firstboot sets), container runtime and kubelet versions, boot ID and age; plus the version
//! skew.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

pub use kiln_bundle::layout::labels::{BUNDLE_DIGEST, BUNDLE_VERSION};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    pub ready: bool,
    pub schedulable: bool,
    pub bundle_version: Option<String>,
    pub bundle_digest: Option<String>,
    pub container_runtime: String,
    pub kubelet: String,
    /// `status.nodeInfo.bootID`: the kubelet's report of the machine's current boot; it changes
    /// with every reboot, which is how an in-place roll knows a node came back from one.
    pub boot_id: String,
    pub created: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub nodes: Vec<NodeStatus>,
    pub bundle_versions: Vec<String>,
    pub kubelet_versions: Vec<String>,
}

pub fn node_status(n: &Node) -> NodeStatus {
    let labels = n.metadata.labels.clone().unwrap_or_default();
    let status = n.status.clone().unwrap_or_default();
    let info = status.node_info.clone().unwrap_or_default();
    NodeStatus {
        name: n.metadata.name.clone().unwrap_or_default(),
        ready: status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        schedulable: !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
        bundle_version: labels.get(BUNDLE_VERSION).cloned(),
        bundle_digest: labels.get(BUNDLE_DIGEST).cloned(),
        container_runtime: info.container_runtime_version,
        kubelet: info.kubelet_version,
        boot_id: info.boot_id,
        created: n.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
    }
}

pub async fn status(client: &Client, selector: Option<&str>) -> Result<ClusterStatus> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut lp = ListParams::default();
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    let list = crate::retry(|| nodes.list(&lp)).await.context("cannot list nodes")?;
    let nodes: Vec<NodeStatus> = list.items.iter().map(node_status).collect();
    let bundle_versions: BTreeSet<String> = nodes
        .iter()
        .map(|n| n.bundle_version.clone().unwrap_or_else(|| "<none>".into()))
        .collect();
    let kubelet_versions: BTreeSet<String> = nodes.iter().map(|n| n.kubelet.clone()).collect();
    Ok(ClusterStatus {
        nodes,
        bundle_versions: bundle_versions.into_iter().collect(),
        kubelet_versions: kubelet_versions.into_iter().collect(),
    })
}

/// The table `kubectl kiln status` prints (`wide` adds the digest, boot ID and creation time).
pub fn render(s: &ClusterStatus, wide: bool) -> String {
    let mut rows = vec![{
        let mut h = vec!["NAME", "READY", "SCHEDULABLE", "BUNDLE", "RUNTIME", "KUBELET"];
        if wide {
            h.extend(["DIGEST", "BOOT-ID", "CREATED"]);
        }
        h.into_iter().map(String::from).collect::<Vec<_>>()
    }];
    for n in &s.nodes {
        let mut r = vec![
            n.name.clone(),
            if n.ready { "True" } else { "False" }.into(),
            if n.schedulable { "True" } else { "False" }.into(),
            n.bundle_version.clone().unwrap_or_else(|| "<none>".into()),
            n.container_runtime.clone(),
            n.kubelet.clone(),
        ];
        if wide {
            r.push(n.bundle_digest.clone().unwrap_or_else(|| "<none>".into()));
            r.push(if n.boot_id.is_empty() {
                "<none>".into()
            } else {
                n.boot_id.clone()
            });
            r.push(n.created.clone().unwrap_or_default());
        }
        rows.push(r);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    // Only what differs, and no empty entries (a node without a kubelet version reports "").
    let mut skew = Vec::new();
    for (what, versions) in [("bundles", &s.bundle_versions), ("kubelets", &s.kubelet_versions)] {
        let present: Vec<&str> = versions.iter().map(String::as_str).filter(|v| !v.is_empty()).collect();
        if present.len() > 1 {
            skew.push(format!("{what} {}", present.join(", ")));
        }
    }
    if !skew.is_empty() {
        out.push_str(&format!("\nversion skew: {}\n", skew.join("; ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skew_line_lists_only_what_differs_and_nothing_empty() {
        let node = |b: &str, k: &str| NodeStatus {
            name: "n".into(),
            ready: true,
            schedulable: true,
            bundle_version: Some(b.into()),
            bundle_digest: None,
            container_runtime: String::new(),
            kubelet: k.into(),
            boot_id: String::new(),
            created: None,
        };
        let s = ClusterStatus {
            nodes: vec![node("1", "v1.32.13"), node("1", "")],
            bundle_versions: vec!["1".into()],
            kubelet_versions: vec!["".into(), "v1.32.13".into()],
        };
        assert!(!render(&s, false).contains("version skew"), "{}", render(&s, false));
        let s = ClusterStatus {
            bundle_versions: vec!["1".into(), "2".into()],
            ..s
        };
        assert!(
            render(&s, false).ends_with("\nversion skew: bundles 1, 2\n"),
            "{}",
            render(&s, false)
        );
    }
}
