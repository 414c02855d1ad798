//! The kubelet's configuration: a KubeletConfiguration (kubelet.config.k8s.io/v1beta1), its flags
//! for the target version, and the bootstrap kubeconfig template.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use kiln_bundle::layout::{files, Layout};
use kiln_bundle::manifest::KubeletConfig;
use kiln_bundle::placeholder::token;
use serde_json::{json, Value};

use super::minor;

pub use kiln_migrate::fields::{has_field, FIELDS};

fn endpoint(l: &Layout) -> String {
    format!("unix://{}", l.containerd_socket)
}

/// The KubeletConfiguration: cgroupDriver matching containerd's, webhook authentication and
/// authorization, certificate rotation, the client CA, `containerRuntimeEndpoint` from 1.27, and
/// the manifest's settings merged over it. Unknown fields are errors.
pub fn config(version: &str, cfg: &KubeletConfig, systemd_cgroup: bool, l: &Layout) -> Result<String> {
    let ca = l.on_node(files::CLUSTER_CA, true);
    let mut doc = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": if systemd_cgroup { "systemd" } else { "cgroupfs" },
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": ca},
        },
        "authorization": {"mode": "Webhook"},
        "rotateCertificates": true,
        "clusterDomain": "cluster.local",
        "clusterDNS": [token("cluster-dns")],
        "failSwapOn": true,
        "readOnlyPort": 0,
    });
    if minor(version).is_some_and(|v| v >= (1, 27)) {
        doc["containerRuntimeEndpoint"] = Value::String(endpoint(l));
    }
    for (k, v) in &cfg.settings {
        if k == "apiVersion" || k == "kind" {
            bail!("`{k}` is fixed by kiln");
        }
        if !has_field(k, version) {
            bail!("`{k}` is not a KubeletConfiguration field in Kubernetes {version}");
        }
        merge(&mut doc, k, v.clone());
    }
    let mut body = serde_saphyr::to_string(&doc)?;
    if !cfg.settings.contains_key("registerWithTaints") {
        // The node's taints are a YAML list substituted at first boot (the
        // `--register-with-taints` flag is deprecated in favour of this field). A placeholder
        // inside a serialized string would stay a string, so the line is appended as is.
        if !body.ends_with('\n') {
            body.push('\n');
        }
        body.push_str(&format!("registerWithTaints: {}\n", token("register-with-taints")));
    }
    Ok(format!("# Rendered by kiln for Kubernetes {version}.\n{body}"))
}

fn merge(doc: &mut Value, key: &str, value: Value) {
    match (doc.get_mut(key), value) {
        (Some(Value::Object(existing)), Value::Object(new)) => {
            for (k, v) in new {
                let mut wrapper = Value::Object(std::mem::take(existing));
                merge(&mut wrapper, &k, v);
                *existing = match wrapper {
                    Value::Object(m) => m,
                    _ => unreachable!(),
                };
            }
        }
        (_, v) => doc[key] = v,
    }
}

/// The kubelet's command line for `version`: kiln's flags, then the manifest's extra flags sorted.
pub fn flags(version: &str, cfg: &KubeletConfig, l: &Layout) -> Vec<String> {
    let mut args = vec![
        format!("--config={}", l.on_node(files::KUBELET_CONFIG, true)),
        format!("--kubeconfig={}/kubeconfig", l.kubelet_root),
        format!("--bootstrap-kubeconfig={}", l.on_node(files::KUBELET_BOOTSTRAP, true)),
        format!("--node-ip={}", token("node-ip")),
        format!("--hostname-override={}", token("hostname")),
        format!("--node-labels={}", token("node-labels")),
    ];
    if minor(version).is_some_and(|v| v < (1, 27)) {
        // Before 1.27 the endpoint is a flag, and --container-runtime=remote is still accepted (and
        // required before 1.24, when the default was docker).
        args.push("--container-runtime=remote".into());
        args.push(format!("--container-runtime-endpoint={}", endpoint(l)));
    }
    let extra: BTreeMap<&String, &String> = cfg.flags.iter().collect();
    for (k, v) in extra {
        args.push(format!("--{}={v}", k.trim_start_matches('-')));
    }
    args
}

/// The bootstrap kubeconfig, rendered at first boot (it carries the bootstrap token: mode 0600).
pub fn bootstrap_kubeconfig(l: &Layout) -> String {
    token_kubeconfig("kubelet-bootstrap", "bootstrap-token", l)
}

/// A kubeconfig for the cluster's API server and CA that authenticates as `user` with the bearer
/// token of secret placeholder `token_name`, rendered at first boot.
pub fn token_kubeconfig(user: &str, token_name: &str, l: &Layout) -> String {
    format!(
        "\
apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    server: \"{server}\"
    certificate-authority: {ca}
users:
- name: {user}
  user:
    token: \"{token}\"
contexts:
- name: default
  context:
    cluster: default
    user: {user}
current-context: default
",
        server = token("api-server"),
        ca = l.on_node(files::CLUSTER_CA, true),
        token = token(token_name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config as kubelet reads it after first boot substituted the taints.
    fn parse(text: &str) -> Value {
        let text = text.replace(&token("register-with-taints"), "[]");
        serde_saphyr::from_str(&text).unwrap()
    }

    #[test]
    fn taints_are_a_config_field_not_the_deprecated_flag() {
        let l = Layout::default();
        let text = config("1.32.13", &KubeletConfig::default(), true, &l).unwrap();
        assert!(
            text.contains("\nregisterWithTaints: @kiln:register-with-taints@\n"),
            "{text}"
        );
        let sub = text.replace(
            "@kiln:register-with-taints@",
            r#"[{"key":"dedicated","value":"infra","effect":"NoSchedule"}]"#,
        );
        let c: Value = serde_saphyr::from_str(&sub).unwrap();
        assert_eq!(c["registerWithTaints"][0]["effect"], "NoSchedule");
        assert!(!flags("1.32.13", &KubeletConfig::default(), &l)
            .iter()
            .any(|f| f.starts_with("--register-with-taints")));
    }

    #[test]
    fn endpoint_is_a_config_field_from_1_27_and_a_flag_before() {
        let l = Layout::default();
        let c = parse(&config("1.36.4", &KubeletConfig::default(), true, &l).unwrap());
        assert_eq!(c["containerRuntimeEndpoint"], "unix:///run/containerd/containerd.sock");
        assert_eq!(c["cgroupDriver"], "systemd");
        assert_eq!(c["authentication"]["webhook"]["enabled"], true);
        assert_eq!(c["authorization"]["mode"], "Webhook");
        assert_eq!(c["rotateCertificates"], true);
        assert_eq!(
            c["authentication"]["x509"]["clientCAFile"],
            "/var/lib/kiln/node/etc/kubernetes/pki/ca.crt"
        );
        assert!(!flags("1.36.4", &KubeletConfig::default(), &l)
            .iter()
            .any(|f| f.starts_with("--container-runtime")));

        let old = parse(&config("1.26.15", &KubeletConfig::default(), false, &l).unwrap());
        assert!(old.get("containerRuntimeEndpoint").is_none());
        assert_eq!(old["cgroupDriver"], "cgroupfs");
        let f = flags("1.26.15", &KubeletConfig::default(), &l);
        assert!(f.contains(&"--container-runtime-endpoint=unix:///run/containerd/containerd.sock".to_string()));
        assert!(f.contains(&"--container-runtime=remote".to_string()));
    }

    #[test]
    fn settings_merge_and_unknown_fields_are_refused() {
        let l = Layout::default();
        let mut cfg = KubeletConfig::default();
        cfg.settings.insert("maxPods".into(), json!(250));
        cfg.settings
            .insert("authentication".into(), json!({"webhook": {"cacheTTL": "2m"}}));
        let c = parse(&config("1.36.4", &cfg, true, &l).unwrap());
        assert_eq!(c["maxPods"], 250);
        assert_eq!(c["authentication"]["webhook"]["cacheTTL"], "2m");
        assert_eq!(c["authentication"]["webhook"]["enabled"], true, "siblings are kept");

        cfg.settings.insert("maxPod".into(), json!(1));
        assert_eq!(
            config("1.36.4", &cfg, true, &l).unwrap_err().to_string(),
            "`maxPod` is not a KubeletConfiguration field in Kubernetes 1.36.4"
        );
        let mut cfg = KubeletConfig::default();
        cfg.settings
            .insert("containerRuntimeEndpoint".into(), json!("unix:///x"));
        assert!(
            config("1.26.0", &cfg, true, &l).is_err(),
            "the field does not exist before 1.27"
        );
    }

    #[test]
    fn extra_flags_follow_kilns_in_order() {
        let mut cfg = KubeletConfig::default();
        cfg.flags.insert("v".into(), "2".into());
        cfg.flags.insert("cloud-provider".into(), "external".into());
        let f = flags("1.36.4", &cfg, &Layout::default());
        assert_eq!(&f[f.len() - 2..], ["--cloud-provider=external", "--v=2"]);
        assert!(f[0].starts_with("--config=/var/lib/kiln/node/"));
    }
}
