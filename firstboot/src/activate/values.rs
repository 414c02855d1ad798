//! The node's values for the bundle's placeholders: host name, node IP, secrets.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::index::Index;

use crate::config::NodeConfig;

/// The labels that say which bundle a node runs: kubelet registers a new Node with them
/// (`--node-labels`), and the health check sets them on a Node that already existed.
pub fn bundle_labels(version: &str, digest: &Sha256) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            kiln_bundle::layout::labels::BUNDLE_VERSION.to_string(),
            version.to_string(),
        ),
        (kiln_bundle::layout::labels::BUNDLE_DIGEST.to_string(), digest.short()),
    ])
}

/// Values for the bundle's placeholders from the node configuration.
pub fn placeholder_values(
    root: &Path,
    index: &Index,
    cfg: &NodeConfig,
    digest: &Sha256,
) -> Result<BTreeMap<String, String>> {
    let n = &cfg.node;
    let mut v = BTreeMap::new();
    let needed: Vec<&str> = index.placeholders.iter().map(|p| p.name.as_str()).collect();
    for name in &needed {
        if let Some(host) = kiln_bundle::placeholder::registry_auth_host(name) {
            let auth = n.registry_auth.get(host).ok_or_else(|| {
                anyhow!("the node configuration lacks registryAuth[{host}] (the bundle's registry {host} needs credentials)")
            })?;
            v.insert(name.to_string(), auth.basic());
        }
    }
    if needed.iter().all(|n| v.contains_key(*n)) {
        return Ok(v);
    }
    let missing = n.missing_for_kubelet();
    if !missing.is_empty() {
        bail!(
            "the node configuration lacks {} (needed by the bundle's kubelet); sources read: {}",
            missing.join(", "),
            if cfg.sources.is_empty() {
                "none".to_string()
            } else {
                cfg.sources.join(", ")
            }
        );
    }
    let node_ip = match n.node_ip.as_deref() {
        None | Some("auto") => wait_for_default_route(NODE_IP_WAIT, default_route_address)?,
        Some(ip) => ip
            .parse::<std::net::IpAddr>()
            .map(|a| a.to_string())
            .map_err(|_| anyhow!("nodeIP `{ip}` is not an IP address or `auto`"))?,
    };
    let hostname = node_hostname(root, cfg)?;
    let mut labels = n.labels.clone();
    labels.extend(bundle_labels(&index.version, digest));
    v.insert("node-ip".into(), node_ip);
    v.insert("hostname".into(), hostname);
    v.insert(
        "node-labels".into(),
        labels
            .iter()
            .map(|(k, val)| format!("{k}={val}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    let taints = n.taints.clone().unwrap_or_default();
    v.insert(
        "register-with-taints".into(),
        crate::config::taints_yaml(&taints).map_err(|e| anyhow!("taints: {e}"))?,
    );
    v.insert("node-taints".into(), taints.join(","));
    v.insert("cluster-dns".into(), n.cluster_dns.clone().unwrap_or_default());
    v.insert("api-server".into(), n.api_server.clone().unwrap_or_default());
    v.insert(
        "cluster-ca".into(),
        n.cluster_ca.clone().unwrap_or_default().trim_end().to_string(),
    );
    v.insert("bootstrap-token".into(), n.bootstrap_token.clone().unwrap_or_default());
    if needed.contains(&"kube-proxy-token") {
        let t = n.kube_proxy_token.clone().ok_or_else(|| {
            anyhow!("the node configuration lacks kubeProxyToken (needed by the bundle's kube-proxy)")
        })?;
        v.insert("kube-proxy-token".into(), t);
    }
    Ok(v)
}

/// The node's name: the configured host name, else /etc/hostname.
pub(crate) fn node_hostname(root: &Path, cfg: &NodeConfig) -> Result<String> {
    match &cfg.node.hostname {
        Some(h) => Ok(h.clone()),
        None => fs::read_to_string(root.join("etc/hostname"))
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow!("no hostname: set it in user data (hostname/fqdn) or kiln.hostname")),
    }
}

/// How long `nodeIP: auto` waits for the node's network (DHCP) to give it a default route.
pub const NODE_IP_WAIT: Duration = Duration::from_secs(120);

/// `probe` until it finds an address or `timeout` passes; the error says how long it waited.
pub fn wait_for_default_route(timeout: Duration, mut probe: impl FnMut() -> Result<String>) -> Result<String> {
    let mut found = None;
    crate::system::poll(timeout, || {
        found = Some(probe()?);
        Ok(())
    })
    .map_err(|e| {
        anyhow!(
            "nodeIP auto: no default route after {}s ({e:#}); set nodeIP, or give the node a network with a default route",
            timeout.as_secs()
        )
    })?;
    Ok(found.expect("poll succeeded"))
}

/// The source address of the default route (no packet is sent).
pub(crate) fn default_route_address() -> Result<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").context("nodeIP auto: cannot open a socket")?;
    s.connect("192.0.2.1:9")
        .context("nodeIP auto: no default route; set nodeIP")?;
    Ok(s.local_addr()?.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ip_auto_waits_for_the_route_and_gives_up_naming_the_fix() {
        let mut tries = 0;
        let ip = wait_for_default_route(Duration::from_secs(10), || {
            tries += 1;
            if tries < 3 {
                bail!("network unreachable")
            }
            Ok("10.0.2.15".into())
        })
        .unwrap();
        assert_eq!((ip.as_str(), tries), ("10.0.2.15", 3));

        let e = wait_for_default_route(Duration::from_millis(300), || bail!("network unreachable")).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.starts_with("nodeIP auto: no default route after 0s") && e.contains("set nodeIP"),
            "{e}"
        );
    }
}
