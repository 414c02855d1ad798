//! Where a roll keeps its progress: annotations on the nodes, and the phase of each replacement.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;

/// On an old node: the bundle version the roll replacing it moves to.
pub const ROLL_TARGET: &str = "kiln.dev/roll-target";
/// On an old node: how far its replacement got ([`Phase`]).
pub const ROLL_PHASE: &str = "kiln.dev/roll-phase";
/// On an old node: when provisioning its replacement started (RFC 3339).
pub const ROLL_STARTED: &str = "kiln.dev/roll-started";
/// On an old node: the node claimed as its replacement.
pub const ROLL_REPLACEMENT: &str = "kiln.dev/roll-replacement";
/// On a node rolled in place: its `status.nodeInfo.bootID` before the drain. The node is back only
/// after a boot with another ID.
pub const ROLL_BOOT_ID: &str = "kiln.dev/roll-boot-id";
/// On an old node whose roll halted: why.
pub const ROLL_MESSAGE: &str = "kiln.dev/roll-message";
/// On a replacement node: the old node it replaces, until that one is decommissioned.
pub const REPLACES: &str = "kiln.dev/replaces";

/// How far the replacement of one old node got, as stored in [`ROLL_PHASE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The provision command was started (it may run again on resume: it must be idempotent).
    Provisioning,
    /// The provision command succeeded; waiting for the new node.
    Provisioned,
    /// Drained before its replacement exists (a `--max-unavailable` slot).
    DrainingFirst,
    /// The replacement is Ready; draining the old node.
    Draining,
    /// In place: its boot ID is recorded; cordoning and draining it.
    DrainingInPlace,
    /// In place: drained; the reprovision command was started (it may run again on resume, unless
    /// the node is already back: it must be idempotent).
    Reprovisioning,
    /// In place: the reprovision command succeeded; waiting for the node to come back.
    Reprovisioned,
    /// The roll stopped at this node; see [`ROLL_MESSAGE`].
    Halted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Provisioning => "provisioning",
            Phase::Provisioned => "provisioned",
            Phase::DrainingFirst => "draining-first",
            Phase::Draining => "draining",
            Phase::DrainingInPlace => "draining-in-place",
            Phase::Reprovisioning => "reprovisioning",
            Phase::Reprovisioned => "reprovisioned",
            Phase::Halted => "halted",
        }
    }

    /// A phase of an in-place roll (the node keeps its name), not of a surge roll.
    pub fn in_place(self) -> bool {
        matches!(
            self,
            Phase::DrainingInPlace | Phase::Reprovisioning | Phase::Reprovisioned
        )
    }

    pub fn parse(s: &str) -> Option<Phase> {
        [
            Phase::Provisioning,
            Phase::Provisioned,
            Phase::DrainingFirst,
            Phase::Draining,
            Phase::DrainingInPlace,
            Phase::Reprovisioning,
            Phase::Reprovisioned,
            Phase::Halted,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

pub(crate) fn annotations(n: &Node) -> BTreeMap<String, String> {
    n.metadata.annotations.clone().unwrap_or_default()
}

pub(crate) fn name(n: &Node) -> String {
    n.metadata.name.clone().unwrap_or_default()
}

/// Set (`Some`) or remove (`None`) annotations on a node.
pub async fn annotate(client: &Client, node: &str, set: &[(&str, Option<&str>)]) -> Result<()> {
    let map: serde_json::Map<String, serde_json::Value> = set.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let api = Api::<Node>::all(client.clone());
    let patch = Patch::Merge(json!({"metadata": {"annotations": map}}));
    let pp = PatchParams::default();
    crate::retry(|| api.patch(node, &pp, &patch))
        .await
        .with_context(|| format!("cannot annotate node {node}"))?;
    Ok(())
}

pub(crate) async fn delete_node(client: &Client, node: &str) -> Result<()> {
    let api = Api::<Node>::all(client.clone());
    let dp = DeleteParams::default();
    match crate::retry(|| api.delete(node, &dp)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot delete node {node}")),
    }
}

/// Now, to the second (as the API server stamps creationTimestamp).
pub(crate) fn rfc3339_now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}
