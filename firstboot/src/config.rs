//! The node's configuration: the `kiln:` section, merged from every source in order.
//!
//! Sources, in order (later ones win): `/etc/kiln/node.yaml`, `/etc/kiln/node.d/*.yaml` (sorted),
//! `kiln.config=` from the kernel command line, then the first datasource with user data (a NoCloud
//! seed directory, a `cidata` filesystem, `ds=nocloud;s=URL`, or EC2 IMDSv2). Merge rule: a field set
//! by a later source replaces the earlier value; `labels` and `kubeletSettings` merge key by key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `kiln:` section of user data, or a whole `node.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSection {
    /// `https://host:6443`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<String>,
    /// PEM of the cluster CA.
    #[serde(default, rename = "clusterCA", skip_serializing_if = "Option::is_none")]
    pub cluster_ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<String>,
    /// A whole bootstrap kubeconfig, instead of apiServer + clusterCA + bootstrapToken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_kubeconfig: Option<String>,
    /// An address, or `auto` for the address of the default route's interface.
    #[serde(default, rename = "nodeIP", skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `key=value:Effect`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taints: Option<Vec<String>>,
    #[serde(default, rename = "clusterDNS", skip_serializing_if = "Option::is_none")]
    pub cluster_dns: Option<String>,
    /// KubeletConfiguration fields merged over the bundle's at first boot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kubelet_settings: BTreeMap<String, serde_json::Value>,
    /// A minisign public key (base64, or the two-line .pub file) the bundle's signature must verify
    /// against; without it only digests are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_public_key: Option<String>,
}

impl NodeSection {
    /// Apply `later` over `self`.
    pub fn merge(&mut self, later: NodeSection) {
        macro_rules! take {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        take!(
            api_server,
            cluster_ca,
            bootstrap_token,
            bootstrap_kubeconfig,
            node_ip,
            hostname,
            taints,
            cluster_dns,
            bundle_public_key
        );
        self.labels.extend(later.labels);
        self.kubelet_settings.extend(later.kubelet_settings);
    }

    /// Fields a bundle with a kubelet cannot start without.
    pub fn missing_for_kubelet(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.bootstrap_kubeconfig.is_none() {
            for (name, v) in [
                ("apiServer", &self.api_server),
                ("clusterCA", &self.cluster_ca),
                ("bootstrapToken", &self.bootstrap_token),
            ] {
                if v.is_none() {
                    missing.push(name);
                }
            }
        } else if self.cluster_ca.is_none() {
            missing.push("clusterCA");
        }
        if self.cluster_dns.is_none() {
            missing.push("clusterDNS");
        }
        missing
    }
}

/// A file cloud-config's `write_files` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
    pub owner: String,
    pub append: bool,
    /// Where it came from, for errors.
    pub origin: String,
}

/// Everything the sources said, merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub write_files: Vec<WriteFile>,
    /// The sources that contributed, in order.
    pub sources: Vec<String>,
}

impl NodeConfig {
    pub fn add(&mut self, origin: &str, section: NodeSection) {
        self.node.merge(section);
        self.sources.push(origin.to_string());
    }

    /// A digest of the merged configuration, to tell whether a re-run has new inputs.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(&(&self.node, &self.write_files)).expect("serializes");
        kiln_bundle::Sha256::of(&json).hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_sources_win_and_maps_merge() {
        let mut a = NodeSection {
            api_server: Some("https://a".into()),
            node_ip: Some("auto".into()),
            ..Default::default()
        };
        a.labels.insert("zone".into(), "a".into());
        a.labels.insert("pool".into(), "x".into());
        let mut b = NodeSection {
            node_ip: Some("10.0.0.5".into()),
            ..Default::default()
        };
        b.labels.insert("zone".into(), "b".into());
        a.merge(b);
        assert_eq!(a.api_server.as_deref(), Some("https://a"));
        assert_eq!(a.node_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(a.labels["zone"], "b");
        assert_eq!(a.labels["pool"], "x");
    }

    #[test]
    fn required_fields_for_kubelet() {
        let n = NodeSection::default();
        assert_eq!(
            n.missing_for_kubelet(),
            ["apiServer", "clusterCA", "bootstrapToken", "clusterDNS"]
        );
        let n = NodeSection {
            bootstrap_kubeconfig: Some("x".into()),
            cluster_ca: Some("pem".into()),
            cluster_dns: Some("10.96.0.10".into()),
            ..Default::default()
        };
        assert!(n.missing_for_kubelet().is_empty());
    }
}
