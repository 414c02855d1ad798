//! Waiting on the API with one watch per question instead of a list every few hundred
//! milliseconds: a [`Mirror`] lists the objects once, then follows a watch from that
//! resourceVersion (kube-runtime's watcher: it re-watches when a watch closes and lists again when
//! the resourceVersion has expired, with backoff), and wakes its waiters on every change.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Instant;

use futures::StreamExt;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a mirror has seen: the objects by `namespace/name`, once the first list is in.
#[derive(Debug, Clone)]
pub struct Snapshot<K> {
    /// The first list arrived: `items` is the whole set, not a part of it.
    pub synced: bool,
    pub items: BTreeMap<String, K>,
    /// The last error of the list or watch (cleared by the next event), for messages.
    pub error: Option<String>,
    /// An error waiting cannot outlast (the API refused the list or watch: 401, 403, 404, 400,
    /// as kubectl would print it); the mirror has stopped.
    pub fatal: Option<String>,
}

impl<K> Default for Snapshot<K> {
    fn default() -> Self {
        Snapshot {
            synced: false,
            items: BTreeMap::new(),
            error: None,
            fatal: None,
        }
    }
}

/// A live copy of the objects an API list returns, kept by a background task that stops when the
/// mirror is dropped.
pub struct Mirror<K> {
    rx: watch::Receiver<Snapshot<K>>,
    task: JoinHandle<()>,
}

impl<K> Drop for Mirror<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key<K: Resource>(o: &K) -> String {
    match o.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", o.name_any()),
        None => o.name_any(),
    }
}

impl<K> Mirror<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Start mirroring what `api` lists with `config`'s selectors.
    pub fn start(api: Api<K>, config: watcher::Config) -> Mirror<K> {
        let (tx, rx) = watch::channel(Snapshot::default());
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            let mut buffer = BTreeMap::new();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(Event::Init) => buffer.clear(),
                    Ok(Event::InitApply(o)) => {
                        buffer.insert(key(&o), o);
                    }
                    Ok(Event::InitDone) => tx.send_modify(|s| {
                        s.items = std::mem::take(&mut buffer);
                        s.synced = true;
                        s.error = None;
                    }),
                    Ok(Event::Apply(o)) => tx.send_modify(|s| {
                        s.items.insert(key(&o), o);
                        s.error = None;
                    }),
                    Ok(Event::Delete(o)) => tx.send_modify(|s| {
                        s.items.remove(&key(&o));
                        s.error = None;
                    }),
                    Err(e) => {
                        if let Some(refused) = refusal(&e) {
                            tx.send_modify(|s| s.fatal = Some(refused));
                            return;
                        }
                        tx.send_modify(|s| s.error = Some(e.to_string()))
                    }
                }
            }
        });
        Mirror { rx, task }
    }

    /// A receiver of every change, for waiting in several places at once.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot<K>> {
        self.rx.clone()
    }
}

/// The API's refusal to list or watch, which no retry changes (a 5xx, a 429, a broken connection or
/// an expired resourceVersion are retried by the watcher instead).
fn refusal(e: &watcher::Error) -> Option<String> {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.as_ref(),
        watcher::Error::WatchError(s) => s.as_ref(),
        _ => return None,
    };
    matches!(status.code, 400 | 401 | 403 | 404).then(|| {
        let reason = if status.reason.is_empty() {
            "Unknown"
        } else {
            &status.reason
        };
        format!("Error from server ({reason}): {}", status.message)
    })
}

/// Wait until `check` says yes (`Some`) for the mirrored objects, or until `deadline` (`None`).
/// `check` sees every state the mirror reaches after it was called, the current one first.
pub async fn wait_for<K, T>(
    rx: &mut watch::Receiver<Snapshot<K>>,
    deadline: Instant,
    mut check: impl FnMut(&Snapshot<K>) -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(t) = check(&rx.borrow_and_update()) {
            return Some(t);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match tokio::time::timeout(left, rx.changed()).await {
            Ok(Ok(())) => {}
            // The mirror is gone (dropped) or the time is up: one last look, then give up.
            Ok(Err(_)) | Err(_) => return check(&rx.borrow()),
        }
    }
}
