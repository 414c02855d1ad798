//! Canary and soak: the roll's first `--canary N` nodes go first; then, for `--soak`, the nodes
//! they became (the replacements, or in place the same nodes) are watched: each stays Ready, no
//! container on them restarts more than it had at the soak's start, and at its end the optional
//! `--soak-check` command must succeed. Only then does the rest of the pool follow; a failed check
//! halts the roll with the reason, the rest untouched.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client};

use super::RollArgs;
use crate::watch::Snapshot;

/// How often the soak looks at the canary nodes and their pods.
const SOAK_POLL: Duration = Duration::from_secs(2);

/// Restart counts of every container on `nodes`: `(node, namespace/pod, container) -> restarts`.
async fn restarts(client: &Client, nodes: &[String]) -> Result<BTreeMap<(String, String, String), i32>> {
    let api = Api::<Pod>::all(client.clone());
    let mut out = BTreeMap::new();
    for node in nodes {
        let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let pods = crate::retry(|| api.list(&lp))
            .await
            .with_context(|| format!("cannot list the pods on canary {node}"))?;
        for p in pods.items {
            let pod = format!(
                "{}/{}",
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default()
            );
            for c in p.status.and_then(|s| s.container_statuses).unwrap_or_default() {
                out.insert((node.clone(), pod.clone(), c.name), c.restart_count);
            }
        }
    }
    Ok(out)
}

/// Why `node` is not Ready in `s`, if it is not.
fn not_ready(s: &Snapshot<Node>, node: &str) -> Option<String> {
    let Some(n) = s.items.get(node) else {
        return Some("it is gone from the pool".into());
    };
    let ready = n
        .status
        .as_ref()
        .and_then(|st| st.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!(
            "Ready is {} ({})",
            c.status,
            c.message.clone().unwrap_or_else(|| "no message".into())
        )),
        None => Some("it reports no Ready condition".into()),
    }
}

/// Soak the canary `nodes` for `a.soak`; an error says which check failed.
pub(crate) async fn soak(
    client: &Client,
    a: &RollArgs,
    nodes: &[String],
    pool: &tokio::sync::watch::Receiver<Snapshot<Node>>,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let shown = nodes.join(", ");
    // The baseline first: once the line says the soak began, every later restart counts.
    let baseline = restarts(client, nodes).await?;
    progress(&format!(
        "canary {shown}: soaking for {:?} before the rest of the pool (Ready throughout, no container restarts{})",
        a.soak,
        if a.soak_check.is_some() {
            ", then the soak check"
        } else {
            ""
        }
    ));
    let deadline = Instant::now() + a.soak;
    loop {
        let snapshot = pool.borrow().clone();
        for n in nodes {
            if let Some(why) = not_ready(&snapshot, n) {
                bail!("canary {n} is not Ready during the soak: {why}");
            }
        }
        for ((node, pod, container), count) in restarts(client, nodes).await? {
            let before = baseline
                .get(&(node.clone(), pod.clone(), container.clone()))
                .copied()
                .unwrap_or(0);
            if count > before {
                bail!("container {container} of pod {pod} on canary {node} restarted during the soak ({before} → {count} restarts)");
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(SOAK_POLL.min(left)).await;
    }
    if let Some(check) = &a.soak_check {
        let env = [
            ("KILN_CANARY_NODES", shown.as_str()),
            ("KILN_TARGET_BUNDLE", a.target.as_str()),
            ("KILN_SELECTOR", a.selector.as_str()),
        ];
        check.run("soak check", &env, a.command_timeout).await?;
    }
    Ok(())
}
