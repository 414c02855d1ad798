//! A worker as an Ansible role sets one up: kubelet in /usr/local/bin, a hand-written unit with
//! its flags in a drop-in and an environment file, a KubeletConfiguration, kubelet's kubeconfig and
//! client certificate, Docker and Debian's containerd.

use std::path::{Path, PathBuf};

use kiln_firstboot::system::Recording;

use super::write;

pub const UNIT: &str = "[Unit]
Description=Kubernetes kubelet (ansible role kubernetes-node)
After=docker.service containerd.service
Wants=containerd.service

[Service]
EnvironmentFile=-/etc/default/kubelet
ExecStart=/usr/local/bin/kubelet $KUBELET_ARGS $KUBELET_EXTRA_ARGS
Restart=always

[Install]
WantedBy=multi-user.target
";

pub const DROPIN: &str = "[Service]
Environment=\"KUBELET_ARGS=--kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml --container-runtime-endpoint=unix:///run/containerd/containerd.sock --node-ip=10.8.0.205 --hostname-override=worker96\"
";

pub const ENV: &str = "KUBELET_EXTRA_ARGS=--max-pods=50\n";

pub const CONFIG: &str = "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
";

pub const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: default-cluster
  cluster:
    server: https://10.8.0.1:6443
    certificate-authority: /etc/kubernetes/pki/ca.crt
contexts:
- name: default-context
  context: {cluster: default-cluster, user: default-auth}
current-context: default-context
users:
- name: default-auth
  user:
    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem
    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem
";

/// `/etc/containerd/config.toml` as Debian 12's containerd package ships it.
pub const DEBIAN_CONTAINERD_TOML: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      conf_dir = \"/etc/cni/net.d\"\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/var/lib/containerd/opt\"\n";

/// The worker as the Ansible role left it.
pub fn worker(dir: &Path) -> PathBuf {
    let root = dir.join("worker");
    for (p, c) in [
        ("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro\n"),
        ("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n"),
        ("etc/hostname", "worker96\n"),
        ("etc/systemd/system/kubelet.service", UNIT),
        ("etc/systemd/system/kubelet.service.d/10-flags.conf", DROPIN),
        ("etc/default/kubelet", ENV),
        ("var/lib/kubelet/config.yaml", CONFIG),
        ("etc/kubernetes/kubelet.conf", KUBECONFIG),
        ("etc/kubernetes/pki/ca.crt", "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"),
        (
            "var/lib/kubelet/pki/kubelet-client-current.pem",
            "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n-----BEGIN EC PRIVATE KEY-----\nMHcfake\n-----END EC PRIVATE KEY-----\n",
        ),
        ("usr/local/bin/kubelet", "old kubelet 1.32.13\n"),
        ("lib/systemd/system/docker.service", "[Service]\nExecStart=/usr/sbin/dockerd -H fd://\n"),
        ("lib/systemd/system/docker.socket", "[Socket]\nListenStream=/run/docker.sock\n"),
        ("lib/systemd/system/containerd.service", "[Service]\nExecStart=/usr/bin/containerd\n"),
        // Debian's containerd package's own config.
        ("etc/containerd/config.toml", DEBIAN_CONTAINERD_TOML),
        ("etc/cni/net.d/10-flannel.conflist", "{\"name\": \"cbr0\", \"cniVersion\": \"0.3.1\", \"plugins\": []}\n"),
    ] {
        write(&root, p, c);
    }
    root
}

/// The worker's systemd: kubelet, Docker and containerd enabled and running.
pub fn worker_system(root: &Path) -> Recording {
    let mut sys = Recording::new(root);
    for u in [
        "kubelet.service",
        "docker.socket",
        "docker.service",
        "containerd.service",
    ] {
        sys.unit_files.insert(u.into(), "enabled".into());
        sys.active.insert(u.into());
    }
    sys
}

/// A bundle whose kubelet keeps the worker's maxPods.
pub const KEEPS_MAX_PODS: &str = "  config:\n    kubelet:\n      settings:\n        maxPods: 50\n";

/// A bundle that keeps the worker's maxPods and Docker's registry mirror for docker.io.
pub const KEEPS_MAX_PODS_AND_MIRROR: &str = "  config:\n    kubelet:\n      settings:\n        maxPods: 50\n    containerd:\n      registries:\n        docker.io:\n          mirrors:\n          - host: https://mirror.lan\n";
