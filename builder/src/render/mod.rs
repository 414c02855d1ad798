//! Node configuration compiled at build time for the exact versions in the bundle: containerd's
//! config.toml, the KubeletConfiguration and kubelet flags, systemd units, CNI configuration, kernel
//! prerequisites and crictl.yaml. Every renderer is a pure function from values to text; the caller
//! writes the result into the bundle. Node-specific values stay as `@kiln:NAME@` placeholders.

pub mod cni;
pub mod containerd;
pub use kiln_migrate::flags;
pub mod kube_proxy;
pub mod kubelet;
pub mod registries;
pub mod units;

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use kiln_bundle::index::PlaceholderRecord;
use kiln_bundle::layout::{files, Layout};
use kiln_bundle::manifest::{CniMode, Manifest};
use kiln_bundle::mode::Mode;
use kiln_bundle::placeholder;

/// One rendered file for the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub path: String,
    pub mode: Mode,
    pub text: String,
}

/// Versions the renderers depend on.
#[derive(Debug, Clone)]
pub struct Versions {
    pub containerd: String,
    pub kubernetes: String,
}

/// Everything the manifest's `config:` section and component versions call for. Lint findings that
/// are only warnings are returned for the caller to print.
pub fn render_all(m: &Manifest, v: &Versions, layout: &Layout) -> Result<(Vec<Rendered>, Vec<String>)> {
    let cfg = &m.spec.config;
    let mut out = vec![
        Rendered {
            path: files::CONTAINERD_CONFIG.into(),
            mode: Mode::FILE,
            text: containerd::render(&v.containerd, &cfg.containerd, &m.spec.components.runtimes, layout).map_err(|e| anyhow!("spec.config.containerd: {e}"))?,
        },
        Rendered { path: files::CONTAINERD_UNIT.into(), mode: Mode::FILE, text: units::containerd(layout) },
        Rendered { path: files::MODULES_LOAD.into(), mode: Mode::FILE, text: "overlay\nbr_netfilter\n".into() },
        Rendered {
            path: files::SYSCTL.into(),
            mode: Mode::FILE,
            text: "net.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\nnet.ipv4.ip_forward = 1\n".into(),
        },
        Rendered { path: files::CRICTL.into(), mode: Mode::FILE, text: crictl_yaml(layout) },
    ];
    out.extend(registries::render(&cfg.containerd, layout));
    for name in m.spec.components.runtimes.keys() {
        out.push(Rendered {
            path: format!("{}/{name}.yaml", files::RUNTIME_CLASSES_DIR),
            mode: Mode::FILE,
            text: format!(
                "# The RuntimeClass for the bundle's `{name}` runtime handler: kubectl apply -f this file, then\n# set `runtimeClassName: {name}` in a pod.\napiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: {name}\nhandler: {name}\n"
            ),
        });
    }
    if !m.spec.images.is_empty() {
        let archives: Vec<String> = m.spec.images.iter().map(|i| files::image_archive(&i.name)).collect();
        out.push(Rendered {
            path: files::IMAGES_UNIT.into(),
            mode: Mode::FILE,
            text: units::images(layout, &archives),
        });
    }
    if cfg.cni.mode == CniMode::Bridge {
        out.push(Rendered {
            path: files::CNI_CONFLIST.into(),
            mode: Mode::FILE,
            text: cni::conflist(&cfg.cni),
        });
        out.push(Rendered {
            path: files::CNI_LOOPBACK.into(),
            mode: Mode::FILE,
            text: cni::loopback(),
        });
    }
    let mut warnings = Vec::new();
    if m.has_kubelet() {
        let findings = flags::lint(&cfg.kubelet.flags, &v.kubernetes);
        let errors: Vec<String> = findings
            .iter()
            .filter(|f| f.severity == flags::Severity::Error)
            .map(|f| f.to_string())
            .collect();
        if !errors.is_empty() {
            return Err(anyhow!("spec.config.kubelet.flags:\n  {}", errors.join("\n  ")));
        }
        warnings.extend(findings.iter().map(|f| format!("spec.config.kubelet.flags: {f}")));
        let kubelet_cfg = kubelet::config(&v.kubernetes, &cfg.kubelet, cfg.containerd.systemd_cgroup, layout)
            .map_err(|e| anyhow!("spec.config.kubelet.settings: {e}"))?;
        out.push(Rendered {
            path: files::KUBELET_CONFIG.into(),
            mode: Mode::FILE,
            text: kubelet_cfg,
        });
        let args = kubelet::flags(&v.kubernetes, &cfg.kubelet, layout);
        out.push(Rendered {
            path: files::KUBELET_UNIT.into(),
            mode: Mode::FILE,
            text: units::kubelet(layout, &args, !m.spec.images.is_empty()),
        });
        out.push(Rendered {
            path: files::KUBELET_BOOTSTRAP.into(),
            mode: Mode::SECRET,
            text: kubelet::bootstrap_kubeconfig(layout),
        });
        out.push(Rendered {
            path: files::CLUSTER_CA.into(),
            mode: Mode::FILE,
            text: format!("{}\n", placeholder::token("cluster-ca")),
        });
    }
    if m.spec.components.kube_proxy.is_some() {
        out.push(Rendered {
            path: files::KUBE_PROXY_CONFIG.into(),
            mode: Mode::FILE,
            text: kube_proxy::config(&cfg.cni, layout),
        });
        out.push(Rendered {
            path: files::KUBE_PROXY_KUBECONFIG.into(),
            mode: Mode::SECRET,
            text: kube_proxy::kubeconfig(layout),
        });
        out.push(Rendered {
            path: files::KUBE_PROXY_UNIT.into(),
            mode: Mode::FILE,
            text: kube_proxy::unit(layout),
        });
        if !m.has_kubelet() {
            return Err(anyhow!(
                "spec.components.kubeProxy: kube-proxy needs the kubelet component (it runs on a node)"
            ));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((out, warnings))
}

/// The placeholders used in rendered files, for the index.
pub fn placeholders(rendered: &[Rendered]) -> Result<Vec<PlaceholderRecord>> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rendered {
        for name in placeholder::scan(&r.text).map_err(|e| anyhow!("{}: {e}", r.path))? {
            by_name.entry(name).or_default().push(r.path.clone());
        }
    }
    Ok(by_name
        .into_iter()
        .map(|(name, mut files)| {
            files.sort();
            PlaceholderRecord {
                secret: placeholder::is_secret(&name),
                name,
                files,
            }
        })
        .collect())
}

/// Whether a bundle file is rendered at first boot (so references to it point under `layout.node`).
pub fn is_template(path: &str) -> bool {
    matches!(
        path,
        files::KUBELET_CONFIG
            | files::KUBELET_UNIT
            | files::KUBELET_BOOTSTRAP
            | files::CLUSTER_CA
            | files::KUBE_PROXY_CONFIG
            | files::KUBE_PROXY_KUBECONFIG
    )
}

pub fn crictl_yaml(layout: &Layout) -> String {
    format!(
        "runtime-endpoint: unix://{sock}\nimage-endpoint: unix://{sock}\ntimeout: 10\n",
        sock = layout.containerd_socket
    )
}

/// `(major, minor)` of a version string, for version-dependent rendering.
pub fn minor(version: &str) -> Option<(u32, u32)> {
    kiln_bundle::manifest::parse_minor(version)
}
