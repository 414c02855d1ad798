//! systemd units for containerd and kubelet, after the units upstream ships (containerd's
//! `containerd.service`, kubeadm's `kubelet.service`), pointing at the bundle's binaries. kubelet
//! depends on containerd, never on Docker.

use kiln_bundle::layout::{files, units, Layout};

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

/// `args` are the kubelet's flags, one per line in ExecStart. With preloaded images, kubelet
/// starts only after they are imported (pods must not try to pull the sandbox image).
pub fn kubelet(l: &Layout, args: &[String], images: bool) -> String {
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
{wants}
StartLimitIntervalSec=0

[Service]
{exec}
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
",
        wants = if images {
            format!(
                "Wants=network-online.target {img}\nAfter=network-online.target containerd.service {img}\nRequires=containerd.service",
                img = units::IMAGES
            )
        } else {
            "Wants=network-online.target\nAfter=network-online.target containerd.service\nRequires=containerd.service"
                .to_string()
        }
    )
}

/// The oneshot unit that imports the bundle's image archives into containerd's `k8s.io`
/// namespace (where the CRI plugin looks) with the bundle's own `ctr`, after containerd and
/// before kubelet. Importing again is harmless: containerd keeps content by digest.
pub fn images(l: &Layout, archives: &[String]) -> String {
    let mut exec = String::new();
    for a in archives {
        exec.push_str(&format!(
            "ExecStart={cur}/bin/ctr --address {sock} --namespace k8s.io images import {cur}/{a}\n",
            cur = l.current,
            sock = l.containerd_socket
        ));
    }
    format!(
        "\
[Unit]
Description=Import the kiln bundle's preloaded images into containerd
After=containerd.service
Requires=containerd.service
Before={kubelet}

[Service]
Type=oneshot
RemainAfterExit=yes
{exec}
[Install]
WantedBy=multi-user.target
",
        kubelet = units::KUBELET
    )
}
