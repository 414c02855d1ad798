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
    /// kube-proxy's bearer token, for bundles that run kube-proxy as a service (a ServiceAccount
    /// token bound to `system:node-proxier`). Secret: written 0600, never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_proxy_token: Option<String>,
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
    /// How long the health check waits for the Node to register and be Ready, in seconds
    /// (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_timeout_seconds: Option<u64>,
    /// A minisign public key (base64, or the two-line .pub file) the bundle's signature must verify
    /// against; without it only digests are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_public_key: Option<String>,
    /// Credentials of the registries the bundle marks `auth`, by registry host. Secret: they go
    /// only into that registry's `hosts.toml`, written 0600, and are never logged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_auth: BTreeMap<String, RegistryAuth>,
}

/// A registry user name and password (or token).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl RegistryAuth {
    /// The value of HTTP Basic authentication: base64 of `username:password`.
    pub fn basic(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.username, self.password))
    }
}

/// The longest join timeout user data may ask for: a day.
pub const MAX_JOIN_TIMEOUT_S: u64 = 86_400;

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
            kube_proxy_token,
            bootstrap_kubeconfig,
            node_ip,
            hostname,
            taints,
            cluster_dns,
            join_timeout_seconds,
            bundle_public_key
        );
        self.labels.extend(later.labels);
        self.kubelet_settings.extend(later.kubelet_settings);
        self.registry_auth.extend(later.registry_auth);
    }

    /// Values the types cannot check: taints, the node IP, the host name and the join timeout.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(t) = self.join_timeout_seconds {
            if !(1..=MAX_JOIN_TIMEOUT_S).contains(&t) {
                return Err(ConfigError::JoinTimeout(t));
            }
        }
        for t in self.taints.iter().flatten() {
            parse_taint(t)?;
        }
        if let Some(ip) = self.node_ip.as_deref() {
            if ip != "auto" && ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::NodeIp(ip.to_string()));
            }
        }
        if let Some(h) = self.hostname.as_deref() {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if !ok {
                return Err(ConfigError::Hostname(h.to_string()));
            }
        }
        for (host, a) in &self.registry_auth {
            if a.username.is_empty() || a.username.contains(':') || a.username.chars().any(char::is_control) {
                return Err(ConfigError::Username(host.clone()));
            }
            if a.password.is_empty() || a.password.chars().any(char::is_control) {
                return Err(ConfigError::Password(host.clone()));
            }
        }
        Ok(())
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

/// A node setting the types cannot check, named by its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `joinTimeoutSeconds` outside a second to a day.
    #[error("joinTimeoutSeconds: {0} is outside 1..={MAX_JOIN_TIMEOUT_S} (a day)")]
    JoinTimeout(u64),
    /// A taint kubelet would not register.
    #[error("taints: {0}")]
    Taint(#[from] TaintError),
    /// `nodeIP` neither an address nor `auto`.
    #[error("nodeIP: `{0}` is not an IP address or `auto`")]
    NodeIp(String),
    /// A host name Kubernetes would not accept as a node name.
    #[error(
        "hostname: `{0}` is not a valid node name (lowercase letters, digits, `-` and `.`, as Kubernetes requires)"
    )]
    Hostname(String),
    /// A registry user name containerd could not write into an auth header.
    #[error("registryAuth[{0}].username: empty or contains `:` or a control character")]
    Username(String),
    /// A registry password that is empty or holds a control character.
    #[error("registryAuth[{0}].password: empty or contains a control character")]
    Password(String),
}

/// A taint that is not `key=value:Effect` or `key:Effect`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("taint `{taint}`: {why} (expected key=value:Effect or key:Effect)")]
pub struct TaintError {
    pub taint: String,
    pub why: &'static str,
}

/// A node taint as kubelet registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Taint {
    pub key: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub effect: String,
}

/// `key=value:Effect` or `key:Effect`, as `kubectl taint` and kubelet's `--register-with-taints`
/// write them.
pub fn parse_taint(s: &str) -> Result<Taint, TaintError> {
    let bad = |why: &'static str| TaintError {
        taint: s.to_string(),
        why,
    };
    let (kv, effect) = s.rsplit_once(':').ok_or_else(|| bad("no effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(bad("the effect must be NoSchedule, PreferNoSchedule or NoExecute"));
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    let key_ok =
        !key.is_empty() && key.len() <= 316 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if !key_ok {
        return Err(bad("the key is not a label key"));
    }
    if value.len() > 63 || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(bad("the value is not a label value"));
    }
    Ok(Taint {
        key: key.into(),
        value: value.into(),
        effect: effect.into(),
    })
}

/// The taints as a JSON flow list (valid YAML), for the KubeletConfiguration.
pub fn taints_yaml(taints: &[String]) -> Result<String, TaintError> {
    let parsed = taints.iter().map(|t| parse_taint(t)).collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::to_string(&parsed).expect("serializes"))
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
    fn validation_names_the_field() {
        let n = NodeSection {
            taints: Some(vec!["a=b".into()]),
            ..Default::default()
        };
        assert!(n.validate().unwrap_err().to_string().starts_with("taints: taint `a=b`"));
        let n = NodeSection {
            node_ip: Some("10.0.0.300".into()),
            ..Default::default()
        };
        assert_eq!(
            n.validate().unwrap_err().to_string(),
            "nodeIP: `10.0.0.300` is not an IP address or `auto`"
        );
        let n = NodeSection {
            hostname: Some("Node_1".into()),
            ..Default::default()
        };
        assert!(n.validate().unwrap_err().to_string().starts_with("hostname: `Node_1`"));
        for t in [0, u64::MAX] {
            let n = NodeSection {
                join_timeout_seconds: Some(t),
                ..Default::default()
            };
            assert!(
                n.validate()
                    .unwrap_err()
                    .to_string()
                    .starts_with("joinTimeoutSeconds: "),
                "{t}"
            );
        }
        let n = NodeSection {
            hostname: Some("node-1.example".into()),
            node_ip: Some("auto".into()),
            taints: Some(vec!["x:NoSchedule".into()]),
            ..Default::default()
        };
        n.validate().unwrap();
    }

    #[test]
    fn taints_parse_as_kubectl_writes_them() {
        assert_eq!(
            taints_yaml(&["dedicated=infra:NoSchedule".into(), "gpu:NoExecute".into()]).unwrap(),
            r#"[{"key":"dedicated","value":"infra","effect":"NoSchedule"},{"key":"gpu","effect":"NoExecute"}]"#
        );
        assert_eq!(taints_yaml(&[]).unwrap(), "[]");
        for bad in [
            "dedicated=infra",
            "a=b:Never",
            ":NoSchedule",
            "a=b c:NoSchedule",
            "a\"]:NoSchedule",
        ] {
            let e = parse_taint(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("taint `{bad}`")), "{e}");
        }
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
