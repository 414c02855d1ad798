//! One roll per pool at a time: a `coordination.k8s.io/v1` Lease per selector, held and renewed by
//! the roll, as Kubernetes' own leader election holds its leases. A second roll of the same pool
//! (another operator, a CI job) is refused and told who holds it; a lease its holder stopped
//! renewing is taken over once its duration has passed since the last renewal, or at once when the
//! holder was a process on this host that is gone (a roll interrupted and started again).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a lease stays valid after its last renewal; the roll renews it every third of that.
pub const LEASE_DURATION: Duration = Duration::from_secs(60);
/// The namespace kiln keeps its roll leases in unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "kube-system";
/// Annotation on the lease: the selector it locks, for people reading `kubectl get lease`.
pub const SELECTOR_ANNOTATION: &str = "kiln.dev/selector";
/// Annotation on the lease: the pool's roll is paused, by whom and when (`WHO at RFC3339`). Set
/// and cleared by `kubectl kiln roll pause|resume`; a roll holding the lease reads it every
/// [`PAUSE_POLL`] and starts no new node while it is there.
pub const PAUSED_ANNOTATION: &str = "kiln.dev/roll-paused";
/// Annotation on the lease: why the pool's last roll halted (`REASON (WHO at RFC3339)`), written
/// when a roll releases the lease after a halt and cleared when the next one starts, so `roll status`
/// tells why from anywhere after the roll's process is gone (a halt on a canary's soak, or a lost
/// lease, is on no node's annotations).
pub const HALTED_ANNOTATION: &str = "kiln.dev/roll-halted";
/// How often a running roll reads its lease for a pause (and renews it when due).
pub const PAUSE_POLL: Duration = Duration::from_secs(2);

/// The lease name for a pool: `kiln-roll-` and a digest of the selector (whitespace removed), a
/// valid object name whatever the selector's characters.
pub fn lease_name(selector: &str) -> String {
    let norm: String = selector.chars().filter(|c| !c.is_whitespace()).collect();
    format!(
        "kiln-roll-{}",
        &kiln_bundle::digest::Sha256::of(norm.as_bytes()).hex()[..16]
    )
}

/// Who this roll is, for the lease's holderIdentity: `user@host pid N` (in a Pod, the host name
/// is the Pod's name).
pub fn identity() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{} pid {}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A holder that was a process on this host which no longer runs (a roll killed by Ctrl-C or
/// SIGKILL): its lease need not be waited out.
fn dead_here(holder: &str) -> bool {
    let Some((who, pid)) = holder.rsplit_once(" pid ") else {
        return false;
    };
    let here = who.rsplit_once('@').is_some_and(|(_, host)| host == hostname());
    here && pid
        .parse::<u32>()
        .is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
}

/// A held lease. Dropping it stops renewing (the lease then expires); [`PoolLease::release`] frees
/// it at once.
pub struct PoolLease {
    api: Api<Lease>,
    name: String,
    holder: String,
    lost: watch::Receiver<Option<String>>,
    paused: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Seconds since the lease was last renewed, and whether its holder still counts.
fn held_by(l: &Lease, at: Timestamp) -> Option<(String, f64)> {
    let spec = l.spec.as_ref()?;
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let duration = spec.lease_duration_seconds.unwrap_or(0) as f64;
    let since = at.duration_since(renewed).as_secs_f64();
    (since < duration).then_some((holder, since))
}

impl PoolLease {
    /// Take the lease for `selector` in `namespace`, or say who holds it.
    pub async fn acquire(client: &Client, namespace: &str, selector: &str) -> Result<PoolLease> {
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        let name = lease_name(selector);
        let holder = identity();
        let what = format!("Lease {namespace}/{name}");
        // A conflict means someone else wrote the lease between our read and our write: read again.
        for _ in 0..5 {
            let current = crate::retry(|| api.get_opt(&name))
                .await
                .with_context(|| format!("cannot read {what}"))?;
            let mut lease = match current {
                None => Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        annotations: Some([(SELECTOR_ANNOTATION.to_string(), selector.to_string())].into()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                },
                Some(l) => {
                    let held = held_by(&l, Timestamp::now()).filter(|(who, _)| !dead_here(who));
                    if let Some((who, since)) = held {
                        let left = LEASE_DURATION.as_secs_f64() - since;
                        bail!(
                            "the pool {selector:?} is being rolled by {who} ({what}, renewed {since:.0}s ago); \
                             wait for that roll to end, or for the lease to expire {left:.0}s after its last renewal"
                        );
                    }
                    let mut l = l;
                    let spec = l.spec.get_or_insert_with(Default::default);
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    l
                }
            };
            // A new roll: the last one's halt is history (its Events keep it).
            if let Some(notes) = lease.metadata.annotations.as_mut() {
                notes.remove(HALTED_ANNOTATION);
            }
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.holder_identity = Some(holder.clone());
            spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
            spec.acquire_time = Some(now());
            spec.renew_time = Some(now());
            let written = if lease.metadata.resource_version.is_some() {
                api.replace(&name, &PostParams::default(), &lease).await
            } else {
                api.create(&PostParams::default(), &lease).await
            };
            match written {
                Ok(l) => {
                    let paused = paused_by(&l);
                    return Ok(Self::renewing(api, name, holder, paused));
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot take {what}")),
            }
        }
        bail!("cannot take {what}: it kept changing while kiln tried")
    }

    fn renewing(api: Api<Lease>, name: String, holder: String, paused_now: Option<String>) -> PoolLease {
        let (tx, lost) = watch::channel(None);
        let (paused_tx, paused) = watch::channel(paused_now);
        let (a, n, h) = (api.clone(), name.clone(), holder.clone());
        let task = tokio::spawn(async move {
            let mut last = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(PAUSE_POLL).await;
                let due = last.elapsed() >= LEASE_DURATION / 3;
                match renew(&a, &n, &h, due).await {
                    Ok(pause) => {
                        paused_tx.send_if_modified(|p| {
                            let changed = *p != pause;
                            *p = pause;
                            changed
                        });
                        if due {
                            last = tokio::time::Instant::now();
                        }
                    }
                    Err(Renew::Lost(why)) => {
                        tx.send_replace(Some(why));
                        return;
                    }
                    Err(Renew::Failed(e)) if last.elapsed() >= LEASE_DURATION => {
                        tx.send_replace(Some(format!("could not renew the lease for {LEASE_DURATION:?}: {e}")));
                        return;
                    }
                    Err(Renew::Failed(e)) => tracing::warn!("renewing Lease {n}: {e}; trying again"),
                }
            }
        });
        PoolLease {
            api,
            name,
            holder,
            lost,
            paused,
            task,
        }
    }

    /// Why the lease was lost, once it is: the roll must stop starting new work.
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Who paused the pool's roll and when, while it is paused (read every [`PAUSE_POLL`]).
    pub fn paused(&self) -> watch::Receiver<Option<String>> {
        self.paused.clone()
    }

    /// Free the lease for the next roll (holder cleared), if it is still ours, recording why the
    /// roll `halted` ([`HALTED_ANNOTATION`]) or, when it did not, clearing an earlier roll's.
    pub async fn release(self, halted: Option<&str>) -> Result<()> {
        self.task.abort();
        let Some(mut l) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = l.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        let notes = l.metadata.annotations.get_or_insert_with(Default::default);
        match halted {
            Some(why) => notes.insert(
                HALTED_ANNOTATION.to_string(),
                format!("{why} ({} at {})", self.holder, now_seconds()),
            ),
            None => notes.remove(HALTED_ANNOTATION),
        };
        self.api.replace(&self.name, &PostParams::default(), &l).await?;
        Ok(())
    }
}

/// The pause annotation of a lease.
fn paused_by(l: &Lease) -> Option<String> {
    annotation(l, PAUSED_ANNOTATION)
}

fn annotation(l: &Lease, key: &str) -> Option<String> {
    l.metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned()
}

/// Now, to the second (annotations are read by people).
fn now_seconds() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// A pool's lease as `kubectl kiln roll status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseView {
    pub namespace: String,
    pub name: String,
    /// The roll holding it, while its lease is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Seconds since the holder last renewed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed_seconds_ago: Option<f64>,
    /// Who paused the pool's roll and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Why the pool's last roll halted, by whom and when ([`HALTED_ANNOTATION`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
}

/// The lease of the pool `selector`, if it exists.
pub async fn view(client: &Client, namespace: &str, selector: &str) -> Result<Option<LeaseView>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let name = lease_name(selector);
    let Some(l) = crate::retry(|| api.get_opt(&name))
        .await
        .with_context(|| format!("cannot read Lease {namespace}/{name}"))?
    else {
        return Ok(None);
    };
    let held = held_by(&l, Timestamp::now());
    Ok(Some(LeaseView {
        namespace: namespace.to_string(),
        name,
        holder: held.as_ref().map(|(h, _)| h.clone()),
        renewed_seconds_ago: held.map(|(_, s)| s),
        paused: paused_by(&l),
        halted: annotation(&l, HALTED_ANNOTATION),
    }))
}

/// Pause (`Some(who)`) or resume (`None`) the roll of the pool `selector`: the annotation on its
/// lease, which is created (held by nobody) when no roll has run yet, so that a roll started
/// later starts paused. Pausing a paused pool and resuming one that is not paused are errors, as
/// `kubectl rollout pause|resume` has them. Returns the annotation as written.
pub async fn set_paused(client: &Client, namespace: &str, selector: &str, by: Option<&str>) -> Result<Option<String>> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let name = lease_name(selector);
    let what = format!("Lease {namespace}/{name}");
    for _ in 0..5 {
        let current = crate::retry(|| api.get_opt(&name))
            .await
            .with_context(|| format!("cannot read {what}"))?;
        let was = current.as_ref().and_then(paused_by);
        let value = match (by, &was) {
            (Some(_), Some(w)) => bail!("the roll of pool {selector:?} is already paused ({w})"),
            (None, None) => bail!("the roll of pool {selector:?} is not paused"),
            (Some(who), None) => Some(format!("{who} at {}", now_seconds())),
            (None, Some(_)) => None,
        };
        let mut lease = current.unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                annotations: Some([(SELECTOR_ANNOTATION.to_string(), selector.to_string())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                lease_transitions: Some(0),
                ..Default::default()
            }),
        });
        let notes = lease.metadata.annotations.get_or_insert_with(Default::default);
        match &value {
            Some(v) => notes.insert(PAUSED_ANNOTATION.to_string(), v.clone()),
            None => notes.remove(PAUSED_ANNOTATION),
        };
        let written = if lease.metadata.resource_version.is_some() {
            api.replace(&name, &PostParams::default(), &lease).await
        } else {
            api.create(&PostParams::default(), &lease).await
        };
        match written {
            Ok(_) => return Ok(value),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot write {what}")),
        }
    }
    bail!("cannot write {what}: it kept changing while kiln tried")
}

enum Renew {
    /// Someone else holds it now, or it was deleted.
    Lost(String),
    /// The API could not be asked; the lease may still be ours.
    Failed(kube::Error),
}

/// Read the lease: still ours, and paused by whom; renew it when `due`.
async fn renew(api: &Api<Lease>, name: &str, holder: &str, due: bool) -> Result<Option<String>, Renew> {
    let Some(mut l) = api.get_opt(name).await.map_err(Renew::Failed)? else {
        return Err(Renew::Lost(format!("the roll's Lease {name} was deleted")));
    };
    let paused = paused_by(&l);
    let spec = l.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(holder) {
        return Err(Renew::Lost(format!(
            "the roll's Lease {name} was taken over by {}",
            spec.holder_identity.as_deref().unwrap_or("nobody")
        )));
    }
    if !due {
        return Ok(paused);
    }
    spec.renew_time = Some(now());
    match api.replace(name, &PostParams::default(), &l).await {
        Ok(_) => Ok(paused),
        // Written by someone else since the read: the next round reads who holds it.
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Renew::Failed(kube::Error::Api(s))),
        Err(e) => Err(Renew::Failed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_object_names_and_ignore_spacing() {
        let a = lease_name("pool=blue, zone in (a,b)");
        assert_eq!(a, lease_name("pool=blue,zonein(a,b)"));
        assert_eq!(a.len(), "kiln-roll-".len() + 16);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_ne!(a, lease_name("pool=green"));
    }

    #[test]
    fn a_lease_counts_until_its_duration_after_the_last_renewal() {
        let t = Timestamp::now();
        let lease = |holder: Option<&str>, ago: i64| Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(60),
                renew_time: Some(MicroTime(t - k8s_openapi::jiff::SignedDuration::from_secs(ago))),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(held_by(&lease(Some("a"), 10), t).map(|h| h.0), Some("a".into()));
        assert!(held_by(&lease(Some("a"), 61), t).is_none(), "expired");
        assert!(held_by(&lease(None, 1), t).is_none(), "released");
        assert!(held_by(&lease(Some(""), 1), t).is_none(), "released");
    }

    #[test]
    fn a_holder_gone_from_this_host_is_dead_one_elsewhere_is_not() {
        let host = hostname();
        assert!(!dead_here(&format!("me@{host} pid {}", std::process::id())));
        assert!(dead_here(&format!("me@{host} pid 4294967295")));
        assert!(!dead_here("me@another-host pid 4294967295"));
        assert!(!dead_here("written by something else"));
    }
}
