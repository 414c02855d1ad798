//! What a running worker's kubelet is: its unit, drop-ins and environment files as systemd merges
//! them, its flags and KubeletConfiguration (read with `kiln migrate`'s readers), and its
//! identity (Node name, node IP, kubeconfig). Read-only.

use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use kiln_migrate::{Input, OldKubeletConfig, OldSettings};

use crate::node::Kubeconfig;

/// Where systemd looks for units, in its order of precedence.
pub const UNIT_DIRS: [&str; 4] = [
    "etc/systemd/system",
    "run/systemd/system",
    "lib/systemd/system",
    "usr/lib/systemd/system",
];

/// The old kubelet, as read.
pub struct OldKubelet {
    /// The files read, as absolute paths on the node, in the order systemd applies them.
    pub read: Vec<String>,
    /// Its drop-ins (relative to the root): moved aside at adoption, since they would apply to
    /// kiln's `kubelet.service` too.
    pub dropins: Vec<String>,
    pub settings: OldSettings,
    pub config: Option<OldKubeletConfig>,
    /// The Node's name: `--hostname-override`, else the host name.
    pub name: String,
    /// `--node-ip`, when the old kubelet had one.
    pub node_ip: Option<String>,
    /// The old kubeconfig: its path on the node and text (kubelet's client identity).
    pub kubeconfig_path: String,
    pub kubeconfig_text: String,
    pub api_server: String,
    pub cluster_ca: String,
}

impl OldKubelet {
    /// The last value of `--flag`, as kubelet takes it.
    pub fn flag(&self, name: &str) -> Option<&str> {
        last_flag(&self.settings, name)
    }
}

fn last_flag<'a>(s: &'a OldSettings, name: &str) -> Option<&'a str> {
    s.kubelet
        .iter()
        .rev()
        .find(|f| f.name == name)
        .map(|f| f.value.as_str())
}

/// The unit file `unit` resolves to (the first directory in systemd's order that has it) and its
/// drop-ins from every directory, ordered by file name as systemd applies them.
pub fn unit_files(root: &Path, unit: &str) -> (Option<String>, Vec<String>) {
    let mut main = None;
    let mut dropins: Vec<(String, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for dir in UNIT_DIRS {
        let p = format!("{dir}/{unit}");
        if main.is_none() && root.join(&p).is_file() {
            main = Some(p);
        }
        let d = root.join(format!("{dir}/{unit}.d"));
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // A drop-in of the same name in an earlier directory hides the later ones.
            if name.ends_with(".conf") && e.path().is_file() && seen.insert(name.clone()) {
                dropins.push((name.clone(), format!("{dir}/{unit}.d/{name}")));
            }
        }
    }
    dropins.sort();
    (main, dropins.into_iter().map(|(_, p)| p).collect())
}

fn read_text(root: &Path, rel: &str) -> Result<String> {
    fs::read_to_string(root.join(rel)).with_context(|| format!("cannot read /{rel}"))
}

/// Read the worker's kubelet under `root`: its unit `unit` (usually `kubelet.service`).
pub fn read(root: &Path, unit: &str) -> Result<OldKubelet> {
    let (main, dropins) = unit_files(root, unit);
    let Some(main) = main else {
        bail!(
            "no {unit} under /{}: this worker's kubelet is not a systemd unit kiln can read",
            UNIT_DIRS.join(", /")
        );
    };
    let mut inputs = Vec::new();
    for rel in std::iter::once(&main).chain(&dropins) {
        inputs.push(Input {
            origin: format!("/{rel}"),
            text: read_text(root, rel)?,
        });
    }
    // The environment files the unit names, where they exist (`kiln migrate` reports the rest).
    let units: Vec<_> = inputs
        .iter()
        .map(|i| kiln_migrate::systemd::parse_unit(&i.text, &i.origin))
        .collect();
    let service = kiln_migrate::systemd::merge(&units).map_err(|e| anyhow!("/{main}: {e}"))?;
    for (path, _optional, _unit) in &service.environment_files {
        let rel = path.trim_start_matches('/');
        if let Ok(text) = fs::read_to_string(root.join(rel)) {
            if !text.trim().is_empty() {
                inputs.push(Input {
                    origin: path.clone(),
                    text,
                });
            }
        }
    }
    let read: Vec<String> = inputs.iter().map(|i| i.origin.clone()).collect();
    let settings = kiln_migrate::read(&inputs).map_err(|e| anyhow!("reading the old kubelet: {e}"))?;
    let config = match last_flag(&settings, "config") {
        Some(path) => Some(OldKubeletConfig {
            origin: path.to_string(),
            text: read_text(root, path.trim_start_matches('/'))
                .with_context(|| format!("the old kubelet's --config {path}"))?,
        }),
        None => None,
    };
    let kubeconfig_path = last_flag(&settings, "kubeconfig")
        .ok_or_else(|| {
            anyhow!(
                "the old kubelet has no --kubeconfig (read {}): it has no identity to keep",
                read.join(", ")
            )
        })?
        .to_string();
    let kubeconfig_text = read_text(root, kubeconfig_path.trim_start_matches('/'))
        .with_context(|| format!("the old kubelet's --kubeconfig {kubeconfig_path}"))?;
    let kc = Kubeconfig::load(root, &kubeconfig_path)?;
    if !kc.has_client_identity() {
        bail!("{kubeconfig_path}: no client certificate and key: adoption keeps the kubelet's own identity and needs them");
    }
    let name = match last_flag(&settings, "hostname-override") {
        Some(n) => n.to_string(),
        None => read_text(root, "etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow!("no --hostname-override and no /etc/hostname: cannot tell the Node's name"))?,
    };
    let node_ip = last_flag(&settings, "node-ip").map(str::to_string);
    Ok(OldKubelet {
        read,
        dropins,
        config,
        name,
        node_ip,
        api_server: kc.server.clone(),
        cluster_ca: String::from_utf8_lossy(kc.ca_pem()).into_owned(),
        kubeconfig_path,
        kubeconfig_text,
        settings,
    })
}
