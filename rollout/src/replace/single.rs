//! `replace OLD --with NEW`: one old node swapped for a given new one.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::Serialize;

use super::*;
use crate::drain::{self, DrainArgs};
use crate::events::{self, Kind};
use crate::status::BUNDLE_VERSION;
use crate::watch::{wait_for, Mirror};

/// Why `n` is not yet a usable replacement (`None`: it is): Ready, schedulable and running `bundle`
/// (any kiln bundle when `None`).
pub fn unfit(n: &Node, bundle: Option<&str>) -> Option<String> {
    let s = crate::status::node_status(n);
    let mut why = Vec::new();
    if !s.schedulable {
        why.push("cordoned".to_string());
    }
    why.extend(not_running(&s, bundle));
    (!why.is_empty()).then(|| why.join(", "))
}

/// Why a node rolled in place is not back yet (`None`: it is): it booted again since the drain
/// (its boot ID is not `boot_before`), is Ready and runs `bundle`. It is still cordoned: the roll
/// uncordons it.
pub fn not_back(n: &Node, bundle: &str, boot_before: &str) -> Option<String> {
    let s = crate::status::node_status(n);
    let mut why = Vec::new();
    if s.boot_id == boot_before {
        let id = if s.boot_id.is_empty() { "<none>" } else { &s.boot_id };
        why.push(format!("no new boot since the drain (bootID {id})"));
    }
    why.extend(not_running(&s, Some(bundle)));
    (!why.is_empty()).then(|| why.join(", "))
}

fn not_running(s: &crate::status::NodeStatus, bundle: Option<&str>) -> Vec<String> {
    let mut why = Vec::new();
    if !s.ready {
        why.push("not Ready".to_string());
    }
    match (s.bundle_version.as_deref(), bundle) {
        (None, _) => why.push(format!("no {BUNDLE_VERSION} label")),
        (Some(have), Some(want)) if have != want => why.push(format!("bundle {have}, not {want}")),
        _ => {}
    }
    why
}

/// What a node that never became a usable replacement last was (not registered, not Ready, on
/// another bundle, or unreadable).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct Unfit(String);

/// Wait until node `name` is a usable replacement (one watch of that node); `Err` describes what
/// it last was.
async fn wait_fit(client: &Client, name: &str, bundle: Option<&str>, deadline: Instant) -> Result<(), Unfit> {
    let mirror = Mirror::start(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    );
    let mut last = "not registered".to_string();
    let fit = wait_for(&mut mirror.subscribe(), deadline, |s| {
        if let Some(refused) = &s.fatal {
            last = format!("cannot watch it: {refused}");
            return Some(false);
        }
        if let Some(e) = &s.error {
            last = format!("cannot read it: {e}");
        }
        match s.items.get(name) {
            Some(n) => match unfit(n, bundle) {
                None => return Some(true),
                Some(why) => last = why,
            },
            None if s.synced => last = "not registered".to_string(),
            None => {}
        }
        None
    })
    .await;
    match fit {
        Some(true) => Ok(()),
        Some(false) | None => Err(Unfit(last)),
    }
}

#[derive(Debug, Clone)]
pub struct ReplaceArgs {
    pub old: String,
    pub new: String,
    /// The bundle version NEW must run (any kiln bundle when `None`).
    pub bundle: Option<String>,
    pub ready_timeout: Duration,
    pub command_timeout: Duration,
    pub decommission: Option<Hook>,
    pub drain: DrainArgs,
}

/// What became of one old node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Replaced,
    /// Rolled in place: the same node, back on the target bundle after a new boot.
    Reprovisioned,
    /// Drained and deleted, but the decommission command (or its bookkeeping) failed; the next
    /// run retries it.
    DecommissionFailed,
    Untouched,
    Failed,
    AtTarget,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Replaced => "replaced",
            Outcome::Reprovisioned => "reprovisioned",
            Outcome::DecommissionFailed => "decommission-failed",
            Outcome::Untouched => "untouched",
            Outcome::Failed => "failed",
            Outcome::AtTarget => "at-target",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeOutcome {
    pub node: String,
    pub result: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// Rolled in place: the boot ID it came back with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long its drain took (blocked or not), when it was drained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<f64>,
    pub seconds: f64,
}

impl NodeOutcome {
    pub(crate) fn new(node: &str, result: Outcome) -> NodeOutcome {
        NodeOutcome {
            node: node.to_string(),
            result,
            replacement: None,
            boot_id: None,
            message: None,
            drain_seconds: None,
            seconds: 0.0,
        }
    }
}

/// `replace OLD --with NEW`: wait until NEW is Ready, schedulable and on the expected bundle; then
/// drain OLD, delete its Node object and run the decommission command.
pub async fn replace(client: &Client, a: &ReplaceArgs, progress: &(dyn Fn(&str) + Sync)) -> Result<NodeOutcome> {
    let start = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    // The API's own NotFound when OLD does not exist.
    crate::retry(|| nodes.get(&a.old)).await?;
    if let Some(n) = crate::retry(|| nodes.get_opt(&a.new)).await? {
        if let Some(why) = unusable_replacement(&n, &a.old) {
            bail!("{} cannot replace {}: {why}", a.new, a.old);
        }
    }
    let mut out = NodeOutcome::new(&a.old, Outcome::Untouched);
    out.replacement = Some(a.new.clone());
    progress(&format!("{}: waiting for {} to be Ready", a.old, a.new));
    if let Err(last) = wait_fit(client, &a.new, a.bundle.as_deref(), start + a.ready_timeout).await {
        out.result = Outcome::Failed;
        out.message = Some(format!(
            "{} did not become a usable replacement within {:?} ({last}); {} left untouched",
            a.new, a.ready_timeout, a.old
        ));
        out.seconds = start.elapsed().as_secs_f64();
        return Ok(out);
    }
    annotate(client, &a.new, &[(REPLACES, Some(&a.old))]).await?;
    finish(
        client,
        &a.old,
        &a.new,
        &a.drain,
        a.decommission.as_ref(),
        a.command_timeout,
        progress,
        &mut out,
    )
    .await?;
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

/// Why node `new` cannot take `old`'s place, if it cannot: it is `old` itself, it is being
/// deleted, drained by a roll, or another node's replacement already. (A cordoned node is waited
/// for: it qualifies once it is schedulable.)
pub fn unusable_replacement(new: &Node, old: &str) -> Option<String> {
    let name = new.metadata.name.as_deref().unwrap_or_default();
    let ann = annotations(new);
    if name == old {
        return Some("it is the node being replaced".into());
    }
    if new.metadata.deletion_timestamp.is_some() {
        return Some("it is being deleted".into());
    }
    if let Some(phase) = ann.get(ROLL_PHASE) {
        return Some(format!("a roll is replacing it ({ROLL_PHASE}={phase})"));
    }
    match ann.get(REPLACES) {
        Some(other) if other != old => Some(format!("it already replaces {other}")),
        _ => None,
    }
}

/// Drain `old`, delete it, decommission it, release `new`'s claim. Sets `out.result`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn finish(
    client: &Client,
    old: &str,
    new: &str,
    drain_args: &DrainArgs,
    decommission: Option<&Hook>,
    command_timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
    out: &mut NodeOutcome,
) -> Result<()> {
    progress(&format!("{old}: draining (replacement {new} is Ready)"));
    events::node(
        old,
        Kind::Normal,
        "ReplacementReady",
        "Replace",
        format!("replacement {new} is Ready"),
    );
    let drained = Instant::now();
    let report = drain::drain(client, old, drain_args, &|_| {}).await?;
    out.drain_seconds = Some(drained.elapsed().as_secs_f64());
    if !report.ok() {
        let why = report.blocked_summary();
        out.result = Outcome::Failed;
        out.message = Some(format!("drain of {old} stopped: {why}"));
        return Ok(());
    }
    delete_node(client, old).await?;
    progress(&format!("{old}: drained and deleted"));
    events::node(
        old,
        Kind::Normal,
        "Deleted",
        "Replace",
        format!("drained and deleted; replaced by {new}"),
    );
    decommission_node(client, old, new, decommission, command_timeout, progress, out).await;
    Ok(())
}

pub(crate) async fn decommission_node(
    client: &Client,
    old: &str,
    new: &str,
    decommission: Option<&Hook>,
    timeout: Duration,
    progress: &(dyn Fn(&str) + Sync),
    out: &mut NodeOutcome,
) {
    out.result = Outcome::Replaced;
    if let Some(hook) = decommission {
        if let Err(e) = hook
            .run(
                "decommission",
                &[("KILN_NODE", old), ("KILN_REPLACEMENT", new)],
                timeout,
            )
            .await
        {
            // The claim stays on the new node, so the next run retries the decommission.
            out.result = Outcome::DecommissionFailed;
            out.message = Some(format!("{e:#}"));
            progress(&format!("{old}: {e:#}"));
            events::node(old, Kind::Warning, "DecommissionFailed", "Replace", format!("{e:#}"));
            return;
        }
        progress(&format!("{old}: decommissioned"));
        events::node(
            old,
            Kind::Normal,
            "Decommissioned",
            "Replace",
            "the decommission command succeeded",
        );
    }
    if let Err(e) = annotate(client, new, &[(REPLACES, None)]).await {
        out.result = Outcome::DecommissionFailed;
        out.message = Some(format!("{e:#}"));
    }
}
