//! The kubelet's configuration: a KubeletConfiguration (kubelet.config.k8s.io/v1beta1), its flags
//! for the target version, and the bootstrap kubeconfig template.

use std::collections::BTreeMap;

use kiln_bundle::layout::{files, Layout};
use kiln_bundle::manifest::KubeletConfig;
use kiln_bundle::placeholder::token;
use serde_json::{json, Value};

use super::minor;

/// Top-level KubeletConfiguration v1beta1 fields (Kubernetes 1.36), and the release that added the
/// ones newer than 1.24.
pub const FIELDS: &[(&str, (u32, u32))] = &[
    ("address", (1, 0)),
    ("allowedUnsafeSysctls", (1, 0)),
    ("authentication", (1, 0)),
    ("authorization", (1, 0)),
    ("cgroupDriver", (1, 0)),
    ("cgroupRoot", (1, 0)),
    ("cgroupsPerQOS", (1, 0)),
    ("clusterDNS", (1, 0)),
    ("clusterDomain", (1, 0)),
    ("configMapAndSecretChangeDetectionStrategy", (1, 0)),
    ("containerLogMaxFiles", (1, 0)),
    ("containerLogMaxSize", (1, 0)),
    ("containerLogMaxWorkers", (1, 30)),
    ("containerLogMonitorInterval", (1, 30)),
    ("containerRuntimeEndpoint", (1, 27)),
    ("contentType", (1, 0)),
    ("cpuCFSQuota", (1, 0)),
    ("cpuCFSQuotaPeriod", (1, 0)),
    ("cpuManagerPolicy", (1, 0)),
    ("cpuManagerPolicyOptions", (1, 0)),
    ("cpuManagerReconcilePeriod", (1, 0)),
    ("crashLoopBackOff", (1, 32)),
    ("enableContentionProfiling", (1, 0)),
    ("enableControllerAttachDetach", (1, 0)),
    ("enableDebugFlagsHandler", (1, 0)),
    ("enableDebuggingHandlers", (1, 0)),
    ("enableProfilingHandler", (1, 0)),
    ("enableServer", (1, 0)),
    ("enableSystemLogHandler", (1, 0)),
    ("enableSystemLogQuery", (1, 27)),
    ("enforceNodeAllocatable", (1, 0)),
    ("eventBurst", (1, 0)),
    ("eventRecordQPS", (1, 0)),
    ("evictionHard", (1, 0)),
    ("evictionMaxPodGracePeriod", (1, 0)),
    ("evictionMinimumReclaim", (1, 0)),
    ("evictionPressureTransitionPeriod", (1, 0)),
    ("evictionSoft", (1, 0)),
    ("evictionSoftGracePeriod", (1, 0)),
    ("failCgroupV1", (1, 31)),
    ("failSwapOn", (1, 0)),
    ("featureGates", (1, 0)),
    ("fileCheckFrequency", (1, 0)),
    ("hairpinMode", (1, 0)),
    ("healthzBindAddress", (1, 0)),
    ("healthzPort", (1, 0)),
    ("httpCheckFrequency", (1, 0)),
    ("imageGCHighThresholdPercent", (1, 0)),
    ("imageGCLowThresholdPercent", (1, 0)),
    ("imageMaximumGCAge", (1, 29)),
    ("imageMinimumGCAge", (1, 0)),
    ("imagePullCredentialsVerificationPolicy", (1, 33)),
    ("imageServiceEndpoint", (1, 27)),
    ("iptablesDropBit", (1, 0)),
    ("iptablesMasqueradeBit", (1, 0)),
    ("kernelMemcgNotification", (1, 0)),
    ("kubeAPIBurst", (1, 0)),
    ("kubeAPIQPS", (1, 0)),
    ("kubeReserved", (1, 0)),
    ("kubeReservedCgroup", (1, 0)),
    ("kubeletCgroups", (1, 0)),
    ("localStorageCapacityIsolation", (1, 0)),
    ("logging", (1, 0)),
    ("makeIPTablesUtilChains", (1, 0)),
    ("maxOpenFiles", (1, 0)),
    ("maxParallelImagePulls", (1, 27)),
    ("maxPods", (1, 0)),
    ("memoryManagerPolicy", (1, 0)),
    ("memorySwap", (1, 0)),
    ("memoryThrottlingFactor", (1, 0)),
    ("mergeDefaultEvictionSettings", (1, 34)),
    ("nodeLeaseDurationSeconds", (1, 0)),
    ("nodeStatusMaxImages", (1, 0)),
    ("nodeStatusReportFrequency", (1, 0)),
    ("nodeStatusUpdateFrequency", (1, 0)),
    ("oomScoreAdj", (1, 0)),
    ("podCIDR", (1, 0)),
    ("podLogsDir", (1, 29)),
    ("podPidsLimit", (1, 0)),
    ("podsPerCore", (1, 0)),
    ("port", (1, 0)),
    ("preloadedImagesVerificationAllowlist", (1, 33)),
    ("protectKernelDefaults", (1, 0)),
    ("providerID", (1, 0)),
    ("qosReserved", (1, 0)),
    ("readOnlyPort", (1, 0)),
    ("registerNode", (1, 27)),
    ("registerWithTaints", (1, 0)),
    ("registryBurst", (1, 0)),
    ("registryPullQPS", (1, 0)),
    ("reservedMemory", (1, 0)),
    ("reservedSystemCPUs", (1, 0)),
    ("resolvConf", (1, 0)),
    ("rotateCertificates", (1, 0)),
    ("runOnce", (1, 0)),
    ("runtimeRequestTimeout", (1, 0)),
    ("seccompDefault", (1, 0)),
    ("serializeImagePulls", (1, 0)),
    ("serverTLSBootstrap", (1, 0)),
    ("showHiddenMetricsForVersion", (1, 0)),
    ("shutdownGracePeriod", (1, 0)),
    ("shutdownGracePeriodByPodPriority", (1, 0)),
    ("shutdownGracePeriodCriticalPods", (1, 0)),
    ("singleProcessOOMKill", (1, 32)),
    ("staticPodPath", (1, 0)),
    ("staticPodURL", (1, 0)),
    ("staticPodURLHeader", (1, 0)),
    ("streamingConnectionIdleTimeout", (1, 0)),
    ("syncFrequency", (1, 0)),
    ("systemCgroups", (1, 0)),
    ("systemReserved", (1, 0)),
    ("systemReservedCgroup", (1, 0)),
    ("tlsCertFile", (1, 0)),
    ("tlsCipherSuites", (1, 0)),
    ("tlsMinVersion", (1, 0)),
    ("tlsPrivateKeyFile", (1, 0)),
    ("topologyManagerPolicy", (1, 0)),
    ("topologyManagerPolicyOptions", (1, 0)),
    ("topologyManagerScope", (1, 0)),
    ("tracing", (1, 0)),
    ("userNamespaces", (1, 30)),
    ("volumePluginDir", (1, 0)),
    ("volumeStatsAggPeriod", (1, 0)),
];

/// Whether KubeletConfiguration at Kubernetes `version` has the top-level field `name`.
pub fn has_field(name: &str, version: &str) -> bool {
    let target = minor(version).unwrap_or((1, u32::MAX));
    FIELDS.iter().any(|(f, since)| *f == name && target >= *since)
}

fn endpoint(l: &Layout) -> String {
    format!("unix://{}", l.containerd_socket)
}

/// The KubeletConfiguration: cgroupDriver matching containerd's, webhook authentication and
/// authorization, certificate rotation, the client CA, `containerRuntimeEndpoint` from 1.27, and
/// the manifest's settings merged over it. Unknown fields are errors.
pub fn config(version: &str, cfg: &KubeletConfig, systemd_cgroup: bool, l: &Layout) -> Result<String, String> {
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
            return Err(format!("`{k}` is fixed by kiln"));
        }
        if !has_field(k, version) {
            return Err(format!(
                "`{k}` is not a KubeletConfiguration field in Kubernetes {version}"
            ));
        }
        merge(&mut doc, k, v.clone());
    }
    let mut body = serde_saphyr::to_string(&doc).map_err(|e| e.to_string())?;
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
            config("1.36.4", &cfg, true, &l).unwrap_err(),
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
