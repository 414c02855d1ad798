//! kube-proxy as a systemd service: its KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1,
//! iptables mode, the node's name, the pod network's CIDR when kiln's bridge CNI provides it), a
//! kubeconfig for the API server with the node's kube-proxy token (a secret placeholder filled at
//! first boot), and its unit. kubeadm runs kube-proxy as a DaemonSet; the seed's workers run it as
//! a service, which this reproduces.

use kiln_bundle::layout::{files, units, Layout};
use kiln_bundle::manifest::{CniConfig, CniMode};
use kiln_bundle::placeholder::token;

pub fn config(cni: &CniConfig, l: &Layout) -> String {
    let cidr = if cni.mode == CniMode::Bridge {
        format!("clusterCIDR: {}\n", cni.subnet)
    } else {
        String::new()
    };
    format!(
        "\
# Rendered by kiln.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: \"{hostname}\"
mode: iptables
{cidr}",
        kubeconfig = l.on_node(files::KUBE_PROXY_KUBECONFIG, true),
        hostname = token("hostname"),
    )
}

/// The kubeconfig, rendered at first boot (it carries a token: mode 0600).
pub fn kubeconfig(l: &Layout) -> String {
    super::kubelet::token_kubeconfig("kube-proxy", "kube-proxy-token", l)
}

pub fn unit(l: &Layout) -> String {
    format!(
        "\
[Unit]
Description=kube-proxy: Kubernetes network proxy (kiln bundle)
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target {kubelet}

[Service]
ExecStart={cur}/bin/kube-proxy --config={config}
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
",
        kubelet = units::KUBELET,
        cur = l.current,
        config = l.on_node(files::KUBE_PROXY_CONFIG, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_kubeconfig_and_unit_point_at_the_node_files() {
        let l = Layout::default();
        let c = config(&CniConfig::default(), &l);
        let doc: serde_json::Value = serde_saphyr::from_str(&c.replace("@kiln:hostname@", "node-1")).unwrap();
        assert_eq!(doc["kind"], "KubeProxyConfiguration");
        assert_eq!(doc["hostnameOverride"], "node-1");
        assert_eq!(doc["clusterCIDR"], "10.88.0.0/16");
        assert_eq!(
            doc["clientConnection"]["kubeconfig"],
            "/var/lib/kiln/node/etc/kube-proxy/kubeconfig"
        );
        assert!(kubeconfig(&l).contains("token: \"@kiln:kube-proxy-token@\""));
        assert!(unit(&l).contains(
            "ExecStart=/var/lib/kiln/current/bin/kube-proxy --config=/var/lib/kiln/node/etc/kube-proxy/config.yaml"
        ));
        let none = CniConfig {
            mode: CniMode::None,
            ..Default::default()
        };
        assert!(
            !config(&none, &l).contains("clusterCIDR"),
            "the cluster's own CNI decides"
        );
    }
}
