//! Replacing nodes. [`replace`] swaps one old node for a given new one; [`roll`] replaces a whole
//! pool surge-first: provision a replacement, wait until it is Ready with the target bundle, drain
//! and delete the old node, decommission it. Progress is kept in annotations on the nodes, so an
//! interrupted roll resumes where it stopped; a replacement that never becomes Ready halts the roll
//! and leaves the remaining old nodes untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::drain::{self, DrainArgs};
use crate::lease::PoolLease;
use crate::status::BUNDLE_VERSION;
use crate::watch::{wait_for, Mirror, Snapshot};

/// On an old node: the bundle version the roll replacing it moves to.
pub const ROLL_TARGET: &str = "kiln.dev/roll-target";
/// On an old node: how far its replacement got ([`Phase`]).
pub const ROLL_PHASE: &str = "kiln.dev/roll-phase";
/// On an old node: when provisioning its replacement started (RFC 3339).
pub const ROLL_STARTED: &str = "kiln.dev/roll-started";
/// On an old node: the node claimed as its replacement.
pub const ROLL_REPLACEMENT: &str = "kiln.dev/roll-replacement";
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
            Phase::Halted => "halted",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        [
            Phase::Provisioning,
            Phase::Provisioned,
            Phase::DrainingFirst,
            Phase::Draining,
            Phase::Halted,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// A user's command (`--provision-cmd`, `--decommission-cmd`): split like a shell would split it,
/// run without a shell. Node names reach it only through the environment, never through a command
/// string built from API data.
#[derive(Debug, Clone)]
pub struct Hook {
    argv: Vec<String>,
    text: String,
}

impl FromStr for Hook {
    type Err = String;

    fn from_str(s: &str) -> Result<Hook, String> {
        match shlex::split(s) {
            Some(argv) if !argv.is_empty() => Ok(Hook {
                argv,
                text: s.to_string(),
            }),
            Some(_) => Err("the command is empty".into()),
            None => Err(format!("cannot split the command {s:?} (unbalanced quotes?)")),
        }
    }
}

impl Hook {
    /// Run with `env` added; the last non-empty line of its standard output, if any.
    pub async fn run(&self, what: &str, env: &[(&str, &str)], timeout: Duration) -> Result<Option<String>> {
        let mut cmd = tokio::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| anyhow::anyhow!("{what} command `{}` did not finish within {timeout:?}", self.text))?
            .with_context(|| format!("cannot run the {what} command `{}`", self.text))?;
        if !out.status.success() {
            let command = format!("{what} command `{}`", self.text);
            bail!("{}", kiln_bundle::process::failed(&command, out.status, &out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| l.trim_start_matches("node/").to_string())
            .filter(|l| is_node_name(l)))
    }
}

/// A DNS-1123 subdomain, as Node names are.
fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Why `n` is not yet a usable replacement (`None`: it is): Ready, schedulable and running `bundle`
/// (any kiln bundle when `None`).
pub fn unfit(n: &Node, bundle: Option<&str>) -> Option<String> {
    let s = crate::status::node_status(n);
    let mut why = Vec::new();
    if !s.ready {
        why.push("not Ready".to_string());
    }
    if !s.schedulable {
        why.push("cordoned".to_string());
    }
    match (s.bundle_version.as_deref(), bundle) {
        (None, _) => why.push(format!("no {BUNDLE_VERSION} label")),
        (Some(have), Some(want)) if have != want => why.push(format!("bundle {have}, not {want}")),
        _ => {}
    }
    (!why.is_empty()).then(|| why.join(", "))
}

fn annotations(n: &Node) -> BTreeMap<String, String> {
    n.metadata.annotations.clone().unwrap_or_default()
}

fn name(n: &Node) -> String {
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

async fn delete_node(client: &Client, node: &str) -> Result<()> {
    let api = Api::<Node>::all(client.clone());
    let dp = DeleteParams::default();
    match crate::retry(|| api.delete(node, &dp)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot delete node {node}")),
    }
}

/// Now, to the second (as the API server stamps creationTimestamp).
fn rfc3339_now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// Wait until node `name` is a usable replacement (one watch of that node); `Err` describes what
/// it last was.
async fn wait_fit(client: &Client, name: &str, bundle: Option<&str>, deadline: Instant) -> Result<(), String> {
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
        Some(false) | None => Err(last),
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub seconds: f64,
}

impl NodeOutcome {
    fn new(node: &str, result: Outcome) -> NodeOutcome {
        NodeOutcome {
            node: node.to_string(),
            result,
            replacement: None,
            message: None,
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
async fn finish(
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
    let report = drain::drain(client, old, drain_args, &|_| {}).await?;
    if !report.ok() {
        let why: Vec<String> = report
            .blocked
            .iter()
            .map(|d| format!("{}: {}", d.pod, d.reason))
            .collect();
        out.result = Outcome::Failed;
        out.message = Some(format!("drain of {old} stopped: {}", why.join("; ")));
        return Ok(());
    }
    delete_node(client, old).await?;
    progress(&format!("{old}: drained and deleted"));
    decommission_node(client, old, new, decommission, command_timeout, progress, out).await;
    Ok(())
}

async fn decommission_node(
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
            return;
        }
        progress(&format!("{old}: decommissioned"));
    }
    if let Err(e) = annotate(client, new, &[(REPLACES, None)]).await {
        out.result = Outcome::DecommissionFailed;
        out.message = Some(format!("{e:#}"));
    }
}

#[derive(Debug, Clone)]
pub struct RollArgs {
    pub selector: String,
    pub target: String,
    pub max_surge: usize,
    pub max_unavailable: usize,
    pub ready_timeout: Duration,
    pub command_timeout: Duration,
    pub provision: Option<Hook>,
    pub decommission: Option<Hook>,
    pub drain: DrainArgs,
    /// Where the pool's Lease lives (see [`crate::lease`]).
    pub lease_namespace: String,
}

/// One old node in a roll plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replacement {
    pub node: String,
    /// Where an earlier, interrupted roll to the same bundle left it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
}

/// What a roll will do, from the pool as listed: pure, so `--dry-run` and the roll agree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollPlan {
    pub selector: String,
    pub target: String,
    /// Nodes already on the target bundle.
    pub at_target: Vec<String>,
    /// Old nodes in order: interrupted ones first, then by name.
    pub replace: Vec<Replacement>,
    /// (replacement, old) pairs whose old node is gone but was never decommissioned.
    pub decommission: Vec<(String, String)>,
}

pub fn plan_roll(pool: &[Node], selector: &str, target: &str) -> RollPlan {
    let names: BTreeSet<String> = pool.iter().map(name).collect();
    let mut plan = RollPlan {
        selector: selector.to_string(),
        target: target.to_string(),
        ..Default::default()
    };
    for n in pool {
        let ann = annotations(n);
        let labels = n.metadata.labels.clone().unwrap_or_default();
        if let Some(old) = ann.get(REPLACES) {
            if !names.contains(old) {
                plan.decommission.push((name(n), old.clone()));
            }
        }
        if labels.get(BUNDLE_VERSION).map(String::as_str) == Some(target) {
            plan.at_target.push(name(n));
            continue;
        }
        let same_roll = ann.get(ROLL_TARGET).map(String::as_str) == Some(target);
        let resume = same_roll
            .then(|| ann.get(ROLL_PHASE).and_then(|p| Phase::parse(p)))
            .flatten()
            .filter(|p| *p != Phase::Halted);
        plan.replace.push(Replacement {
            node: name(n),
            resume,
            replacement: resume.and_then(|_| ann.get(ROLL_REPLACEMENT).cloned()),
            started: resume.and_then(|_| ann.get(ROLL_STARTED).cloned()),
        });
    }
    plan.replace
        .sort_by(|a, b| (a.resume.is_none(), &a.node).cmp(&(b.resume.is_none(), &b.node)));
    plan
}

impl RollPlan {
    /// The plan as people read it (`--dry-run`).
    pub fn render(&self, a: &RollArgs) -> String {
        let mut s = format!(
            "roll {} to bundle {}: {} node(s) to replace, {} already on it; max surge {}, max unavailable {}, ready timeout {:?}\n",
            self.selector,
            self.target,
            self.replace.len(),
            self.at_target.len(),
            a.max_surge,
            a.max_unavailable,
            a.ready_timeout
        );
        for (new, old) in &self.decommission {
            s.push_str(&format!(
                "  decommission {old} (replaced by {new}; interrupted before)\n"
            ));
        }
        for r in &self.replace {
            let how = match r.resume {
                None => "provision a replacement, wait until Ready, drain, delete, decommission".to_string(),
                Some(p) => format!("resume from {}", p.as_str()),
            };
            s.push_str(&format!("  {}: {how}\n", r.node));
        }
        s
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollReport {
    pub selector: String,
    pub target: String,
    /// Why the roll stopped early, if it did.
    pub halted: Option<String>,
    pub nodes: Vec<NodeOutcome>,
    /// Old nodes decommissioned now after an earlier interruption.
    pub decommissioned: Vec<String>,
    pub seconds: f64,
}

impl RollReport {
    pub fn ok(&self) -> bool {
        self.halted.is_none()
            && self
                .nodes
                .iter()
                .all(|n| matches!(n.result, Outcome::Replaced | Outcome::Untouched | Outcome::AtTarget))
    }
}

/// Shared between the concurrent replacements of one roll.
struct Shared {
    /// Nodes taken as a replacement (or promised to one by its provision command's output).
    claimed: Mutex<BTreeSet<String>>,
    /// The old nodes of this roll: never replacements.
    old: BTreeSet<String>,
    halted: Mutex<Option<String>>,
    /// Set when the pool's Lease is lost: nothing new may start.
    lease_lost: tokio::sync::watch::Receiver<Option<String>>,
    /// The pool as one watch sees it, for every replacement's wait.
    pool: tokio::sync::watch::Receiver<Snapshot<Node>>,
}

impl Shared {
    fn halted(&self) -> bool {
        if let Some(why) = self.lease_lost.borrow().clone() {
            self.halt(format!("{why}; another roll may be replacing this pool"));
        }
        self.halted.lock().unwrap().is_some()
    }

    fn halt(&self, why: String) {
        self.halted.lock().unwrap().get_or_insert(why);
    }
}

pub fn validate(a: &RollArgs) -> Result<()> {
    if a.max_surge == 0 && a.max_unavailable == 0 {
        bail!("--max-surge and --max-unavailable cannot both be 0: the roll could never make progress");
    }
    if a.provision.is_none() {
        bail!("roll needs --provision-cmd: the command that creates a replacement node");
    }
    Ok(())
}

/// List the pool (the nodes matching the selector).
pub async fn pool(client: &Client, selector: &str) -> Result<Vec<Node>> {
    let api = Api::<Node>::all(client.clone());
    let lp = ListParams::default().labels(selector);
    Ok(crate::retry(|| api.list(&lp))
        .await
        .with_context(|| format!("cannot list the nodes matching {selector}"))?
        .items)
}

/// `roll`: replace every node in the pool that is not on the target bundle, surge-first.
pub async fn roll(client: &Client, a: &RollArgs, progress: &(dyn Fn(&str) + Sync)) -> Result<RollReport> {
    validate(a)?;
    let start = Instant::now();
    let lease = PoolLease::acquire(client, &a.lease_namespace, &a.selector).await?;
    let report = roll_holding(client, a, lease.lost(), start, progress).await;
    if let Err(e) = lease.release().await {
        progress(&format!(
            "could not release the pool's Lease (it expires by itself): {e}"
        ));
    }
    report
}

async fn roll_holding(
    client: &Client,
    a: &RollArgs,
    lease_lost: tokio::sync::watch::Receiver<Option<String>>,
    start: Instant,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<RollReport> {
    let nodes = pool(client, &a.selector).await?;
    let plan = plan_roll(&nodes, &a.selector, &a.target);
    let mut report = RollReport {
        selector: a.selector.clone(),
        target: a.target.clone(),
        halted: None,
        nodes: plan
            .at_target
            .iter()
            .map(|n| NodeOutcome::new(n, Outcome::AtTarget))
            .collect(),
        decommissioned: Vec::new(),
        seconds: 0.0,
    };
    // An earlier run deleted these old nodes but did not decommission them.
    for (new, old) in &plan.decommission {
        let mut o = NodeOutcome::new(old, Outcome::Replaced);
        decommission_node(
            client,
            old,
            new,
            a.decommission.as_ref(),
            a.command_timeout,
            progress,
            &mut o,
        )
        .await;
        match o.result {
            Outcome::DecommissionFailed => report.halted = o.message,
            _ => report.decommissioned.push(old.clone()),
        }
    }
    if report.halted.is_some() {
        return Ok(report);
    }
    let pool_watch = Mirror::start(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().labels(&a.selector),
    );
    let shared = Arc::new(Shared {
        claimed: Mutex::new(
            nodes
                .iter()
                .filter(|n| annotations(n).contains_key(REPLACES))
                .map(name)
                .chain(plan.replace.iter().filter_map(|r| r.replacement.clone()))
                .collect(),
        ),
        old: plan.replace.iter().map(|r| r.node.clone()).collect(),
        halted: Mutex::new(None),
        lease_lost,
        pool: pool_watch.subscribe(),
    });
    let surge = Arc::new(Semaphore::new(a.max_surge));
    let unavailable = Arc::new(Semaphore::new(a.max_unavailable));
    let outcomes = futures::future::join_all(
        plan.replace
            .iter()
            .map(|r| replace_one(client, a, r, &shared, &surge, &unavailable, progress)),
    )
    .await;
    report.nodes.extend(outcomes);
    shared.halted();
    report.halted = shared.halted.lock().unwrap().clone();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

async fn replace_one(
    client: &Client,
    a: &RollArgs,
    r: &Replacement,
    shared: &Shared,
    surge: &Arc<Semaphore>,
    unavailable: &Arc<Semaphore>,
    progress: &(dyn Fn(&str) + Sync),
) -> NodeOutcome {
    let old = r.node.as_str();
    // A slot: surge (provision first) or unavailable (drain first). Resumed nodes keep their path.
    let (permit, drain_first) = tokio::select! {
        biased;
        p = surge.clone().acquire_owned(), if a.max_surge > 0 && r.resume != Some(Phase::DrainingFirst) => (p, false),
        p = unavailable.clone().acquire_owned(), if a.max_unavailable > 0 || r.resume == Some(Phase::DrainingFirst) => (p, true),
    };
    let _permit = permit.expect("the semaphores are never closed");
    if shared.halted() {
        return NodeOutcome::new(old, Outcome::Untouched);
    }
    let start = Instant::now();
    let mut out = NodeOutcome::new(old, Outcome::Untouched);
    let result = replace_steps(client, a, r, shared, drain_first, progress, &mut out).await;
    if let Err(e) = result {
        let why = format!("{old}: {e:#}");
        progress(&why);
        if out.result == Outcome::Untouched && drain_first {
            // It was drained for nothing: give its capacity back.
            let _ = drain::set_unschedulable(client, old, false).await;
        }
        let _ = annotate(
            client,
            old,
            &[
                (ROLL_PHASE, Some(Phase::Halted.as_str())),
                (ROLL_MESSAGE, Some(&format!("{e:#}"))),
            ],
        )
        .await;
        out.result = Outcome::Failed;
        out.message = Some(format!("{e:#}"));
        shared.halt(why);
    }
    out.seconds = start.elapsed().as_secs_f64();
    out
}

async fn replace_steps(
    client: &Client,
    a: &RollArgs,
    r: &Replacement,
    shared: &Shared,
    drain_first: bool,
    progress: &(dyn Fn(&str) + Sync),
    out: &mut NodeOutcome,
) -> Result<()> {
    let old = r.node.as_str();
    let mut phase = r.resume;
    if drain_first && phase.is_none() {
        annotate(
            client,
            old,
            &[
                (ROLL_TARGET, Some(&a.target)),
                (ROLL_PHASE, Some(Phase::DrainingFirst.as_str())),
                (ROLL_MESSAGE, None),
            ],
        )
        .await?;
        phase = Some(Phase::DrainingFirst);
    }
    if phase == Some(Phase::DrainingFirst) {
        progress(&format!("{old}: draining before its replacement exists"));
        let report = drain::drain(client, old, &a.drain, &|_| {}).await?;
        if !report.ok() {
            let why: Vec<String> = report
                .blocked
                .iter()
                .map(|d| format!("{}: {}", d.pod, d.reason))
                .collect();
            bail!("drain stopped: {}", why.join("; "));
        }
    }
    let deadline = Instant::now() + a.ready_timeout;
    let mut started = r.started.clone();
    let mut hint = r.replacement.clone();
    if matches!(phase, None | Some(Phase::Provisioning) | Some(Phase::DrainingFirst)) {
        let now = rfc3339_now();
        let next = if drain_first {
            Phase::DrainingFirst
        } else {
            Phase::Provisioning
        };
        annotate(
            client,
            old,
            &[
                (ROLL_TARGET, Some(&a.target)),
                (ROLL_PHASE, Some(next.as_str())),
                (ROLL_STARTED, Some(&now)),
                (ROLL_REPLACEMENT, None),
                (ROLL_MESSAGE, None),
            ],
        )
        .await?;
        started = Some(now);
        progress(&format!("{old}: provisioning a replacement"));
        let hook = a.provision.as_ref().expect("validated");
        let env = [
            ("KILN_NODE", old),
            ("KILN_TARGET_BUNDLE", a.target.as_str()),
            ("KILN_SELECTOR", a.selector.as_str()),
        ];
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Some(name) = hook.run("provision", &env, a.command_timeout.min(remaining)).await? {
            shared.claimed.lock().unwrap().insert(name.clone());
            hint = Some(name);
        }
        let mut set = vec![(ROLL_PHASE, Some(Phase::Provisioned.as_str()))];
        if drain_first {
            set.clear();
        }
        if let Some(h) = &hint {
            set.push((ROLL_REPLACEMENT, Some(h.as_str())));
        }
        if !set.is_empty() {
            annotate(client, old, &set).await?;
        }
    }
    let new = if phase == Some(Phase::Draining) {
        hint.clone().context("the roll annotations name no replacement")?
    } else {
        let new = wait_replacement(a, old, hint.as_deref(), started.as_deref(), shared, deadline).await?;
        annotate(client, &new, &[(REPLACES, Some(old))]).await?;
        annotate(
            client,
            old,
            &[
                (ROLL_PHASE, Some(Phase::Draining.as_str())),
                (ROLL_REPLACEMENT, Some(&new)),
            ],
        )
        .await?;
        new
    };
    out.replacement = Some(new.clone());
    progress(&format!("{old}: replacement {new} is Ready on bundle {}", a.target));
    finish(
        client,
        old,
        &new,
        &a.drain,
        a.decommission.as_ref(),
        a.command_timeout,
        progress,
        out,
    )
    .await?;
    if out.result == Outcome::Failed {
        bail!("{}", out.message.clone().unwrap_or_default());
    }
    Ok(())
}

/// Wait for a replacement for `old`: the node its provision command named, or else any node of the
/// pool created since provisioning started, on the target bundle, not an old node and not claimed.
/// It must be Ready and schedulable before `deadline`; then it is claimed. A halt elsewhere does not
/// stop this wait: a replacement already provisioned is used rather than abandoned.
async fn wait_replacement(
    a: &RollArgs,
    old: &str,
    hint: Option<&str>,
    started: Option<&str>,
    shared: &Shared,
    deadline: Instant,
) -> Result<String> {
    let started = started.and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok());
    let mut last = "no new node registered".to_string();
    let found = wait_for(&mut shared.pool.clone(), deadline, |s| {
        if let Some(refused) = &s.fatal {
            return Some(Err(anyhow::anyhow!("cannot watch the pool's nodes: {refused}")));
        }
        let mut seen = Vec::new();
        // A named replacement is looked up; only an unnamed one is searched for.
        let candidates: Box<dyn Iterator<Item = &Node>> = match hint {
            Some(h) => Box::new(s.items.get(h).into_iter()),
            None => Box::new(s.items.values()),
        };
        for n in candidates {
            let nm = name(n);
            let candidate = match hint {
                Some(h) => nm == h,
                None => {
                    !shared.old.contains(&nm)
                        && annotations(n).get(REPLACES).is_none_or(|o| o == old)
                        && started.is_none_or(|s| n.metadata.creation_timestamp.as_ref().is_some_and(|c| c.0 >= s))
                }
            };
            if !candidate {
                continue;
            }
            match unfit(n, Some(&a.target)) {
                None => {
                    let mut claimed = shared.claimed.lock().unwrap();
                    if hint.is_some() || claimed.insert(nm.clone()) {
                        return Some(Ok(nm));
                    }
                }
                Some(why) => seen.push(format!("{nm}: {why}")),
            }
        }
        if !seen.is_empty() {
            last = seen.join("; ");
        } else if let Some(h) = hint.filter(|_| s.synced) {
            last = format!("{h} not registered");
        }
        if let Some(e) = &s.error {
            last = format!("{last} (the API: {e})");
        }
        None
    })
    .await;
    found.unwrap_or_else(|| {
        bail!(
            "no replacement became Ready on bundle {} within {:?} ({last}); the remaining old nodes are left untouched",
            a.target,
            a.ready_timeout
        )
    })
}

/// A duration exactly as kubectl parses one (Go's `time.ParseDuration`): an optional sign, then
/// one or more decimal numbers with an optional fraction, each with a unit (`ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`), e.g. `90s`, `1.5h`, `1m30s`; `0` alone needs no unit. A negative duration
/// has already passed: it becomes the shortest one (a timeout that expires at once), as a Go
/// context with a negative timeout does. Written by hand because the one crate that ports it
/// slices strings at character counts and panics on `µs`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {s:?}");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => a.split_at(a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len())),
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {s:?}")),
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        // Digits past what a u128 holds cannot change an in-range result: ignore them.
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| invalid())?
        };
        let frac = &frac[..frac.len().min(20)];
        let frac_value: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| invalid())?
        };
        let frac_nanos = frac_value * scale / 10u128.pow(frac.len() as u32);
        nanos = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(nanos))
            .filter(|n| *n <= i64::MAX as u128)
            .ok_or_else(invalid)?;
        rest = after;
    }
    if neg && nanos > 0 {
        return Ok(Duration::from_nanos(1));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, bundle: Option<&str>, ann: &[(&str, &str)]) -> Node {
        let mut labels = BTreeMap::new();
        if let Some(b) = bundle {
            labels.insert(BUNDLE_VERSION.to_string(), b.to_string());
        }
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(labels);
        n.metadata.annotations = Some(ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        n
    }

    #[test]
    fn plan_orders_interrupted_nodes_first_and_skips_the_target() {
        let pool = vec![
            node("a", Some("1.0"), &[]),
            node("b", Some("2.0"), &[]),
            node(
                "c",
                Some("1.0"),
                &[(ROLL_TARGET, "2.0"), (ROLL_PHASE, "draining"), (ROLL_REPLACEMENT, "b")],
            ),
            node("d", None, &[(ROLL_TARGET, "3.0"), (ROLL_PHASE, "provisioned")]),
            node("e", Some("1.0"), &[(ROLL_TARGET, "2.0"), (ROLL_PHASE, "halted")]),
            node("f", Some("2.0"), &[(REPLACES, "gone")]),
        ];
        let p = plan_roll(&pool, "pool=x", "2.0");
        assert_eq!(p.at_target, ["b", "f"]);
        let order: Vec<(&str, Option<Phase>)> = p.replace.iter().map(|r| (r.node.as_str(), r.resume)).collect();
        assert_eq!(
            order,
            [("c", Some(Phase::Draining)), ("a", None), ("d", None), ("e", None)]
        );
        assert_eq!(p.replace[0].replacement.as_deref(), Some("b"));
        assert_eq!(p.decommission, [("f".to_string(), "gone".to_string())]);
    }

    #[test]
    fn hooks_split_without_a_shell() {
        let h: Hook = "provision --pool 'blue pool' \"$KILN_NODE\"".parse().unwrap();
        assert_eq!(h.argv, ["provision", "--pool", "blue pool", "$KILN_NODE"]);
        assert!("".parse::<Hook>().is_err());
        assert!("a 'b".parse::<Hook>().unwrap_err().contains("unbalanced"));
    }

    #[test]
    fn durations() {
        // What kubectl (Go's time.ParseDuration) accepts, and what it refuses.
        assert_eq!(parse_duration("90"), Err("missing unit in duration \"90\"".into()));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1µs"), Ok(Duration::from_micros(1)));
        assert_eq!(parse_duration("+2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("-1s"), Ok(Duration::from_nanos(1)), "already passed");
        assert!(parse_duration("3000000h").is_err(), "beyond Go's 290 years");
        assert!(parse_duration("99999999999999999999999999999999999999999h").is_err());
        assert!(parse_duration("1.s").is_ok() && parse_duration(".s").is_err());
        assert!(parse_duration("1d").unwrap_err().contains("unknown unit \"d\""));
        assert!(parse_duration("").is_err() && parse_duration("-").is_err());
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn node_names() {
        assert!(is_node_name("node-1.example"));
        assert!(!is_node_name("Node"));
        assert!(!is_node_name("created node-1"));
        assert!(!is_node_name("-x"));
    }
}
