//! systemd units for containerd and kubelet, after the units upstream ships (containerd's
//! `containerd.service`, kubeadm's `kubelet.service`), pointing at the bundle's binaries. kubelet
//! depends on containerd, never on Docker.

use kiln_bundle::layout::{files, Layout};

pub fn containerd(l: &Layout) -> String {
    format!(
        "\
[Unit]
Description=containerd container runtime (kiln bundle)
Documentation=https://containerd.io
After=network.target local-fs.target

[Service]
Environment=PATH={cur}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ExecStartPre=-/sbin/modprobe overlay
ExecStart={cur}/bin/containerd --config {cur}/{config}
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
# Limits as upstream's unit: accounting belongs to the containers' own cgroups.
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
",
        cur = l.current,
        config = files::CONTAINERD_CONFIG
    )
}

/// `args` are the kubelet's flags, one per line in ExecStart.
pub fn kubelet(l: &Layout, args: &[String]) -> String {
    let mut exec = format!("ExecStart={}/bin/kubelet", l.current);
    for a in args {
        exec.push_str(" \\\n  ");
        exec.push_str(a);
    }
    format!(
        "\
[Unit]
Description=kubelet: The Kubernetes Node Agent (kiln bundle)
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target containerd.service
Requires=containerd.service
StartLimitIntervalSec=0

[Service]
{exec}
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
"
    )
}
