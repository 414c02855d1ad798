//! Kubernetes Events (`events.k8s.io/v1`) on the Nodes kiln drains, replaces and rolls, so that
//! `kubectl describe node` and `kubectl get events` tell the story: cordoned, eviction blocked
//! by a budget, drained, replacement Ready, deleted, decommissioned, reprovisioned, halted.
//!
//! Written as kubelet writes its own: kube-rs's [`Recorder`] turns a repeat of the same event
//! (same node, reason and action) within six minutes into one Event with a growing `series`
//! count instead of a new object, and a spam filter per node (client-go's defaults: a burst of
//! 25, then one more every five minutes) drops the rest, so a 1,000-node roll cannot flood the
//! API. Events are sent from a background task: a roll never waits on them, and an Event the API
//! refuses (RBAC without `events.k8s.io` `create`, say) is a warning, never a failure of the roll.
//!
//! One recorder per process, set up by [`start`]; before that (a library caller that did not ask
//! for Events) [`node`] records nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tokio::sync::mpsc;

/// `reportingController` of kiln's Events.
pub const CONTROLLER: &str = "kiln.dev/kubectl-kiln";
/// Events per node before the spam filter drops them, and how often it lets one more through.
pub const BURST: u32 = 25;
pub const REFILL: Duration = Duration::from_secs(300);

/// Normal or Warning, as `kubectl describe` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

struct Sent {
    node: String,
    kind: Kind,
    reason: &'static str,
    action: &'static str,
    note: String,
}

static SENDER: OnceLock<mpsc::UnboundedSender<Sent>> = OnceLock::new();

/// The recorder's task; [`Writer::finish`] waits until what was sent is written.
pub struct Writer {
    _task: tokio::task::JoinHandle<()>,
}

/// What the recorder did, for the end of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub written: u64,
    /// Dropped by the spam filter.
    pub dropped: u64,
    /// Refused by the API (or it could not be reached).
    pub failed: u64,
}

/// Events sent and not yet handled by the task.
static PENDING: AtomicU64 = AtomicU64::new(0);
static STATS: Mutex<Stats> = Mutex::new(Stats {
    written: 0,
    dropped: 0,
    failed: 0,
});

/// Start the process's recorder (once; later calls return `None`).
pub fn start(client: &Client) -> Option<Writer> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Sent>();
    SENDER.set(tx).ok()?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER.into(),
            instance: Some(crate::lease::identity()),
        },
    );
    let task = tokio::spawn(async move {
        let mut buckets: HashMap<String, (f64, Instant)> = HashMap::new();
        while let Some(ev) = rx.recv().await {
            let outcome = if allow(&mut buckets, &ev.node, Instant::now()) {
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(ev.node.clone()),
                    // As kubelet does for its Node's events: `kubectl describe node` finds them by name.
                    uid: Some(ev.node.clone()),
                    ..Default::default()
                };
                let event = Event {
                    type_: match ev.kind {
                        Kind::Normal => EventType::Normal,
                        Kind::Warning => EventType::Warning,
                    },
                    reason: ev.reason.into(),
                    note: Some(ev.note.chars().take(1024).collect()),
                    action: ev.action.into(),
                    secondary: None,
                };
                match recorder.publish(&event, &reference).await {
                    Ok(()) => Some(true),
                    Err(e) => {
                        tracing::warn!("cannot write the {} Event on node {}: {e}", ev.reason, ev.node);
                        Some(false)
                    }
                }
            } else {
                None
            };
            {
                let mut st = STATS.lock().unwrap();
                match outcome {
                    Some(true) => st.written += 1,
                    Some(false) => st.failed += 1,
                    None => st.dropped += 1,
                }
            }
            PENDING.fetch_sub(1, Ordering::SeqCst);
        }
    });
    Some(Writer { _task: task })
}

impl Writer {
    /// Wait (at most `within`) until every Event sent so far is handled; what the recorder did.
    pub async fn finish(self, within: Duration) -> Stats {
        let deadline = Instant::now() + within;
        while PENDING.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *STATS.lock().unwrap()
    }
}

/// The token bucket of one node: a burst of [`BURST`], refilled one per [`REFILL`].
fn allow(buckets: &mut HashMap<String, (f64, Instant)>, node: &str, now: Instant) -> bool {
    let (tokens, at) = buckets.entry(node.to_string()).or_insert((BURST as f64, now));
    let refill = now.duration_since(*at).as_secs_f64() / REFILL.as_secs_f64();
    *tokens = (*tokens + refill).min(BURST as f64);
    *at = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

/// Record an Event on `node` (nothing when no recorder was started).
pub fn node(node: &str, kind: Kind, reason: &'static str, action: &'static str, note: impl Into<String>) {
    if let Some(tx) = SENDER.get() {
        PENDING.fetch_add(1, Ordering::SeqCst);
        let sent = tx.send(Sent {
            node: node.to_string(),
            kind,
            reason,
            action,
            note: note.into(),
        });
        if sent.is_err() {
            PENDING.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_gets_a_burst_then_one_event_per_refill() {
        let mut b = HashMap::new();
        let t = Instant::now();
        for _ in 0..BURST {
            assert!(allow(&mut b, "n", t));
        }
        assert!(!allow(&mut b, "n", t), "the burst is spent");
        assert!(allow(&mut b, "other", t), "each node has its own bucket");
        assert!(!allow(&mut b, "n", t + REFILL / 2));
        assert!(allow(&mut b, "n", t + REFILL + REFILL / 2), "one more after a refill");
        assert!(!allow(&mut b, "n", t + REFILL + REFILL / 2));
    }
}
