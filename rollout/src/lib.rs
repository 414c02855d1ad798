//! kubectl-kiln: the Kubernetes side of replacing nodes. Planning is pure ([`plan`]); [`drain`]
//! and [`status`] talk to the API through kube-rs.

pub mod commands;
pub mod drain;
pub mod events;
pub mod lease;
pub mod metrics;
pub mod pdb;
pub mod plan;
pub mod replace;
pub mod status;
pub mod watch;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// An error as kubectl words it: `Error from server (NotFound): nodes "nope" not found` for the
/// API's refusals, `Unable to connect to the server: ...` when it cannot be reached, `error: ...`
/// for everything else.
pub fn kubectl_error(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<kube::core::Status>() {
            let reason = if s.reason.is_empty() { "Unknown" } else { &s.reason };
            return format!("Error from server ({reason}): {}", s.message);
        }
        if let Some(k) = cause.downcast_ref::<kube::Error>() {
            match k {
                kube::Error::Api(s) => {
                    let reason = if s.reason.is_empty() { "Unknown" } else { &s.reason };
                    return format!("Error from server ({reason}): {}", s.message);
                }
                kube::Error::HyperError(_) | kube::Error::Service(_) => {
                    let root = e.chain().last().map(|c| c.to_string()).unwrap_or_default();
                    return format!("Unable to connect to the server: {root}");
                }
                _ => {}
            }
        }
    }
    format!("error: {e:#}")
}

/// A client configured as kubectl would be: `--kubeconfig`, else `KUBECONFIG`, else ~/.kube/config,
/// with `--context`; in a Pod with none of these, the Pod's ServiceAccount (in-cluster config:
/// `KUBERNETES_SERVICE_HOST`/`_PORT` and the token and CA under
/// `/var/run/secrets/kubernetes.io/serviceaccount`).
pub async fn client(kubeconfig: Option<&std::path::Path>, context: Option<&str>) -> Result<Client> {
    if kubeconfig.is_none() && context.is_none() && in_cluster() {
        let mut config = Config::incluster().context("cannot use the Pod's ServiceAccount (in-cluster config)")?;
        config.default_retry = false;
        return Client::try_from(config).context("cannot create the Kubernetes client");
    }
    let kc = match kubeconfig {
        Some(p) => Kubeconfig::read_from(p).with_context(|| format!("cannot read kubeconfig {}", p.display()))?,
        None => Kubeconfig::read().context("cannot read a kubeconfig (KUBECONFIG or ~/.kube/config)")?,
    };
    let opts = KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    let mut config = Config::from_custom_kubeconfig(kc, &opts)
        .await
        .context("invalid kubeconfig")?;
    // kiln retries evictions itself: a 429 from a PodDisruptionBudget is a signal it inspects (to spot
    // a budget that can never allow the eviction), not something to retry blindly inside the client.
    config.default_retry = false;
    Client::try_from(config).context("cannot create the Kubernetes client")
}

/// No kubeconfig anywhere kubectl would look, and the environment a Pod gets.
fn in_cluster() -> bool {
    let home_config = std::env::var_os("HOME").is_some_and(|h| std::path::Path::new(&h).join(".kube/config").exists());
    std::env::var_os("KUBECONFIG").is_none() && !home_config && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// Run an idempotent API call again when it fails transiently (a 5xx, a 429 that is not a
/// disruption budget's refusal, or a broken connection): up to 6 attempts, backing off from 100 ms.
pub async fn retry<T, F, Fut>(mut call: F) -> kube::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    let backoff =
        kiln_bundle::backoff::Backoff::new(std::time::Duration::from_millis(100), std::time::Duration::from_secs(5));
    for retry in 1..=5 {
        match call().await {
            Err(e) if transient(&e) => {
                let wait = backoff.delay(retry);
                tracing::debug!("retrying in {wait:?}: {e}");
                tokio::time::sleep(wait).await;
            }
            r => return r,
        }
    }
    call().await
}

fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}
