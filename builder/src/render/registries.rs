//! Registry configuration: one containerd `hosts.toml` per registry host under the bundle's
//! `etc/containerd/certs.d`, which CRI reads through `registry.config_path` (the same file format for
//! containerd 1.6 and 2.x). CA certificates travel in the bundle next to their `hosts.toml`;
//! credentials never do: a registry with `auth` gets an `Authorization` header whose value is the
//! secret placeholder `@kiln:registry-auth/<host>@`, filled at first boot from the node
//! configuration. The whole directory is rendered into the node directory at first boot
//! (`kiln_bundle::layout::files::rendered_on_node`), so containerd reads it from there.

use kiln_bundle::layout::{files, Layout};
use kiln_bundle::manifest::{ContainerdConfig, Registry};
use kiln_bundle::mode::Mode;
use kiln_bundle::placeholder::{token, REGISTRY_AUTH};
use toml::{Table, Value};

use super::Rendered;

/// The directory containerd is pointed at on the node.
pub fn config_path(l: &Layout) -> String {
    l.on_node(files::REGISTRY_HOSTS_DIR, true)
}

/// A CA certificate a registry entry carries: where it goes in the bundle, the manifest-relative
/// file it comes from, and the manifest field that named it.
pub struct CaFile {
    pub path: String,
    pub from: String,
    pub field: String,
}

/// Every CA certificate named by `spec.config.containerd.registries`.
pub fn ca_files(cfg: &ContainerdConfig) -> Vec<CaFile> {
    let mut out = Vec::new();
    for (host, r) in &cfg.registries {
        let at = format!("spec.config.containerd.registries[{host}]");
        if let Some(ca) = &r.ca {
            out.push(CaFile {
                path: ca_path(host, None),
                from: ca.clone(),
                field: format!("{at}.ca"),
            });
        }
        for (i, m) in r.mirrors.iter().enumerate() {
            if let Some(ca) = &m.ca {
                out.push(CaFile {
                    path: ca_path(host, Some(i)),
                    from: ca.clone(),
                    field: format!("{at}.mirrors[{i}].ca"),
                });
            }
        }
    }
    out
}

fn ca_path(host: &str, mirror: Option<usize>) -> String {
    match mirror {
        None => format!("{}/{host}/ca.crt", files::REGISTRY_HOSTS_DIR),
        Some(i) => format!("{}/{host}/mirror-{i}-ca.crt", files::REGISTRY_HOSTS_DIR),
    }
}

fn server_of(host: &str, r: &Registry) -> String {
    r.server.clone().unwrap_or_else(|| files::default_registry_server(host))
}

/// The `hosts.toml` of every registry.
pub fn render(cfg: &ContainerdConfig, l: &Layout) -> Vec<Rendered> {
    let on_node = |p: &str| l.on_node(p, true);
    let mut out = Vec::new();
    for (host, r) in &cfg.registries {
        let mut doc = Table::new();
        if host != "_default" {
            doc.insert("server".into(), server_of(host, r).into());
        }
        if r.ca.is_some() {
            doc.insert("ca".into(), on_node(&ca_path(host, None)).into());
        }
        if r.skip_verify {
            doc.insert("skip_verify".into(), true.into());
        }
        if r.auth {
            let header = Table::from_iter([(
                "Authorization".to_string(),
                Value::String(format!("Basic {}", token(&format!("{REGISTRY_AUTH}{host}")))),
            )]);
            doc.insert("header".into(), header.into());
        }
        let mut mirrors = Table::new();
        for (i, m) in r.mirrors.iter().enumerate() {
            let mut t = Table::new();
            t.insert(
                "capabilities".into(),
                Value::Array(m.capabilities.iter().map(|c| Value::String(c.clone())).collect()),
            );
            if m.ca.is_some() {
                t.insert("ca".into(), on_node(&ca_path(host, Some(i))).into());
            }
            if m.skip_verify {
                t.insert("skip_verify".into(), true.into());
            }
            mirrors.insert(m.host.clone(), t.into());
        }
        // Always a `[host]` table, even an empty one: containerd 1.6 refuses a hosts.toml without
        // it ("invalid `host` tree") and then silently falls back to its defaults (plain HTTP for
        // 127.0.0.1), as the real-registry test showed.
        doc.insert("host".into(), mirrors.into());
        let body = toml::to_string(&doc).expect("a table serializes");
        out.push(Rendered {
            path: files::registry_hosts_toml(host),
            mode: Mode::FILE,
            text: format!("# Rendered by kiln: how containerd reaches {host}.\n{body}"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_bundle::manifest::Mirror;

    #[test]
    fn hosts_toml_has_server_mirrors_ca_and_a_credential_placeholder() {
        let mut cfg = ContainerdConfig::default();
        cfg.registries.insert(
            "registry.example.com:5000".into(),
            Registry {
                ca: Some("certs/ca.pem".into()),
                auth: true,
                mirrors: vec![Mirror {
                    host: "https://mirror.example.com".into(),
                    capabilities: vec!["pull".into()],
                    ca: None,
                    skip_verify: true,
                }],
                ..Registry::default()
            },
        );
        cfg.registries.insert("docker.io".into(), Registry::default());
        let r = render(&cfg, &Layout::default());
        assert_eq!(r[0].path, "etc/containerd/certs.d/docker.io/hosts.toml");
        assert!(
            r[0].text.contains("server = \"https://registry-1.docker.io\"\n"),
            "{}",
            r[0].text
        );
        assert!(r[0].text.contains("\n[host]\n"), "{}", r[0].text);
        let t = &r[1].text;
        let parsed: Table = t.parse().unwrap();
        assert_eq!(parsed["server"].as_str(), Some("https://registry.example.com:5000"));
        assert_eq!(
            parsed["ca"].as_str(),
            Some("/var/lib/kiln/node/etc/containerd/certs.d/registry.example.com:5000/ca.crt")
        );
        assert_eq!(
            parsed["header"]["Authorization"].as_str(),
            Some("Basic @kiln:registry-auth/registry.example.com:5000@")
        );
        let m = &parsed["host"]["https://mirror.example.com"];
        assert_eq!(m["capabilities"].as_array().unwrap().len(), 1);
        assert_eq!(m["skip_verify"].as_bool(), Some(true));
        let cas = ca_files(&cfg);
        assert_eq!(cas.len(), 1);
        assert_eq!(cas[0].path, "etc/containerd/certs.d/registry.example.com:5000/ca.crt");
        assert!(kiln_bundle::layout::files::rendered_on_node(&cas[0].path));
    }
}
