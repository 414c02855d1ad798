//! `kubectl kiln roll status`: a pool's roll read from the cluster alone (its Lease and the
//! annotations on its nodes), so an operator sees it from any terminal while it runs as a Job.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use serde::Serialize;

use super::*;
use crate::lease::{self, LeaseView};
use crate::status::BUNDLE_VERSION;

/// The roll of one pool, as the cluster records it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollStatus {
    pub selector: String,
    /// The pool's Lease: the roll holding it, and a pause.
    pub lease: Option<LeaseView>,
    /// The bundle versions nodes are being rolled to (one, unless rolls to several targets were
    /// interrupted).
    pub targets: Vec<String>,
    pub nodes: Vec<NodeRoll>,
}

/// One node of the pool.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoll {
    pub name: String,
    pub bundle: Option<String>,
    pub schedulable: bool,
    /// Its phase in a roll ([`ROLL_PHASE`]); none when no roll has touched it or it is done.
    pub phase: Option<String>,
    pub target: Option<String>,
    /// Seconds since its replacement (in place: its drain) started.
    pub seconds: Option<f64>,
    pub replacement: Option<String>,
    /// Why the roll halted at this node.
    pub message: Option<String>,
    /// While it is being drained: the pods whose eviction a budget holds back, and what the
    /// budget waits for (`default/web-1: waiting for PodDisruptionBudget web: ...`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
}

/// Read the roll of the pool `selector` (its Lease in `lease_namespace`).
pub async fn roll_status(client: &Client, selector: &str, lease_namespace: &str) -> Result<RollStatus> {
    let lease = lease::view(client, lease_namespace, selector).await?;
    let mut nodes: Vec<NodeRoll> = pool(client, selector)
        .await?
        .iter()
        .map(|n| {
            let ann = annotations(n);
            let started = ann
                .get(ROLL_STARTED)
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| Timestamp::now().duration_since(t).as_secs_f64().max(0.0));
            NodeRoll {
                name: name(n),
                bundle: n.metadata.labels.as_ref().and_then(|l| l.get(BUNDLE_VERSION)).cloned(),
                schedulable: !n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
                phase: ann.get(ROLL_PHASE).cloned(),
                target: ann.get(ROLL_TARGET).cloned(),
                seconds: ann.get(ROLL_PHASE).and(started),
                replacement: ann.get(ROLL_REPLACEMENT).cloned(),
                message: ann.get(ROLL_MESSAGE).cloned(),
                waiting: Vec::new(),
            }
        })
        .collect();
    for n in nodes.iter_mut().filter(|n| {
        n.phase.as_deref().is_some_and(|p| {
            [Phase::Draining, Phase::DrainingFirst, Phase::DrainingInPlace]
                .iter()
                .any(|d| d.as_str() == p)
        })
    }) {
        n.waiting = held_back(client, &n.name).await?;
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut targets: Vec<String> = nodes.iter().filter_map(|n| n.target.clone()).collect();
    targets.sort();
    targets.dedup();
    Ok(RollStatus {
        selector: selector.to_string(),
        lease,
        targets,
        nodes,
    })
}

/// The pods on `node` whose eviction a budget holds back, with the budget's verdict.
async fn held_back(client: &Client, node: &str) -> Result<Vec<String>> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    let on = crate::retry(|| pods.list(&lp))
        .await
        .with_context(|| format!("cannot list the pods on node {node}"))?;
    let mut out = Vec::new();
    for p in on.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let pod = crate::plan::PodRef {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
        };
        match crate::drain::pdb_verdict(client, &pod).await {
            Ok(Some(why)) => out.push(format!("{pod}: {why}")),
            Err(never) => out.push(format!("{pod}: {never}")),
            Ok(None) => {}
        }
    }
    Ok(out)
}

impl RollStatus {
    /// The table `kubectl kiln roll status` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "POOL     {}", self.selector);
        let (held, paused, halted) = match &self.lease {
            None => ("none (no roll has run for this pool)".to_string(), None, None),
            Some(l) => (
                match (&l.holder, l.renewed_seconds_ago) {
                    (Some(h), Some(ago)) => format!("{}/{} held by {h} (renewed {ago:.0}s ago)", l.namespace, l.name),
                    _ => format!("{}/{} not held (no roll is running)", l.namespace, l.name),
                },
                l.paused.clone(),
                l.halted.clone(),
            ),
        };
        let _ = writeln!(out, "LEASE    {held}");
        let _ = writeln!(
            out,
            "PAUSED   {}",
            paused.map(|p| format!("yes, by {p}")).unwrap_or_else(|| "no".into())
        );
        if let Some(why) = halted {
            let _ = writeln!(out, "HALTED   {why}");
        }
        let _ = writeln!(
            out,
            "TARGET   {}",
            if self.targets.is_empty() {
                "none".to_string()
            } else {
                self.targets
                    .iter()
                    .map(|t| {
                        let on = self.nodes.iter().filter(|n| n.bundle.as_deref() == Some(t)).count();
                        format!("{t} ({on} of {} nodes on it)", self.nodes.len())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let rows: Vec<[String; 5]> = self
            .nodes
            .iter()
            .map(|n| {
                [
                    n.name.clone(),
                    n.bundle.clone().unwrap_or_else(|| "<none>".into()),
                    match (&n.phase, n.schedulable) {
                        (Some(p), true) => p.clone(),
                        (Some(p), false) => format!("{p},cordoned"),
                        (None, true) => "-".into(),
                        (None, false) => "cordoned".into(),
                    },
                    n.seconds.map(|s| format!("{s:.0}s")).unwrap_or_else(|| "-".into()),
                    n.message
                        .clone()
                        .or_else(|| (!n.waiting.is_empty()).then(|| n.waiting.join("; ")))
                        .or_else(|| n.replacement.as_ref().map(|r| format!("replacement {r}")))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        let head = ["NODE", "BUNDLE", "PHASE", "FOR", "MESSAGE"];
        let width = |i: usize| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        };
        let w: Vec<usize> = (0..4).map(width).collect();
        let line = |r: [&str; 5]| {
            format!(
                "{:<w0$}   {:<w1$}   {:<w2$}   {:<w3$}   {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            )
            .trim_end()
            .to_string()
        };
        let _ = writeln!(out, "{}", line(head));
        for r in &rows {
            let _ = writeln!(out, "{}", line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
        }
        out
    }
}
