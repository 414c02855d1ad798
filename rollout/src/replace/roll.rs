//! The roll executor: the pool replaced surge-first, several replacements at once; or, in place,
//! each node drained, reprovisioned under its own name and awaited back on the target bundle. Both
//! modes share the Lease, the drain, the plan and the annotations an interrupted roll resumes from.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::*;
use crate::drain::{self, DrainArgs};
use crate::events::{self, Kind};
use crate::lease::PoolLease;
use crate::metrics::{self, RollMetrics};
use crate::watch::{wait_for, Mirror, Snapshot};

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
    /// In place: the command that reimages or updates a drained node and reboots it (the node
    /// keeps its name). `None`: a surge roll, with `provision`.
    pub reprovision: Option<Hook>,
    pub drain: DrainArgs,
    /// Where the pool's Lease lives (see [`crate::lease`]).
    pub lease_namespace: String,
    /// Nodes rolled first and soaked before the rest (0: no canary; see [`super::canary`]).
    pub canary: usize,
    /// How long the canary nodes are watched.
    pub soak: Duration,
    /// Run at the end of the soak, with KILN_CANARY_NODES; a failure halts the roll.
    pub soak_check: Option<Hook>,
    /// Serve the roll's Prometheus metrics here while it runs (see [`crate::metrics`]).
    pub metrics_bind_address: Option<std::net::SocketAddr>,
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
            && self.nodes.iter().all(|n| {
                matches!(
                    n.result,
                    Outcome::Replaced | Outcome::Reprovisioned | Outcome::Untouched | Outcome::AtTarget
                )
            })
    }
}

impl RollArgs {
    pub fn in_place(&self) -> bool {
        self.reprovision.is_some()
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
    /// Who paused the roll, while it is paused (the pool's Lease, see [`crate::lease`]).
    paused: tokio::sync::watch::Receiver<Option<String>>,
    metrics: Arc<RollMetrics>,
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
        self.metrics.halted.set(1);
    }

    /// Wait while the roll is paused: the safe point before a node starts (nodes in flight go on
    /// to their end). False when the roll halted meanwhile (its Lease lost).
    async fn unpaused(&self, node: &str, selector: &str, progress: &(dyn Fn(&str) + Sync)) -> bool {
        let mut paused = self.paused.clone();
        let mut said = false;
        loop {
            if self.halted() {
                return false;
            }
            let Some(by) = paused.borrow_and_update().clone() else {
                if said {
                    progress(&format!("{node}: the roll was resumed"));
                }
                return true;
            };
            if !said {
                progress(&format!(
                    "{node}: waiting to start: the roll is paused ({by}); `kubectl kiln roll resume -l {selector}` continues it"
                ));
                said = true;
            }
            // The lease's loss ends the pause's watch too: look again at least every second.
            let _ = tokio::time::timeout(Duration::from_secs(1), paused.changed()).await;
        }
    }
}

pub fn validate(a: &RollArgs) -> Result<()> {
    if a.in_place() {
        // In place, nothing is created or deleted: the surge mode's knobs would mean nothing.
        if a.provision.is_some() || a.decommission.is_some() {
            bail!("--in-place reprovisions nodes under their own names: it takes --reprovision-cmd, not --provision-cmd or --decommission-cmd");
        }
        if a.max_surge > 0 {
            bail!("--max-surge does not apply to an in-place roll (no node is added); --max-unavailable says how many nodes are reprovisioned at once");
        }
        if a.max_unavailable == 0 {
            bail!("--max-unavailable cannot be 0 in an in-place roll: the roll could never make progress");
        }
        return Ok(());
    }
    if a.max_surge == 0 && a.max_unavailable == 0 {
        bail!("--max-surge and --max-unavailable cannot both be 0: the roll could never make progress");
    }
    if a.provision.is_none() {
        bail!("roll needs --provision-cmd (the command that creates a replacement node), or --in-place with --reprovision-cmd");
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
    let figures = Arc::new(RollMetrics::new(&a.selector, &a.target));
    let _server = match a.metrics_bind_address {
        Some(addr) => {
            let s = metrics::serve(addr, figures.clone()).await?;
            progress(&format!("serving the roll's metrics on http://{}/metrics", s.addr));
            Some(s)
        }
        None => None,
    };
    let lease = PoolLease::acquire(client, &a.lease_namespace, &a.selector).await?;
    let report = roll_holding(client, a, lease.lost(), lease.paused(), figures, start, progress).await;
    let halted = match &report {
        Ok(r) => r.halted.clone(),
        Err(e) => Some(format!("{e:#}")),
    };
    if let Err(e) = lease.release(halted.as_deref()).await {
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
    paused: tokio::sync::watch::Receiver<Option<String>>,
    metrics: Arc<RollMetrics>,
    start: Instant,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<RollReport> {
    let nodes = pool(client, &a.selector).await?;
    let plan = plan_roll(&nodes, &a.selector, &a.target, a.in_place())?;
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
        paused,
        metrics,
    });
    shared.metrics.to_roll.set(plan.replace.len() as i64);
    let surge = Arc::new(Semaphore::new(a.max_surge));
    let unavailable = Arc::new(Semaphore::new(a.max_unavailable));
    // The canary first, soaked; then the rest (which starts nothing once the roll halted).
    let (canary, rest) = plan.replace.split_at(a.canary.min(plan.replace.len()));
    let nodes = async {
        let mut outcomes = futures::future::join_all(
            canary
                .iter()
                .map(|r| replace_one(client, a, r, &shared, &surge, &unavailable, progress)),
        )
        .await;
        if !canary.is_empty() && !shared.halted() {
            soak_canary(client, a, &outcomes, &shared, progress).await;
        }
        outcomes.extend(
            futures::future::join_all(
                rest.iter()
                    .map(|r| replace_one(client, a, r, &shared, &surge, &unavailable, progress)),
            )
            .await,
        );
        outcomes
    };
    // Say when a pause or a resume reaches the roll, while the nodes go on.
    let mut pauses = shared.paused.clone();
    let figures = shared.metrics.clone();
    if let Some(by) = pauses.borrow_and_update().clone() {
        figures.paused.set(1);
        progress(&format!("roll paused ({by}): no node starts until it is resumed"));
    }
    let reporting = async move {
        while pauses.changed().await.is_ok() {
            let now = pauses.borrow_and_update().clone();
            figures.paused.set(i64::from(now.is_some()));
            match now {
                Some(by) => progress(&format!(
                    "roll paused ({by}): the nodes in flight finish, no new node starts"
                )),
                None => progress("roll resumed"),
            }
        }
        std::future::pending::<()>().await
    };
    let outcomes = tokio::select! {
        outcomes = nodes => outcomes,
        () = reporting => unreachable!("the pause reporter never ends"),
    };
    report.nodes.extend(outcomes);
    shared.halted();
    report.halted = shared.halted.lock().unwrap().clone();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Soak what the canary nodes became; a failure halts the roll, recorded on each of them.
async fn soak_canary(
    client: &Client,
    a: &RollArgs,
    outcomes: &[NodeOutcome],
    shared: &Shared,
    progress: &(dyn Fn(&str) + Sync),
) {
    let nodes: Vec<String> = outcomes
        .iter()
        .map(|o| o.replacement.clone().unwrap_or_else(|| o.node.clone()))
        .collect();
    match super::canary::soak(client, a, &nodes, &shared.pool, progress).await {
        Ok(()) => {
            for n in &nodes {
                events::node(
                    n,
                    Kind::Normal,
                    "CanarySoaked",
                    "Roll",
                    format!(
                        "soaked for {:?} on bundle {}; the rest of the pool follows",
                        a.soak, a.target
                    ),
                );
            }
            progress(&format!(
                "canary {}: soaked; rolling the rest of the pool",
                nodes.join(", ")
            ));
        }
        Err(e) => {
            let why = format!("canary failed: {e:#}");
            for n in &nodes {
                events::node(
                    n,
                    Kind::Warning,
                    "CanaryFailed",
                    "Roll",
                    format!("{e:#}; the roll halted before the rest of the pool"),
                );
            }
            progress(&why);
            shared.halt(why);
        }
    }
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
    if !shared.unpaused(old, &a.selector, progress).await {
        return NodeOutcome::new(old, Outcome::Untouched);
    }
    let start = Instant::now();
    shared.metrics.in_flight.inc();
    let mut out = NodeOutcome::new(old, Outcome::Untouched);
    let result = if a.in_place() {
        reprovision_steps(client, a, r, shared, progress, &mut out).await
    } else {
        replace_steps(client, a, r, shared, drain_first, progress, &mut out).await
    };
    if let Err(e) = result {
        let why = format!("{old}: {e:#}");
        progress(&why);
        // In place, the node stays cordoned: whatever it runs now has not proved healthy.
        if out.result == Outcome::Untouched && drain_first && !a.in_place() {
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
        events::node(old, Kind::Warning, "RollHalted", "Roll", format!("{e:#}"));
        out.result = Outcome::Failed;
        out.message = Some(format!("{e:#}"));
        shared.halt(why);
    }
    out.seconds = start.elapsed().as_secs_f64();
    let m = &shared.metrics;
    m.in_flight.dec();
    match out.result {
        // Drained and deleted: replaced, whatever became of its decommission command.
        Outcome::Replaced | Outcome::Reprovisioned | Outcome::DecommissionFailed => {
            m.replaced.inc();
        }
        Outcome::Failed => {
            m.halted_nodes.inc();
        }
        Outcome::Untouched | Outcome::AtTarget => {}
    }
    if let Some(s) = out.drain_seconds {
        m.drain_seconds.observe(s);
    }
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
        let drained = Instant::now();
        let report = drain::drain(client, old, &a.drain, &|_| {}).await?;
        out.drain_seconds = Some(drained.elapsed().as_secs_f64());
        if !report.ok() {
            let why = report.blocked_summary();
            bail!("drain stopped: {why}");
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

/// One node rolled in place: record its boot ID, cordon and drain it, run the reprovision command,
/// wait until the same Node is Ready on the target bundle after a new boot, uncordon it. Any
/// failure leaves it cordoned (the caller annotates why and halts the roll).
async fn reprovision_steps(
    client: &Client,
    a: &RollArgs,
    r: &Replacement,
    shared: &Shared,
    progress: &(dyn Fn(&str) + Sync),
    out: &mut NodeOutcome,
) -> Result<()> {
    let node = r.node.as_str();
    let mut phase = r.resume;
    let boot_before = match (&phase, &r.boot_id) {
        (Some(_), Some(id)) => id.clone(),
        _ => {
            // The boot the node must leave behind, read before anything changes.
            let api = Api::<Node>::all(client.clone());
            let n = crate::retry(|| api.get(node))
                .await
                .with_context(|| format!("cannot read node {node}"))?;
            let id = crate::status::node_status(&n).boot_id;
            annotate(
                client,
                node,
                &[
                    (ROLL_TARGET, Some(&a.target)),
                    (ROLL_PHASE, Some(Phase::DrainingInPlace.as_str())),
                    (ROLL_BOOT_ID, Some(&id)),
                    (ROLL_STARTED, Some(&rfc3339_now())),
                    (ROLL_REPLACEMENT, None),
                    (ROLL_MESSAGE, None),
                ],
            )
            .await?;
            phase = Some(Phase::DrainingInPlace);
            id
        }
    };
    if matches!(phase, Some(Phase::DrainingInPlace | Phase::Reprovisioning)) {
        progress(&format!("{node}: draining before it is reprovisioned"));
        let drained = Instant::now();
        let report = drain::drain(client, node, &a.drain, &|_| {}).await?;
        out.drain_seconds = Some(drained.elapsed().as_secs_f64());
        if !report.ok() {
            let why = report.blocked_summary();
            bail!("drain stopped: {why}");
        }
    }
    let deadline = Instant::now() + a.ready_timeout;
    // A resumed node that is back already is not reprovisioned again.
    let back_already = phase == Some(Phase::Reprovisioning)
        && shared
            .pool
            .borrow()
            .items
            .get(node)
            .is_some_and(|n| not_back(n, &a.target, &boot_before).is_none());
    if matches!(phase, Some(Phase::DrainingInPlace | Phase::Reprovisioning)) && !back_already {
        annotate(client, node, &[(ROLL_PHASE, Some(Phase::Reprovisioning.as_str()))]).await?;
        progress(&format!("{node}: reprovisioning to bundle {}", a.target));
        let hook = a.reprovision.as_ref().expect("in place");
        let env = [
            ("KILN_NODE", node),
            ("KILN_TARGET_BUNDLE", a.target.as_str()),
            ("KILN_SELECTOR", a.selector.as_str()),
            ("KILN_BOOT_ID", boot_before.as_str()),
        ];
        let remaining = deadline.saturating_duration_since(Instant::now());
        hook.run("reprovision", &env, a.command_timeout.min(remaining)).await?;
        annotate(client, node, &[(ROLL_PHASE, Some(Phase::Reprovisioned.as_str()))]).await?;
    }
    let boot = wait_back(a, node, &boot_before, shared, deadline).await?;
    progress(&format!(
        "{node}: back on bundle {} after a new boot (bootID {boot})",
        a.target
    ));
    // Uncordoned before the annotations go: a roll interrupted in between resumes and uncordons.
    drain::set_unschedulable(client, node, false).await?;
    annotate(
        client,
        node,
        &[
            (ROLL_TARGET, None),
            (ROLL_PHASE, None),
            (ROLL_BOOT_ID, None),
            (ROLL_STARTED, None),
            (ROLL_MESSAGE, None),
        ],
    )
    .await?;
    events::node(
        node,
        Kind::Normal,
        "Reprovisioned",
        "Roll",
        format!(
            "back Ready on bundle {} after a new boot (bootID {boot}); uncordoned",
            a.target
        ),
    );
    out.result = Outcome::Reprovisioned;
    out.boot_id = Some(boot);
    progress(&format!("{node}: uncordoned"));
    Ok(())
}

/// Wait until node `node` is back (see [`not_back`]) before `deadline`; its new boot ID.
async fn wait_back(a: &RollArgs, node: &str, boot_before: &str, shared: &Shared, deadline: Instant) -> Result<String> {
    let mut last = "not registered".to_string();
    let back = wait_for(&mut shared.pool.clone(), deadline, |s| {
        if let Some(refused) = &s.fatal {
            return Some(Err(anyhow::anyhow!("cannot watch the pool's nodes: {refused}")));
        }
        match s.items.get(node) {
            Some(n) => match not_back(n, &a.target, boot_before) {
                None => return Some(Ok(crate::status::node_status(n).boot_id)),
                Some(why) => last = why,
            },
            None if s.synced => last = "not registered in the pool".to_string(),
            None => {}
        }
        if let Some(e) = &s.error {
            last = format!("{last} (the API: {e})");
        }
        None
    })
    .await;
    back.unwrap_or_else(|| {
        bail!(
            "{node} did not come back Ready on bundle {} after a new boot within {:?} ({last}); it stays cordoned and the remaining nodes are left untouched",
            a.target,
            a.ready_timeout
        )
    })
}
