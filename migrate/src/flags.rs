//! Which kubelet flags were removed or deprecated in which release, from the Kubernetes changelogs:
//! - 1.24 (dockershim removal, kubernetes#106907): `--experimental-dockershim-root-directory`,
//!   `--docker-endpoint`, `--image-pull-progress-deadline`, `--network-plugin`, `--cni-conf-dir`,
//!   `--cni-bin-dir`, `--cni-cache-dir`, `--network-plugin-mtu`; and `--dynamic-config-dir` with
//!   dynamic kubelet configuration.
//! - 1.27: `--container-runtime` (deprecated since 1.24) and `--master-service-namespace`
//!   (kubernetes#116015); `--container-runtime-endpoint` moved into KubeletConfiguration.
//! - Flags that have a KubeletConfiguration field are deprecated in its favour (the kubelet prints
//!   "DEPRECATED: This parameter should be set via the config file").

use std::collections::BTreeMap;
use std::fmt;

use crate::minor;

pub struct Removed {
    pub flag: &'static str,
    pub version: (u32, u32),
    pub why: &'static str,
    pub replacement: &'static str,
}

pub const REMOVED: &[Removed] = &[
    Removed {
        flag: "experimental-dockershim-root-directory",
        version: (1, 24),
        why: "dockershim removal",
        replacement: "none: dockershim is gone",
    },
    Removed {
        flag: "docker-endpoint",
        version: (1, 24),
        why: "dockershim removal",
        replacement: "containerRuntimeEndpoint (the containerd socket)",
    },
    Removed {
        flag: "image-pull-progress-deadline",
        version: (1, 24),
        why: "dockershim removal",
        replacement: "none in the kubelet; containerd's image_pull_progress_timeout",
    },
    Removed {
        flag: "network-plugin",
        version: (1, 24),
        why: "dockershim removal",
        replacement: "the container runtime's CNI configuration (kiln renders containerd's)",
    },
    Removed {
        flag: "network-plugin-mtu",
        version: (1, 24),
        why: "dockershim removal",
        replacement: "the CNI configuration's MTU",
    },
    Removed {
        flag: "cni-conf-dir",
        version: (1, 24),
        why: "dockershim removal",
        replacement: "containerd's CNI conf_dir",
    },
    Removed {
        flag: "cni-bin-dir",
        version: (1, 24),
        why: "dockershim removal",
        replacement: "containerd's CNI bin_dir (the bundle's cni/bin)",
    },
    Removed {
        flag: "cni-cache-dir",
        version: (1, 24),
        why: "dockershim removal",
        replacement: "none: the container runtime manages CNI",
    },
    Removed {
        flag: "dynamic-config-dir",
        version: (1, 24),
        why: "dynamic kubelet configuration removal",
        replacement: "--config with a KubeletConfiguration file",
    },
    Removed {
        flag: "container-runtime",
        version: (1, 27),
        why: "only remote runtimes remain",
        replacement: "containerRuntimeEndpoint (unix:///run/containerd/containerd.sock)",
    },
    Removed {
        flag: "master-service-namespace",
        version: (1, 27),
        why: "deprecated since 1.7",
        replacement: "none",
    },
];

/// Flags that set a KubeletConfiguration field, with the field. `since` is the first release with
/// the field, for fields that are newer than the flag.
pub const MOVED: &[(&str, &str, (u32, u32))] = &[
    ("address", "address", (1, 0)),
    ("allowed-unsafe-sysctls", "allowedUnsafeSysctls", (1, 0)),
    ("anonymous-auth", "authentication.anonymous.enabled", (1, 0)),
    ("authentication-token-webhook", "authentication.webhook.enabled", (1, 0)),
    (
        "authentication-token-webhook-cache-ttl",
        "authentication.webhook.cacheTTL",
        (1, 0),
    ),
    ("authorization-mode", "authorization.mode", (1, 0)),
    ("cgroup-driver", "cgroupDriver", (1, 0)),
    ("cgroup-root", "cgroupRoot", (1, 0)),
    ("cgroups-per-qos", "cgroupsPerQOS", (1, 0)),
    ("client-ca-file", "authentication.x509.clientCAFile", (1, 0)),
    ("cluster-dns", "clusterDNS", (1, 0)),
    ("cluster-domain", "clusterDomain", (1, 0)),
    ("container-log-max-files", "containerLogMaxFiles", (1, 0)),
    ("container-log-max-size", "containerLogMaxSize", (1, 0)),
    ("container-runtime-endpoint", "containerRuntimeEndpoint", (1, 27)),
    ("contention-profiling", "enableContentionProfiling", (1, 0)),
    ("cpu-cfs-quota", "cpuCFSQuota", (1, 0)),
    ("cpu-cfs-quota-period", "cpuCFSQuotaPeriod", (1, 0)),
    ("cpu-manager-policy", "cpuManagerPolicy", (1, 0)),
    ("cpu-manager-reconcile-period", "cpuManagerReconcilePeriod", (1, 0)),
    (
        "enable-controller-attach-detach",
        "enableControllerAttachDetach",
        (1, 0),
    ),
    ("enable-debugging-handlers", "enableDebuggingHandlers", (1, 0)),
    ("enable-server", "enableServer", (1, 0)),
    ("enforce-node-allocatable", "enforceNodeAllocatable", (1, 0)),
    ("event-burst", "eventBurst", (1, 0)),
    ("event-qps", "eventRecordQPS", (1, 0)),
    ("eviction-hard", "evictionHard", (1, 0)),
    ("eviction-max-pod-grace-period", "evictionMaxPodGracePeriod", (1, 0)),
    ("eviction-minimum-reclaim", "evictionMinimumReclaim", (1, 0)),
    (
        "eviction-pressure-transition-period",
        "evictionPressureTransitionPeriod",
        (1, 0),
    ),
    ("eviction-soft", "evictionSoft", (1, 0)),
    ("eviction-soft-grace-period", "evictionSoftGracePeriod", (1, 0)),
    ("fail-swap-on", "failSwapOn", (1, 0)),
    ("feature-gates", "featureGates", (1, 0)),
    ("file-check-frequency", "fileCheckFrequency", (1, 0)),
    ("hairpin-mode", "hairpinMode", (1, 0)),
    ("healthz-bind-address", "healthzBindAddress", (1, 0)),
    ("healthz-port", "healthzPort", (1, 0)),
    ("http-check-frequency", "httpCheckFrequency", (1, 0)),
    ("image-gc-high-threshold", "imageGCHighThresholdPercent", (1, 0)),
    ("image-gc-low-threshold", "imageGCLowThresholdPercent", (1, 0)),
    ("image-service-endpoint", "imageServiceEndpoint", (1, 27)),
    ("iptables-drop-bit", "iptablesDropBit", (1, 0)),
    ("iptables-masquerade-bit", "iptablesMasqueradeBit", (1, 0)),
    ("kube-api-burst", "kubeAPIBurst", (1, 0)),
    ("kube-api-content-type", "contentType", (1, 0)),
    ("kube-api-qps", "kubeAPIQPS", (1, 0)),
    ("kube-reserved", "kubeReserved", (1, 0)),
    ("kube-reserved-cgroup", "kubeReservedCgroup", (1, 0)),
    ("kubelet-cgroups", "kubeletCgroups", (1, 0)),
    (
        "local-storage-capacity-isolation",
        "localStorageCapacityIsolation",
        (1, 0),
    ),
    ("make-iptables-util-chains", "makeIPTablesUtilChains", (1, 0)),
    ("manifest-url", "staticPodURL", (1, 0)),
    ("max-open-files", "maxOpenFiles", (1, 0)),
    ("max-pods", "maxPods", (1, 0)),
    ("memory-manager-policy", "memoryManagerPolicy", (1, 0)),
    ("node-status-max-images", "nodeStatusMaxImages", (1, 0)),
    ("node-status-update-frequency", "nodeStatusUpdateFrequency", (1, 0)),
    ("oom-score-adj", "oomScoreAdj", (1, 0)),
    ("pod-cidr", "podCIDR", (1, 0)),
    ("pod-manifest-path", "staticPodPath", (1, 0)),
    ("pod-max-pids", "podPidsLimit", (1, 0)),
    ("pods-per-core", "podsPerCore", (1, 0)),
    ("port", "port", (1, 0)),
    ("protect-kernel-defaults", "protectKernelDefaults", (1, 0)),
    ("provider-id", "providerID", (1, 0)),
    ("qos-reserved", "qosReserved", (1, 0)),
    ("read-only-port", "readOnlyPort", (1, 0)),
    ("register-node", "registerNode", (1, 27)),
    ("register-with-taints", "registerWithTaints", (1, 0)),
    ("registry-burst", "registryBurst", (1, 0)),
    ("registry-qps", "registryPullQPS", (1, 0)),
    ("reserved-cpus", "reservedSystemCPUs", (1, 0)),
    ("resolv-conf", "resolvConf", (1, 0)),
    ("rotate-certificates", "rotateCertificates", (1, 0)),
    ("runonce", "runOnce", (1, 0)),
    ("runtime-request-timeout", "runtimeRequestTimeout", (1, 0)),
    ("seccomp-default", "seccompDefault", (1, 0)),
    ("serialize-image-pulls", "serializeImagePulls", (1, 0)),
    (
        "streaming-connection-idle-timeout",
        "streamingConnectionIdleTimeout",
        (1, 0),
    ),
    ("sync-frequency", "syncFrequency", (1, 0)),
    ("system-cgroups", "systemCgroups", (1, 0)),
    ("system-reserved", "systemReserved", (1, 0)),
    ("system-reserved-cgroup", "systemReservedCgroup", (1, 0)),
    ("tls-cert-file", "tlsCertFile", (1, 0)),
    ("tls-cipher-suites", "tlsCipherSuites", (1, 0)),
    ("tls-min-version", "tlsMinVersion", (1, 0)),
    ("tls-private-key-file", "tlsPrivateKeyFile", (1, 0)),
    ("topology-manager-policy", "topologyManagerPolicy", (1, 0)),
    ("topology-manager-scope", "topologyManagerScope", (1, 0)),
    ("volume-plugin-dir", "volumePluginDir", (1, 0)),
    ("volume-stats-agg-period", "volumeStatsAggPeriod", (1, 0)),
];

/// Flags kiln sets itself, from the bundle layout or node configuration at first boot.
pub const KILN_OWNED: &[(&str, &str)] = &[
    ("config", "kiln renders the KubeletConfiguration into the bundle"),
    (
        "kubeconfig",
        "kiln points it at the kubelet's own kubeconfig after bootstrap",
    ),
    (
        "bootstrap-kubeconfig",
        "kiln renders it at first boot from the node's API server, CA and token",
    ),
    ("node-ip", "node-specific: filled at first boot"),
    ("hostname-override", "node-specific: filled at first boot"),
    (
        "node-labels",
        "node-specific: filled at first boot (kiln adds its bundle labels)",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub flag: String,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: --{}: {}", self.flag, self.message)
    }
}

pub fn removed(flag: &str) -> Option<&'static Removed> {
    REMOVED.iter().find(|r| r.flag == flag)
}

/// The KubeletConfiguration field a flag moved into, if it has one at `target`.
pub fn moved(flag: &str, target: (u32, u32)) -> Option<&'static str> {
    MOVED
        .iter()
        .find(|(f, _, since)| *f == flag && target >= *since)
        .map(|(_, field, _)| *field)
}

/// Check `flags` (names without `--`) against Kubernetes `version`: removed flags are errors naming
/// the release and the replacement; flags with a KubeletConfiguration field are warnings.
pub fn lint(flags: &BTreeMap<String, String>, version: &str) -> Vec<Finding> {
    let target = minor(version).unwrap_or((1, u32::MAX));
    let mut out = Vec::new();
    for name in flags.keys() {
        let flag = name.trim_start_matches('-');
        if let Some(r) = removed(flag) {
            if target >= r.version {
                out.push(Finding {
                    flag: flag.into(),
                    severity: Severity::Error,
                    message: format!(
                        "removed in Kubernetes {}.{} ({}); replacement: {}",
                        r.version.0, r.version.1, r.why, r.replacement
                    ),
                });
                continue;
            }
        }
        if let Some((_, why)) = KILN_OWNED.iter().find(|(f, _)| *f == flag) {
            out.push(Finding {
                flag: flag.into(),
                severity: Severity::Error,
                message: format!("set by kiln: {why}"),
            });
        } else if let Some(field) = moved(flag, target) {
            out.push(Finding {
                flag: flag.into(),
                severity: Severity::Warning,
                message: format!("deprecated in favour of the KubeletConfiguration field `{field}`; set it in spec.config.kubelet.settings"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint1(flag: &str, version: &str) -> Vec<Finding> {
        lint(&BTreeMap::from([(flag.to_string(), "x".to_string())]), version)
    }

    #[test]
    fn every_dockershim_flag_is_an_error_from_1_24_and_fine_before() {
        for f in [
            "experimental-dockershim-root-directory",
            "docker-endpoint",
            "image-pull-progress-deadline",
            "network-plugin",
            "network-plugin-mtu",
            "cni-conf-dir",
            "cni-bin-dir",
            "cni-cache-dir",
        ] {
            let e = lint1(f, "1.24.0");
            assert_eq!(e.len(), 1, "{f}");
            assert_eq!(e[0].severity, Severity::Error);
            assert!(
                e[0].message
                    .starts_with("removed in Kubernetes 1.24 (dockershim removal); replacement: "),
                "{}",
                e[0]
            );
            assert!(lint1(f, "1.23.17").is_empty(), "{f} still existed in 1.23");
        }
    }

    #[test]
    fn container_runtime_is_removed_in_1_27() {
        assert!(lint1("container-runtime", "1.26.15").is_empty());
        let e = lint1("container-runtime", "1.27.0");
        assert_eq!(e[0].to_string(), "error: --container-runtime: removed in Kubernetes 1.27 (only remote runtimes remain); replacement: containerRuntimeEndpoint (unix:///run/containerd/containerd.sock)");
        assert_eq!(lint1("master-service-namespace", "1.36.4")[0].severity, Severity::Error);
    }

    #[test]
    fn moved_flags_are_warnings_from_the_release_with_the_field() {
        let w = lint1("--max-pods", "1.36.4");
        assert_eq!(w[0].severity, Severity::Warning);
        assert!(w[0].message.contains("`maxPods`"));
        assert!(
            lint1("container-runtime-endpoint", "1.26.0").is_empty(),
            "a plain flag before 1.27"
        );
        assert!(lint1("container-runtime-endpoint", "1.27.0")[0]
            .message
            .contains("containerRuntimeEndpoint"));
        assert!(lint1("v", "1.36.4").is_empty(), "verbosity is a flag only");
    }

    #[test]
    fn kiln_owned_flags_are_refused() {
        let e = lint1("node-ip", "1.36.4");
        assert_eq!(
            e[0].to_string(),
            "error: --node-ip: set by kiln: node-specific: filled at first boot"
        );
    }

    #[test]
    fn the_table_is_consistent() {
        for r in REMOVED {
            assert!(moved(r.flag, (1, 99)).is_none(), "{} is both removed and moved", r.flag);
        }
        let mut names: Vec<&str> = MOVED.iter().map(|m| m.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MOVED.len(), "no flag is listed twice");
    }
}
