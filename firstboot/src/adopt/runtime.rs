//! The old runtime's settings against the bundle's containerd: what the worker configured in
//! Docker's `/etc/docker/daemon.json` and in the distribution containerd's
//! `/etc/containerd/config.toml` (schema version 1 to 4) and its registry `hosts.toml` files, each
//! with a verdict, so that a registry mirror, an insecure registry, a registry credential, the
//! sandbox image or the cgroup driver the worker has is not dropped without the operator knowing.
//! Only what the files set is compared: a default the worker never wrote is the bundle's to choose.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use toml::{Table, Value};

use kiln_bundle::layout::files;

use super::compare::{marked, Compared, Verdict};

/// Docker's configuration on the worker.
pub const DAEMON_JSON: &str = "etc/docker/daemon.json";
/// The distribution containerd's configuration on the worker.
pub const CONTAINERD_TOML: &str = "etc/containerd/config.toml";

const V2_CRI: &str = "io.containerd.grpc.v1.cri";
const V3_IMAGES: &str = "io.containerd.cri.v1.images";
const V3_RUNTIME: &str = "io.containerd.cri.v1.runtime";

/// How containerd reaches one registry host, read from a `hosts.toml`.
#[derive(Debug, Default, Clone, PartialEq)]
struct Hosts {
    server: Option<String>,
    mirrors: Vec<String>,
    skip_verify: bool,
    auth: bool,
    ca: bool,
}

impl Hosts {
    fn parse(text: &str, origin: &str) -> Result<Hosts> {
        let doc: Table = toml::from_str(text).map_err(|e| anyhow!("{origin} is not TOML: {e}"))?;
        let mirrors = doc
            .get("host")
            .and_then(Value::as_table)
            .map(|t| t.keys().map(|k| url(k)).collect())
            .unwrap_or_default();
        Ok(Hosts {
            server: doc.get("server").and_then(Value::as_str).map(url),
            mirrors,
            skip_verify: doc.get("skip_verify").and_then(Value::as_bool).unwrap_or(false),
            auth: doc
                .get("header")
                .and_then(Value::as_table)
                .is_some_and(|h| h.contains_key("Authorization")),
            ca: doc.get("ca").is_some(),
        })
    }

    fn reaches(&self, host: &str, endpoint: &str) -> bool {
        let endpoint = url(endpoint);
        self.mirrors.contains(&endpoint)
            || self.server.as_deref().unwrap_or(&files::default_registry_server(host)) == endpoint
    }
}

/// A registry URL as containerd takes it: `https://` unless it says otherwise, no trailing slash.
fn url(s: &str) -> String {
    let s = s.trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    }
}

/// The CRI settings of a containerd config.toml, whichever schema version it is in.
#[derive(Debug, Default)]
struct Cri {
    version: i64,
    root: Option<String>,
    state: Option<String>,
    disabled: bool,
    sandbox: Option<String>,
    systemd_cgroup: Option<bool>,
    max_downloads: Option<i64>,
    config_path: Option<String>,
    /// `registry.mirrors.<host>.endpoint` (schema 1 and 2; containerd 2 no longer reads it).
    mirrors: BTreeMap<String, Vec<String>>,
    /// `registry.configs.<host>`: credentials, skip_verify, a CA file (schema 1 and 2).
    configs: BTreeMap<String, Hosts>,
}

fn at<'a>(t: &'a Table, path: &[&str]) -> Option<&'a Value> {
    let (last, tables) = path.split_last()?;
    let mut cur = t;
    for k in tables {
        cur = cur.get(*k)?.as_table()?;
    }
    cur.get(*last)
}

fn runc_systemd(t: &Table) -> Option<bool> {
    at(t, &["containerd", "runtimes", "runc", "options", "SystemdCgroup"]).and_then(Value::as_bool)
}

impl Cri {
    fn parse(text: &str, origin: &str) -> Result<Cri> {
        let doc: Table = toml::from_str(text).map_err(|e| anyhow!("{origin} is not TOML: {e}"))?;
        let version = doc.get("version").and_then(Value::as_integer).unwrap_or(1);
        let s = |t: &Table, k: &str| t.get(k).and_then(Value::as_str).map(str::to_string);
        let disabled = doc
            .get("disabled_plugins")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|p| matches!(p.as_str(), Some("cri" | V2_CRI))));
        let mut cri = Cri {
            version,
            root: s(&doc, "root"),
            state: s(&doc, "state"),
            disabled,
            ..Cri::default()
        };
        let empty = Table::new();
        let plugin = |name: &str| at(&doc, &["plugins", name]).and_then(Value::as_table).unwrap_or(&empty);
        let (images, runtime) = match version {
            1 => (plugin("cri"), plugin("cri")),
            2 => (plugin(V2_CRI), plugin(V2_CRI)),
            _ => (plugin(V3_IMAGES), plugin(V3_RUNTIME)),
        };
        cri.sandbox = if version <= 2 {
            s(images, "sandbox_image")
        } else {
            at(images, &["pinned_images", "sandbox"])
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        cri.systemd_cgroup = runc_systemd(runtime);
        cri.max_downloads = images.get("max_concurrent_downloads").and_then(Value::as_integer);
        let registry = images.get("registry").and_then(Value::as_table).unwrap_or(&empty);
        cri.config_path = s(registry, "config_path");
        for (host, m) in registry.get("mirrors").and_then(Value::as_table).unwrap_or(&empty) {
            let endpoints = m
                .get("endpoint")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default();
            cri.mirrors.insert(host.clone(), endpoints);
        }
        for (host, c) in registry.get("configs").and_then(Value::as_table).unwrap_or(&empty) {
            let Some(c) = c.as_table() else { continue };
            cri.configs.insert(
                host.clone(),
                Hosts {
                    auth: c.get("auth").is_some(),
                    skip_verify: at(c, &["tls", "insecure_skip_verify"])
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    ca: at(c, &["tls", "ca_file"]).is_some(),
                    ..Hosts::default()
                },
            );
        }
        Ok(cri)
    }
}

/// The bundle's containerd: its config and the `hosts.toml` of every registry it configures.
pub struct BundleRuntime {
    cri: Cri,
    hosts: BTreeMap<String, Hosts>,
}

impl BundleRuntime {
    /// From the bundle's `etc/containerd/config.toml` and its `certs.d/<host>/hosts.toml` files
    /// (`hosts` maps a registry host to its file's text).
    pub fn parse(config: &str, hosts: &BTreeMap<String, String>) -> Result<BundleRuntime> {
        let origin = "the bundle's containerd config.toml";
        let cri = Cri::parse(&marked(config, origin)?, origin)?;
        let mut parsed = BTreeMap::new();
        for (host, text) in hosts {
            let origin = format!("the bundle's hosts.toml for {host}");
            parsed.insert(host.clone(), Hosts::parse(&marked(text, &origin)?, &origin)?);
        }
        Ok(BundleRuntime { cri, hosts: parsed })
    }

    fn host(&self, host: &str) -> Option<&Hosts> {
        self.hosts.get(host)
    }

    /// Whether the bundle's containerd reaches `host` through `endpoint`.
    fn reaches(&self, host: &str, endpoint: &str) -> bool {
        match self.host(host) {
            Some(h) => h.reaches(host, endpoint),
            None => url(endpoint) == files::default_registry_server(host),
        }
    }

    fn trusts_insecure(&self, host: &str) -> Option<&'static str> {
        let h = self.host(host)?;
        if h.skip_verify {
            Some("skip_verify")
        } else if h.server.as_deref().is_some_and(|s| s.starts_with("http://")) {
            Some("plain HTTP")
        } else if h.ca {
            Some("its CA")
        } else {
            None
        }
    }

    fn cgroup_driver(&self) -> &'static str {
        if self.cri.systemd_cgroup == Some(true) {
            "systemd"
        } else {
            "cgroupfs"
        }
    }
}

fn row(setting: impl Into<String>, node: impl Into<String>, source: &str, verdict: Verdict) -> Compared {
    Compared {
        setting: setting.into(),
        node: node.into(),
        bundle: None,
        verdict,
        source: source.to_string(),
        detail: String::new(),
    }
}

impl Compared {
    fn with_bundle(mut self, b: impl Into<String>) -> Self {
        self.bundle = Some(b.into());
        self
    }
    fn with_detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }
}

fn same_or(verdict_if_not: Verdict, same: bool) -> Verdict {
    if same {
        Verdict::Same
    } else {
        verdict_if_not
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// Docker's daemon.json, setting by setting.
fn daemon_json(text: &str, bundle: &BundleRuntime, out: &mut Vec<Compared>) -> Result<()> {
    let source = format!("/{DAEMON_JSON}");
    let doc: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).with_context(|| format!("the worker's {source} is not a JSON object"))?;
    for (key, value) in &doc {
        match key.as_str() {
            "registry-mirrors" => {
                for m in strings(value) {
                    let same = bundle.reaches("docker.io", &m);
                    out.push(
                        row(key.as_str(), m.as_str(), &source, same_or(Verdict::Lost, same)).with_detail(if same {
                            ""
                        } else {
                            "the bundle's containerd has no such mirror for docker.io (spec.config.containerd.registries)"
                        }),
                    );
                }
            }
            "insecure-registries" => {
                for r in strings(value) {
                    let how = (!r.contains('/')).then(|| bundle.trusts_insecure(&r)).flatten();
                    let r_row = row(key.as_str(), r.as_str(), &source, same_or(Verdict::Lost, how.is_some()));
                    out.push(match how {
                        Some(how) => r_row.with_bundle(how),
                        None if r.contains('/') => r_row.with_detail("containerd has no insecure registry by address range"),
                        None => r_row.with_detail("the bundle's containerd verifies its certificate over HTTPS"),
                    });
                }
            }
            "exec-opts" => {
                for o in strings(value) {
                    match o.split_once('=') {
                        Some(("native.cgroupdriver", driver)) => {
                            let b = bundle.cgroup_driver();
                            out.push(
                                row("exec-opts native.cgroupdriver", driver, &source, same_or(Verdict::Changed, driver == b))
                                    .with_bundle(b),
                            );
                        }
                        _ => out.push(
                            row("exec-opts", o.as_str(), &source, Verdict::Ignored)
                                .with_detail("dockerd's own: dockerd is stopped and masked"),
                        ),
                    }
                }
            }
            "data-root" => out.push(
                row(key.as_str(), value.as_str().unwrap_or_default(), &source, Verdict::Replaced).with_detail(
                    "Docker's images stay there and are not carried over; the bundle's preloaded images (spec.images) are imported into containerd",
                ),
            ),
            _ => out.push(
                row(key.as_str(), value.to_string(), &source, Verdict::Ignored)
                    .with_detail("dockerd's own: no pod runs through dockerd, which is stopped and masked"),
            ),
        }
    }
    Ok(())
}

/// The distribution containerd's config.toml and the hosts.toml files it points at.
fn containerd_toml(root: &Path, text: &str, bundle: &BundleRuntime, out: &mut Vec<Compared>) -> Result<()> {
    let source = format!("/{CONTAINERD_TOML}");
    let old = Cri::parse(text, &format!("the worker's {source}"))?;
    if old.disabled {
        out.push(
            row("disabled_plugins", "cri", &source, Verdict::Ignored)
                .with_detail("its CRI plugin is off, so no kubelet used this containerd"),
        );
        return Ok(());
    }
    let new = &bundle.cri;
    let mut compare = |setting: &str, node: Option<String>, b: Option<String>, loss: Verdict| {
        let Some(node) = node else { return };
        let verdict = match &b {
            None => Verdict::Lost,
            Some(b) => same_or(loss, *b == node),
        };
        let r = row(setting, node, &source, verdict);
        out.push(match b {
            Some(b) => r.with_bundle(b),
            None => r.with_detail("the bundle does not set it (containerd's default)"),
        });
    };
    let sandbox = if old.version <= 2 {
        "sandbox_image"
    } else {
        "pinned_images.sandbox"
    };
    compare(sandbox, old.sandbox.clone(), new.sandbox.clone(), Verdict::Changed);
    compare(
        "runc SystemdCgroup",
        old.systemd_cgroup.map(|b| b.to_string()),
        Some(new.systemd_cgroup.unwrap_or(false).to_string()),
        Verdict::Changed,
    );
    compare(
        "max_concurrent_downloads",
        old.max_downloads.map(|n| n.to_string()),
        new.max_downloads.map(|n| n.to_string()),
        Verdict::Changed,
    );
    // The old root holds the old images: replaced, never a loss.
    for (setting, node, b) in [("root", &old.root, &new.root), ("state", &old.state, &new.state)] {
        if let Some(node) = node {
            let b = b.clone().unwrap_or_default();
            let r =
                row(setting, node.as_str(), &source, same_or(Verdict::Replaced, *node == b)).with_bundle(b.as_str());
            out.push(if *node == b {
                r
            } else {
                r.with_detail(
                    "the images there are not carried over; the bundle's preloaded images (spec.images) are imported",
                )
            });
        }
    }
    for (host, endpoints) in &old.mirrors {
        for e in endpoints {
            let same = bundle.reaches(host, e);
            out.push(
                row(
                    format!("registry.mirrors.\"{host}\""),
                    e.as_str(),
                    &source,
                    same_or(Verdict::Lost, same),
                )
                .with_detail(if same {
                    ""
                } else {
                    "the bundle's containerd has no such endpoint for it"
                }),
            );
        }
    }
    for (host, c) in &old.configs {
        let b = bundle.host(host).cloned().unwrap_or_default();
        let at = format!("registry.configs.\"{host}\"");
        registry_rows(&at, c, &b, &source, out);
    }
    // Each hosts.toml under config_path (a colon-separated list, as containerd reads it).
    for dir in old
        .config_path
        .iter()
        .flat_map(|p| p.split(':'))
        .filter(|d| !d.is_empty())
    {
        let Ok(entries) = fs::read_dir(root.join(dir.trim_start_matches('/'))) else {
            continue;
        };
        let mut hosts: Vec<_> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        hosts.sort();
        for host in hosts {
            let rel = format!(
                "{}/{host}/hosts.toml",
                dir.trim_start_matches('/').trim_end_matches('/')
            );
            let Ok(text) = fs::read_to_string(root.join(&rel)) else {
                continue;
            };
            let source = format!("/{rel}");
            let old = Hosts::parse(&text, &format!("the worker's {source}"))?;
            let b = bundle.host(&host).cloned().unwrap_or_default();
            if let Some(server) = &old.server {
                let bs = b
                    .server
                    .clone()
                    .unwrap_or_else(|| files::default_registry_server(&host));
                out.push(
                    row(
                        "server",
                        server.as_str(),
                        &source,
                        same_or(Verdict::Changed, *server == bs),
                    )
                    .with_bundle(bs),
                );
            }
            for m in &old.mirrors {
                let same = b.mirrors.contains(m);
                out.push(
                    row("mirror", m.as_str(), &source, same_or(Verdict::Lost, same)).with_detail(if same {
                        ""
                    } else {
                        "the bundle's containerd has no such mirror for it"
                    }),
                );
            }
            registry_rows(&host, &old, &b, &source, out);
        }
    }
    Ok(())
}

/// The trust and credentials of one registry: each the worker has must be in the bundle too.
fn registry_rows(setting: &str, old: &Hosts, new: &Hosts, source: &str, out: &mut Vec<Compared>) {
    for (what, has, keeps, hint) in [
        (
            "auth",
            old.auth,
            new.auth,
            "spec.config.containerd.registries[HOST].auth, filled from registryAuth",
        ),
        (
            "skip_verify",
            old.skip_verify,
            new.skip_verify,
            "spec.config.containerd.registries[HOST].skipVerify",
        ),
        ("ca", old.ca, new.ca, "spec.config.containerd.registries[HOST].ca"),
    ] {
        if has {
            let r = row(
                format!("{setting} {what}"),
                "set",
                source,
                same_or(Verdict::Lost, keeps),
            );
            out.push(if keeps {
                r.with_bundle("set")
            } else {
                r.with_detail(format!("the bundle does not set it ({hint})"))
            });
        }
    }
}

/// Compare the worker's runtime configuration under `root` with the bundle's containerd. Nothing is
/// compared for a file the worker does not have; a file that does not parse is an error that names
/// it.
pub fn compare(root: &Path, bundle: &BundleRuntime) -> Result<Vec<Compared>> {
    let mut out = Vec::new();
    if let Ok(text) = fs::read_to_string(root.join(DAEMON_JSON)) {
        daemon_json(&text, bundle, &mut out)?;
    }
    if let Ok(text) = fs::read_to_string(root.join(CONTAINERD_TOML)) {
        containerd_toml(root, &text, bundle, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE_V4: &str = r#"version = 4
root = "/var/lib/containerd"
state = "/run/containerd"
[plugins."io.containerd.cri.v1.images"]
[plugins."io.containerd.cri.v1.images".pinned_images]
sandbox = "registry.k8s.io/pause:3.10"
[plugins."io.containerd.cri.v1.images".registry]
config_path = "/var/lib/kiln/node/etc/containerd/certs.d"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
BinaryName = "/var/lib/kiln/current/bin/runc"
SystemdCgroup = true
"#;

    fn bundle(hosts: &[(&str, &str)]) -> BundleRuntime {
        let hosts = hosts.iter().map(|(h, t)| (h.to_string(), t.to_string())).collect();
        BundleRuntime::parse(BUNDLE_V4, &hosts).unwrap()
    }

    fn verdicts(rows: &[Compared]) -> Vec<(String, String, Verdict)> {
        rows.iter()
            .map(|c| (c.setting.clone(), c.node.clone(), c.verdict))
            .collect()
    }

    fn worker(files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let p = t.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, c).unwrap();
        }
        t
    }

    #[test]
    fn daemon_json_mirrors_insecure_registries_and_the_cgroup_driver_are_compared() {
        let w = worker(&[(
            DAEMON_JSON,
            r#"{"registry-mirrors": ["https://mirror.example.com/"], "insecure-registries": ["10.8.0.9:5000", "registry.lan:5000", "10.0.0.0/8"],
                "exec-opts": ["native.cgroupdriver=cgroupfs"], "data-root": "/srv/docker", "log-driver": "json-file"}"#,
        )]);
        let b = bundle(&[(
            "registry.lan:5000",
            "server = \"https://registry.lan:5000\"\nskip_verify = true\n[host]\n",
        )]);
        let rows = compare(w.path(), &b).unwrap();
        let v = |s: &str, n: &str| (s.to_string(), n.to_string());
        let got: Vec<_> = verdicts(&rows);
        let want = [
            (v("registry-mirrors", "https://mirror.example.com/"), Verdict::Lost),
            (v("insecure-registries", "10.8.0.9:5000"), Verdict::Lost),
            (v("insecure-registries", "registry.lan:5000"), Verdict::Same),
            (v("insecure-registries", "10.0.0.0/8"), Verdict::Lost),
            (v("exec-opts native.cgroupdriver", "cgroupfs"), Verdict::Changed),
            (v("data-root", "/srv/docker"), Verdict::Replaced),
            (v("log-driver", "\"json-file\""), Verdict::Ignored),
        ];
        assert_eq!(got.len(), want.len(), "{rows:#?}");
        for ((s, n), verdict) in want {
            assert!(
                got.contains(&(s.clone(), n.clone(), verdict)),
                "{s}={n} {verdict}: {rows:#?}"
            );
        }
        assert!(rows.iter().all(|r| r.source == "/etc/docker/daemon.json"));

        // The same mirror in the bundle keeps it.
        let b = bundle(&[("docker.io", "server = \"https://registry-1.docker.io\"\n[host.\"https://mirror.example.com\"]\ncapabilities = [\"pull\", \"resolve\"]\n")]);
        let rows = compare(w.path(), &b).unwrap();
        assert_eq!(rows[0].verdict, Verdict::Same, "{rows:#?}");
    }

    #[test]
    fn a_containerd_1_6_config_is_read_with_its_mirrors_credentials_and_hosts_files() {
        let w = worker(&[
            (
                CONTAINERD_TOML,
                r#"version = 2
root = "/var/lib/containerd"
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "registry.k8s.io/pause:3.6"
max_concurrent_downloads = 10
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
SystemdCgroup = true
[plugins."io.containerd.grpc.v1.cri".registry]
config_path = "/etc/containerd/certs.d"
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
endpoint = ["https://registry-1.docker.io"]
[plugins."io.containerd.grpc.v1.cri".registry.configs."registry.lan:5000".auth]
username = "robot"
password = "hunter2"
"#,
            ),
            (
                "etc/containerd/certs.d/registry.lan:5000/hosts.toml",
                "server = \"https://registry.lan:5000\"\n[host.\"https://cache.lan\"]\ncapabilities = [\"pull\"]\n",
            ),
        ]);
        let rows = compare(w.path(), &bundle(&[])).unwrap();
        let got = verdicts(&rows);
        let s = |a: &str, b: &str, v| (a.to_string(), b.to_string(), v);
        for want in [
            s("sandbox_image", "registry.k8s.io/pause:3.6", Verdict::Changed),
            s("runc SystemdCgroup", "true", Verdict::Same),
            s("max_concurrent_downloads", "10", Verdict::Lost),
            s("root", "/var/lib/containerd", Verdict::Same),
            // The default endpoint of docker.io is where the bundle's containerd goes anyway.
            s(
                "registry.mirrors.\"docker.io\"",
                "https://registry-1.docker.io",
                Verdict::Same,
            ),
            s("registry.configs.\"registry.lan:5000\" auth", "set", Verdict::Lost),
            s("server", "https://registry.lan:5000", Verdict::Same),
            s("mirror", "https://cache.lan", Verdict::Lost),
        ] {
            assert!(got.contains(&want), "{want:?}: {rows:#?}");
        }
        assert_eq!(got.len(), 8, "{rows:#?}");
        let hosts = rows.iter().find(|r| r.setting == "mirror").unwrap();
        assert_eq!(hosts.source, "/etc/containerd/certs.d/registry.lan:5000/hosts.toml");
        // The secret itself never reaches the report.
        assert!(!format!("{rows:?}").contains("hunter2"));
    }

    #[test]
    fn a_containerd_with_cri_disabled_and_broken_files_are_told_apart() {
        let w = worker(&[(CONTAINERD_TOML, "disabled_plugins = [\"cri\"]\n")]);
        let rows = compare(w.path(), &bundle(&[])).unwrap();
        assert_eq!(
            verdicts(&rows),
            [("disabled_plugins".into(), "cri".into(), Verdict::Ignored)]
        );

        let w = worker(&[(DAEMON_JSON, "{\"registry-mirrors\": [")]);
        let e = format!("{:#}", compare(w.path(), &bundle(&[])).unwrap_err());
        assert!(
            e.starts_with("the worker's /etc/docker/daemon.json is not a JSON object"),
            "{e}"
        );
        let w = worker(&[(CONTAINERD_TOML, "version = 2\n[plugins\n")]);
        let e = format!("{:#}", compare(w.path(), &bundle(&[])).unwrap_err());
        assert!(
            e.starts_with("the worker's /etc/containerd/config.toml is not TOML"),
            "{e}"
        );
        // No file, nothing to compare.
        assert!(compare(worker(&[]).path(), &bundle(&[])).unwrap().is_empty());
    }
}
