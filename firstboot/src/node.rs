//! Whether the node joined its cluster: kubelet's kubeconfig (which kubelet writes once its TLS
//! bootstrap got it a client certificate) authenticates, and the Node object reports Ready. When it
//! did not, [`diagnose`] asks the API server with the bootstrap kubeconfig's own credentials and
//! names the cause in one line: the API server cannot be reached, or it refuses the bootstrap token.
//! Once Ready, [`reconcile_labels`] sets the bundle's labels on the Node with the same credentials.
//! The kubeconfigs are read as kubelet writes them: one cluster, one user, paths or inline data.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// Where kubelet keeps the kubeconfig it wrote after bootstrap, under its root directory.
pub const KUBELET_KUBECONFIG: &str = "kubeconfig";

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    cluster: RawCluster,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    user: RawUser,
}

#[derive(Debug, Default, Deserialize)]
struct RawCluster {
    server: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca: Option<String>,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawUser {
    token: Option<String>,
    #[serde(rename = "client-certificate")]
    cert: Option<String>,
    #[serde(rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(rename = "client-key")]
    key: Option<String>,
    #[serde(rename = "client-key-data")]
    key_data: Option<String>,
}

/// A kubeconfig reduced to what a request needs.
pub struct Kubeconfig {
    pub origin: String,
    pub server: String,
    ca_pem: Vec<u8>,
    token: Option<String>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

fn under_root(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

fn data_or_file(
    root: &Path,
    data: &Option<String>,
    file: &Option<String>,
    what: &str,
    origin: &str,
) -> Result<Option<Vec<u8>>> {
    use base64::Engine;
    if let Some(d) = data {
        return base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map(Some)
            .map_err(|e| anyhow!("{origin}: {what}-data is not base64: {e}"));
    }
    match file {
        Some(f) => {
            let p = under_root(root, f);
            std::fs::read(&p)
                .map(Some)
                .with_context(|| format!("{origin}: cannot read {what} {}", p.display()))
        }
        None => Ok(None),
    }
}

impl Kubeconfig {
    /// Read the kubeconfig at `path` (an absolute node path, resolved under `root`).
    pub fn load(root: &Path, path: &str) -> Result<Kubeconfig> {
        let file = under_root(root, path);
        let origin = path.to_string();
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let raw: RawConfig = kiln_bundle::yaml::from_str(&text, &origin)?;
        let cluster = raw
            .clusters
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("{origin}: no cluster"))?
            .cluster;
        let user = raw.users.into_iter().next().map(|u| u.user).unwrap_or_default();
        let server = cluster
            .server
            .ok_or_else(|| anyhow!("{origin}: the cluster has no server"))?;
        let ca_pem = data_or_file(root, &cluster.ca_data, &cluster.ca, "certificate-authority", &origin)?
            .ok_or_else(|| anyhow!("{origin}: the cluster has no certificate-authority"))?;
        let cert = data_or_file(root, &user.cert_data, &user.cert, "client-certificate", &origin)?;
        let key = data_or_file(root, &user.key_data, &user.key, "client-key", &origin)?;
        Ok(Kubeconfig {
            origin,
            server: server.trim_end_matches('/').to_string(),
            ca_pem,
            token: user.token,
            client: cert.zip(key),
        })
    }

    /// The cluster CA, PEM.
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// Whether it authenticates with a client certificate and key (kubelet's own identity).
    pub fn has_client_identity(&self) -> bool {
        self.client.is_some()
    }

    fn agent(&self, timeout: Duration) -> Result<ureq::Agent> {
        let mut roots = Vec::new();
        let mut chain = Vec::new();
        let mut key: Option<PrivateKey<'static>> = None;
        for item in ureq::tls::parse_pem(&self.ca_pem) {
            if let PemItem::Certificate(c) = item.map_err(|e| anyhow!("{}: the CA is not PEM: {e}", self.origin))? {
                roots.push(c);
            }
        }
        if roots.is_empty() {
            bail!("{}: the certificate authority holds no certificate", self.origin);
        }
        if let Some((cert, k)) = &self.client {
            for bytes in [cert, k] {
                for item in ureq::tls::parse_pem(bytes) {
                    match item.map_err(|e| anyhow!("{}: the client credentials are not PEM: {e}", self.origin))? {
                        PemItem::Certificate(c) => chain.push(c),
                        PemItem::PrivateKey(pk) => key = Some(pk),
                        _ => {}
                    }
                }
            }
        }
        let mut tls = TlsConfig::builder().root_certs(RootCerts::Specific(Arc::new(roots)));
        if let Some(key) = key {
            let chain: Vec<Certificate<'static>> = chain;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        Ok(ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into())
    }

    /// GET `path` on the API server: the status and up to 1 MiB of body.
    pub fn get(&self, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
        let agent = self.agent(timeout)?;
        let url = format!("{}{path}", self.server);
        let mut req = agent.get(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| anyhow!("{url}: {e}"))?;
        Self::read(resp, &url)
    }

    /// PATCH `path` with a JSON merge patch: the status and up to 1 MiB of body.
    pub fn merge_patch(&self, path: &str, patch: &serde_json::Value, timeout: Duration) -> Result<(u16, Vec<u8>)> {
        let agent = self.agent(timeout)?;
        let url = format!("{}{path}", self.server);
        let mut req = agent.patch(&url).header("Content-Type", "application/merge-patch+json");
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let resp = req.send(patch.to_string()).map_err(|e| anyhow!("{url}: {e}"))?;
        Self::read(resp, &url)
    }

    fn read(mut resp: ureq::http::Response<ureq::Body>, url: &str) -> Result<(u16, Vec<u8>)> {
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| anyhow!("{url}: {e}"))?;
        Ok((status, body))
    }
}

/// The Node object `name` once it is Ready, through `kc` (kubelet's own credentials may read its
/// Node). With `boot_id` (this machine's), only a Ready status that kubelet reported in this boot
/// counts: a machine reimaged or rebooted under its existing Node finds the last boot's Ready
/// condition there until the node controller marks it Unknown (40 s).
pub fn node_ready(kc: &Kubeconfig, name: &str, boot_id: Option<&str>) -> Result<serde_json::Value> {
    let (status, body) = kc.get(&format!("/api/v1/nodes/{name}"), Duration::from_secs(5))?;
    match status {
        200 => {}
        404 => bail!("Node {name} is not registered yet"),
        // Credentials that may not read their own Node will not come to.
        401 | 403 => {
            return Err(Refused(format!(
                "the API server answered {status} for Node {name} to {}'s credentials: {}",
                kc.origin,
                message(&body)
            ))
            .into())
        }
        s => bail!("the API server answered {s} for Node {name}: {}", message(&body)),
    }
    let node: serde_json::Value = serde_json::from_slice(&body).context("the Node object is not JSON")?;
    let ready = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready");
    let reported = node["status"]["nodeInfo"]["bootID"].as_str().unwrap_or_default();
    match ready {
        Some(c) if c["status"] == "True" => match boot_id {
            Some(this) if reported != this => bail!(
                "Node {name} is Ready from an earlier boot (bootID {}), kubelet has not reported this boot ({this}) yet",
                if reported.is_empty() { "none" } else { reported }
            ),
            _ => Ok(node),
        },
        Some(c) => bail!(
            "Node {name} is not Ready: {}",
            c["message"].as_str().unwrap_or("no message")
        ),
        None => bail!("Node {name} reports no Ready condition yet"),
    }
}

/// Whether the Node's Ready status was reported at or after `since` (RFC 3339, UTC, as the API
/// server writes `lastHeartbeatTime`): a kubelet restarted within the same boot reports at its
/// start, so a Ready older than the restart is the kubelet that was stopped.
pub fn reported_since(node: &serde_json::Value, since: &str) -> Result<()> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let beat = node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["lastHeartbeatTime"].as_str())
        .unwrap_or_default();
    // Both are `YYYY-MM-DDTHH:MM:SSZ`: their order is the strings' order.
    if beat.len() == since.len() && beat >= since {
        return Ok(());
    }
    bail!(
        "Node {name} is Ready as reported at {} by the kubelet that ran before, not yet by the one started at {since}",
        if beat.is_empty() { "no time" } else { beat }
    )
}

/// A Status's message, or the start of whatever else the API server sent.
fn message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|b| b["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

/// The API server refused a request outright (401, 403, 422): waiting will not help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Set the labels `want` on Node `node` (as [`node_ready`] returned it) where they differ, through
/// `kc`: kubelet's own credentials, which NodeRestriction lets change labels on their own Node
/// outside the `kubernetes.io` and `k8s.io` namespaces (so `kiln.dev/` labels). Each change as
/// `key: old -> new`.
pub fn reconcile_labels(
    kc: &Kubeconfig,
    node: &serde_json::Value,
    want: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<String>> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let have = &node["metadata"]["labels"];
    let changes: Vec<(&String, &String)> = want
        .iter()
        .filter(|(k, v)| have[k.as_str()].as_str() != Some(v.as_str()))
        .collect();
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let labels: serde_json::Map<String, serde_json::Value> = changes
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    let patch = serde_json::json!({"metadata": {"labels": labels}});
    let (status, body) = kc.merge_patch(&format!("/api/v1/nodes/{name}"), &patch, Duration::from_secs(5))?;
    match status {
        200 => {}
        403 | 422 => {
            return Err(Refused(format!(
                "the API server refuses to set {} on Node {name} with {}'s credentials ({status}): {}",
                changes.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", "),
                kc.origin,
                message(&body)
            ))
            .into())
        }
        s => bail!(
            "the API server answered {s} to the labels of Node {name}: {}",
            message(&body)
        ),
    }
    Ok(changes
        .iter()
        .map(|(k, v)| format!("{k}: {} -> {v}", have[k.as_str()].as_str().unwrap_or("<none>")))
        .collect())
}

/// Why a node did not join, from the bootstrap credentials: the API server cannot be reached, or
/// it refuses the token; `None` when both look fine (the cause is elsewhere, e.g. kubelet).
pub fn diagnose(bootstrap: &Kubeconfig) -> Option<String> {
    match bootstrap.get("/version", Duration::from_secs(5)) {
        Err(e) => Some(format!("cannot reach the API server at {}: {e:#}", bootstrap.server)),
        Ok((401, _)) => Some(format!(
            "the API server at {} refused the bootstrap token (401 Unauthorized): check bootstrapToken",
            bootstrap.server
        )),
        Ok((403, _)) => Some(format!(
            "the API server at {} accepted the bootstrap token but forbids it (403): check the token's groups and RBAC",
            bootstrap.server
        )),
        Ok(_) => None,
    }
}
