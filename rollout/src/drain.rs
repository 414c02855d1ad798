//! Cordon, drain and uncordon. Planning is [`crate::plan`]; this module talks to the API: it
//! evicts concurrently through the Eviction API (or deletes with `--disable-eviction`), retries 429s
//! with backoff until the deadline, reports at once a PodDisruptionBudget that can never allow the
//! eviction, and waits for each pod to be gone (same name and UID).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;

use crate::events::{self, Kind};
use crate::plan::{plan, Decision, DrainOptions, Plan, PodRef};
use crate::watch::{wait_for, Mirror, Snapshot};

#[derive(Debug, Clone)]
pub struct DrainArgs {
    pub options: DrainOptions,
    pub grace_period: Option<i64>,
    pub timeout: Duration,
    /// Longest any one pod may take, eviction and deletion together.
    pub pod_timeout: Option<Duration>,
    pub pod_selector: Option<String>,
    pub disable_eviction: bool,
    pub dry_run: DryRun,
    /// A roll's `--on-blocked-drain=delete`: pods whose eviction was still refused at the timeout
    /// (or that a budget never lets go) are then deleted, as `--disable-eviction` deletes them,
    /// and a `DrainForced` Warning Event says so. Off, the drain stops there (fail-closed).
    pub delete_when_blocked: bool,
}

/// kubectl's `--dry-run`: `none` acts; `client` only plans; `server` asks the API server to
/// check the cordon and every eviction (`dryRun=All`: admission and PodDisruptionBudgets apply,
/// nothing is persisted) and waits for nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DryRun {
    #[default]
    None,
    Client,
    Server,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub node: String,
    pub evicted: Vec<Decision>,
    pub skipped: Vec<Decision>,
    /// Pods still there, and why.
    pub blocked: Vec<Decision>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.blocked.is_empty()
    }

    /// The pods still there and why, on one line.
    pub fn blocked_summary(&self) -> String {
        let why: Vec<String> = self
            .blocked
            .iter()
            .map(|d| format!("{}: {}", d.pod, d.reason))
            .collect();
        why.join("; ")
    }
}

/// Every named node exists, checked before anything changes (kubectl resolves all names first):
/// the first missing one is the API's own NotFound error.
pub async fn check_nodes(client: &Client, names: &[String]) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for n in names {
        crate::retry(|| nodes.get(n)).await?;
    }
    Ok(())
}

pub async fn set_unschedulable(client: &Client, node: &str, unschedulable: bool) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let value = if unschedulable {
        json!(true)
    } else {
        serde_json::Value::Null
    };
    let patch = Patch::Merge(json!({"spec": {"unschedulable": value}}));
    let pp = PatchParams::default();
    crate::retry(|| nodes.patch(node, &pp, &patch)).await.with_context(|| {
        format!(
            "cannot {} node {node}",
            if unschedulable { "cordon" } else { "uncordon" }
        )
    })?;
    Ok(())
}

/// `--dry-run=server`: the cordon and each eviction (or deletion) sent with `dryRun=All`; what
/// the server would refuse is reported as blocked, with its words.
async fn server_dry_run(client: &Client, node: &str, a: &DrainArgs, p: Plan, report: &mut Report) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = Patch::Merge(json!({"spec": {"unschedulable": true}}));
    let pp = PatchParams::default().dry_run();
    crate::retry(|| nodes.patch(node, &pp, &patch))
        .await
        .with_context(|| format!("cannot cordon node {node} (server dry run)"))?;
    if !p.errors.is_empty() {
        report.blocked = p.errors;
        return Ok(());
    }
    for d in p.evict {
        let api: Api<Pod> = Api::namespaced(client.clone(), &d.pod.namespace);
        let dp = DeleteParams {
            dry_run: true,
            grace_period_seconds: a.grace_period.map(|g| g as u32),
            ..Default::default()
        };
        let result = if a.disable_eviction {
            api.delete(&d.pod.name, &dp).await.map(|_| ())
        } else {
            let params = EvictParams {
                delete_options: Some(dp),
                post_options: PostParams {
                    dry_run: true,
                    ..Default::default()
                },
            };
            api.evict(&d.pod.name, &params).await.map(|_| ())
        };
        match result {
            Ok(()) => report.evicted.push(d),
            Err(kube::Error::Api(s)) => report.blocked.push(Decision {
                pod: d.pod,
                reason: format!("the server refuses: {}", s.message),
            }),
            Err(e) => return Err(e).context("server dry run"),
        }
    }
    Ok(())
}

pub async fn pods_on(client: &Client, node: &str, selector: Option<&str>) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    Ok(crate::retry(|| pods.list(&lp))
        .await
        .with_context(|| format!("cannot list the pods on {node}"))?
        .items)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Plan the drain of `node` (no changes).
pub async fn plan_node(client: &Client, node: &str, a: &DrainArgs) -> Result<Plan> {
    let pods = pods_on(client, node, a.pod_selector.as_deref()).await?;
    Ok(plan(&pods, &a.options, unix_now()))
}

/// Cordon `node` and evict what the plan says. The report lists every pod's outcome; the caller
/// exits non-zero unless it is ok.
pub async fn drain(client: &Client, node: &str, a: &DrainArgs, progress: &(dyn Fn(&str) + Sync)) -> Result<Report> {
    let mut report = Report {
        node: node.to_string(),
        ..Default::default()
    };
    // A node that does not exist is the API's NotFound, also in a dry run (kubectl's behaviour).
    check_nodes(client, &[node.to_string()]).await?;
    let p = plan_node(client, node, a).await?;
    report.skipped = p.skipped.clone();
    match a.dry_run {
        DryRun::None => {}
        DryRun::Client => {
            report.evicted = p.evict;
            report.blocked = p.errors;
            return Ok(report);
        }
        DryRun::Server => {
            server_dry_run(client, node, a, p, &mut report).await?;
            return Ok(report);
        }
    }
    set_unschedulable(client, node, true).await?;
    events::node(
        node,
        Kind::Normal,
        "Cordoned",
        "Drain",
        "cordoned by kubectl kiln to drain it",
    );
    if !p.errors.is_empty() {
        // As kubectl does: nothing is evicted while some pod needs a flag.
        report.blocked = p.errors;
        return Ok(report);
    }
    let deadline = Instant::now() + a.timeout;
    // One watch of the node's pods tells every pod's wait when it is gone.
    let pods = Mirror::start(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    );
    let results = join_all(
        p.evict
            .iter()
            .map(|d| evict_one(client, node, d, a, deadline, pods.subscribe(), progress)),
    )
    .await;
    for (d, r) in p.evict.into_iter().zip(results) {
        match r {
            Ok(()) => report.evicted.push(d),
            Err(stuck) => report.blocked.push(Decision {
                pod: d.pod,
                reason: stuck.to_string(),
            }),
        }
    }
    if !report.ok() && a.delete_when_blocked && !a.disable_eviction {
        let why = report.blocked_summary();
        progress(&format!("{node}: drain blocked ({why}); deleting the remaining pods"));
        events::node(
            node,
            Kind::Warning,
            "DrainForced",
            "Drain",
            format!("the drain was blocked ({why}); the remaining pods are deleted, their budgets notwithstanding, as --on-blocked-drain=delete asks"),
        );
        let forced = DrainArgs {
            disable_eviction: true,
            delete_when_blocked: false,
            timeout: a
                .pod_timeout
                .unwrap_or(Duration::from_secs(300))
                .max(Duration::from_secs(60)),
            ..a.clone()
        };
        let deadline = Instant::now() + forced.timeout;
        let blocked = std::mem::take(&mut report.blocked);
        let again = join_all(
            blocked
                .iter()
                .map(|d| evict_one(client, node, d, &forced, deadline, pods.subscribe(), progress)),
        )
        .await;
        for (d, r) in blocked.into_iter().zip(again) {
            match r {
                Ok(()) => report.evicted.push(Decision {
                    pod: d.pod,
                    reason: "deleted after the drain was blocked".into(),
                }),
                Err(stuck) => report.blocked.push(Decision {
                    pod: d.pod,
                    reason: stuck.to_string(),
                }),
            }
        }
    }
    if report.ok() {
        let verb = if a.disable_eviction { "deleted" } else { "evicted" };
        events::node(
            node,
            Kind::Normal,
            "Drained",
            "Drain",
            format!("{} pods {verb}", report.evicted.len()),
        );
    } else {
        events::node(
            node,
            Kind::Warning,
            "DrainFailed",
            "Drain",
            format!("drain stopped: {}", report.blocked_summary()),
        );
    }
    Ok(report)
}

/// Why a pod is still there when its drain gives up on it.
#[derive(Debug, thiserror::Error)]
enum Stuck {
    /// The API server refused the eviction (429) until the deadline.
    #[error("eviction refused until the timeout: {0}")]
    Refused(String),
    /// The eviction or deletion failed otherwise until the deadline.
    #[error("eviction failed until the timeout: {0}")]
    Failed(kube::Error),
    /// A budget that can never allow the eviction.
    #[error(transparent)]
    Never(#[from] NeverAllows),
    /// The watch of the node's pods was refused, so the pod's end cannot be seen.
    #[error("cannot watch the node's pods: {0}")]
    Unwatchable(String),
    /// Evicted, but not gone by the deadline.
    #[error("evicted but still terminating at the timeout")]
    Terminating,
}

/// A PodDisruptionBudget that can never allow an eviction while this node drains.
#[derive(Debug, Clone, thiserror::Error)]
#[error("blocked by PodDisruptionBudget {pdb}: it needs {desired} healthy pods and at most {possible} can be, so it never allows this eviction")]
pub(crate) struct NeverAllows {
    pdb: String,
    desired: i32,
    possible: i32,
}

/// Evict (or delete) one pod and wait for it to be gone; `Err` says why it is still there.
async fn evict_one(
    client: &Client,
    node: &str,
    d: &Decision,
    a: &DrainArgs,
    deadline: Instant,
    mut present: tokio::sync::watch::Receiver<Snapshot<Pod>>,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), Stuck> {
    let pod = &d.pod;
    let deadline = a
        .pod_timeout
        .map(|t| deadline.min(Instant::now() + t))
        .unwrap_or(deadline);
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let dp = DeleteParams {
        grace_period_seconds: a.grace_period.map(|g| g as u32),
        ..Default::default()
    };
    let schedule = kiln_bundle::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut retry = 1;
    loop {
        let backoff = schedule.delay(retry);
        let result = if a.disable_eviction {
            api.delete(&pod.name, &dp).await.map(|_| ())
        } else {
            api.evict(
                &pod.name,
                &EvictParams {
                    delete_options: Some(dp.clone()),
                    post_options: PostParams::default(),
                },
            )
            .await
            .map(|_| ())
        };
        match result {
            Ok(()) => break,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 429 => {
                let waiting = pdb_verdict(client, pod).await?;
                events::node(
                    node,
                    Kind::Warning,
                    "EvictionBlocked",
                    "Drain",
                    format!(
                        "eviction of {pod} refused: {}",
                        waiting.clone().unwrap_or_else(|| s.message.clone())
                    ),
                );
                if Instant::now() >= deadline {
                    return Err(Stuck::Refused(s.message.clone()));
                }
                progress(&format!(
                    "{pod}: {}; retrying in {backoff:?}",
                    waiting.unwrap_or_else(|| format!("eviction refused ({})", s.message))
                ));
            }
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(Stuck::Failed(e));
                }
                progress(&format!("{pod}: {e}; retrying in {backoff:?}"));
            }
        }
        // Use the whole timeout, as kubectl does: the last wait ends at the deadline, and one more
        // attempt is made there.
        tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
        retry = retry.saturating_add(1);
    }
    progress(&format!(
        "{pod}: {}, waiting for it to terminate",
        if a.disable_eviction { "deleted" } else { "evicted" }
    ));
    // Gone means: the watch of the node's pods, once it has listed them, no longer has it (or has
    // a new pod of that name, with another UID).
    let key = format!("{}/{}", pod.namespace, pod.name);
    let gone = wait_for(&mut present, deadline, |s| {
        if let Some(refused) = &s.fatal {
            return Some(Err(Stuck::Unwatchable(refused.to_string())));
        }
        (s.synced
            && s.items
                .get(&key)
                .is_none_or(|p| p.metadata.uid.as_deref() != Some(pod.uid.as_str())))
        .then_some(Ok(()))
    })
    .await;
    match gone {
        Some(Ok(())) => {}
        Some(Err(why)) => return Err(why),
        None => return Err(Stuck::Terminating),
    }
    progress(&format!("{pod}: gone"));
    Ok(())
}

/// A PDB covering `pod` that can never allow its eviction while this node drains: no disruption
/// allowed, every pod it covers is on the same node and none is terminating (so no replacement can
/// become healthy elsewhere before the drain finishes). The PDB's name, if so.
/// The budget that blocks evicting `pod` and what waiting on it can bring: `Err(why)` when it can
/// never allow the eviction, `Ok(Some(why))` while it waits, `Ok(None)` when no budget explains the
/// refusal. Every budget of the namespace is considered, whatever its selector's form.
pub(crate) async fn pdb_verdict(client: &Client, pod: &PodRef) -> Result<Option<String>, NeverAllows> {
    use crate::pdb::{covered, verdict, Verdict};
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &pod.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let (Ok(budgets), Ok(all)) = (
        pdbs.list(&ListParams::default()).await,
        pods.list(&ListParams::default()).await,
    ) else {
        return Ok(None);
    };
    let Some(this) = all
        .items
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(pod.name.as_str()))
    else {
        return Ok(None);
    };
    let mut waiting = None;
    for pdb in &budgets.items {
        let cov = covered(pdb, &all.items);
        if !cov.iter().any(|p| std::ptr::eq(*p, this)) {
            continue;
        }
        let name = pdb.metadata.name.clone().unwrap_or_default();
        match verdict(pdb, &cov) {
            Verdict::Allows => {}
            Verdict::Never { possible, desired } => {
                return Err(NeverAllows {
                    pdb: name,
                    desired,
                    possible,
                })
            }
            Verdict::Waiting {
                healthy,
                possible,
                desired,
            } => {
                waiting = Some(format!(
                    "waiting for PodDisruptionBudget {name}: {healthy} of {possible} pods healthy, it needs more than {desired}"
                ))
            }
        }
    }
    Ok(waiting)
}
