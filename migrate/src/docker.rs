//! Docker daemon settings that change how a node behaves, from `daemon.json` or dockerd's command
//! line, mapped to what replaces them under containerd. Every setting gets a result; the ones with
//! no equivalent are dropped with the reason.

use serde_json::{json, Map, Value};

use super::{Outcome, Row, Setting};
use crate::error::Error;

/// dockerd's command-line names that differ from their `daemon.json` keys.
fn json_key(flag: &str) -> &str {
    match flag {
        "registry-mirror" => "registry-mirrors",
        "insecure-registry" => "insecure-registries",
        "log-opt" => "log-opts",
        "exec-opt" => "exec-opts",
        "H" | "host" => "hosts",
        "g" | "graph" => "data-root",
        "s" => "storage-driver",
        "l" => "log-level",
        "b" => "bridge",
        "D" => "debug",
        "dns-opt" => "dns-opts",
        "dns-search" => "dns-search",
        "default-ulimit" => "default-ulimits",
        "label" => "labels",
        "add-runtime" => "runtimes",
        other => other,
    }
}

/// `daemon.json` into settings, one per scalar (lists and maps become one setting per element).
pub fn from_daemon_json(v: &Value, origin: &str) -> Result<Vec<Setting>, Error> {
    let map = v.as_object().ok_or_else(|| Error::Shape {
        origin: origin.to_string(),
        expected: "a JSON object (daemon.json)".into(),
    })?;
    let mut out = Vec::new();
    for (k, v) in map {
        let push = |out: &mut Vec<Setting>, value: String| {
            out.push(Setting {
                name: k.clone(),
                value,
                source: origin.to_string(),
            })
        };
        match v {
            Value::Array(items) => {
                for i in items {
                    push(&mut out, scalar_text(i));
                }
                if items.is_empty() {
                    push(&mut out, String::new());
                }
            }
            Value::Object(m) => {
                for (mk, mv) in m {
                    push(&mut out, format!("{mk}={}", scalar_text(mv)));
                }
            }
            other => push(&mut out, scalar_text(other)),
        }
    }
    Ok(out)
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// dockerd's flags (`--mtu=1472`, `--log-opt max-size=10m`) as daemon.json-named settings.
pub fn from_flags(flags: Vec<(String, String)>, source: &str) -> Vec<Setting> {
    flags
        .into_iter()
        .map(|(k, v)| Setting {
            name: json_key(&k).to_string(),
            value: v,
            source: source.to_string(),
        })
        .collect()
}

/// What the Docker settings become: rows for the report, and additions to the `config:` section.
pub struct Mapped {
    pub rows: Vec<Row>,
    pub containerd: Map<String, Value>,
    pub cni: Map<String, Value>,
    pub kubelet_settings: Map<String, Value>,
}

pub fn map(settings: &[Setting]) -> Result<Mapped, Error> {
    let mut m = Mapped {
        rows: Vec::new(),
        containerd: Map::new(),
        cni: Map::new(),
        kubelet_settings: Map::new(),
    };
    let mut registries: Map<String, Value> = Map::new();
    for s in settings {
        let (outcome, detail) = map_one(s, &mut m, &mut registries)?;
        m.rows.push(Row {
            flag: format!("dockerd {}", s.name),
            value: s.value.clone(),
            outcome,
            source: s.source.clone(),
            detail,
        });
    }
    if !registries.is_empty() {
        m.containerd.insert("registries".into(), Value::Object(registries));
    }
    Ok(m)
}

const NETWORK: &str = "Docker's own bridge networking; pods are networked by CNI (spec.config.cni)";

fn map_one(s: &Setting, m: &mut Mapped, registries: &mut Map<String, Value>) -> Result<(Outcome, String), Error> {
    let v = s.value.as_str();
    let bad = |expected: &'static str| Error::DockerValue {
        from: s.source.clone(),
        name: s.name.clone(),
        value: v.to_string(),
        expected,
    };
    Ok(match s.name.as_str() {
        "mtu" => {
            let mtu: u32 = v.parse().map_err(|_| bad("an MTU"))?;
            m.cni.insert("mtu".into(), json!(mtu));
            (Outcome::Moved, "spec.config.cni.mtu (the CNI bridge's mtu)".into())
        }
        "registry-mirrors" => {
            let mirror = v.trim_end_matches('/');
            let entry = registry(registries, "docker.io");
            let mirrors = entry
                .entry("mirrors")
                .or_insert_with(|| Value::Array(vec![]))
                .as_array_mut()
                .expect("mirrors is a list");
            mirrors.push(json!({"host": mirror, "capabilities": ["pull", "resolve"]}));
            (
                Outcome::Moved,
                "spec.config.containerd.registries[docker.io].mirrors (containerd's certs.d/docker.io/hosts.toml)".into(),
            )
        }
        "insecure-registries" => {
            let host = v.trim_start_matches("http://").trim_start_matches("https://");
            if host.contains('/') {
                // Docker also takes CIDRs here; containerd configures registries by host name.
                return Ok((
                    Outcome::Dropped,
                    "a network range: containerd configures registries by host; add each host to spec.config.containerd.registries with skipVerify".into(),
                ));
            }
            registry(registries, host).insert("skipVerify".into(), json!(true));
            (
                Outcome::Moved,
                format!("spec.config.containerd.registries[{host}].skipVerify (if it speaks plain HTTP, set its server to http://{host})"),
            )
        }
        "log-opts" => match v.split_once('=') {
            Some(("max-size", size)) => {
                m.kubelet_settings
                    .insert("containerLogMaxSize".into(), json!(kubelet_quantity(size).ok_or_else(|| bad("a size such as 10m"))?));
                (Outcome::Moved, "KubeletConfiguration containerLogMaxSize (the kubelet rotates CRI logs)".into())
            }
            Some(("max-file", n)) => {
                let n: u32 = n.trim_matches('"').parse().map_err(|_| bad("a file count"))?;
                m.kubelet_settings.insert("containerLogMaxFiles".into(), json!(n));
                (Outcome::Moved, "KubeletConfiguration containerLogMaxFiles".into())
            }
            _ => (
                Outcome::Dropped,
                "a Docker log driver option; under CRI the kubelet writes container logs to files".into(),
            ),
        },
        "log-driver" => (
            Outcome::Dropped,
            "under CRI the kubelet writes container logs to /var/log/pods; ship them with a node agent".into(),
        ),
        "exec-opts" => match v.split_once('=') {
            Some(("native.cgroupdriver", driver)) => {
                let systemd = match driver {
                    "systemd" => true,
                    "cgroupfs" => false,
                    _ => return Err(bad("a cgroup driver (systemd or cgroupfs)")),
                };
                m.containerd.insert("systemdCgroup".into(), json!(systemd));
                (
                    Outcome::Moved,
                    "spec.config.containerd.systemdCgroup (kiln sets the kubelet's cgroupDriver to match)".into(),
                )
            }
            _ => (Outcome::Dropped, "no containerd equivalent kiln maps".into()),
        },
        "storage-driver" => {
            let snapshotter = match v {
                "overlay2" | "overlay" => "overlayfs",
                "btrfs" => "btrfs",
                "zfs" => "zfs",
                "devicemapper" => "devmapper",
                "vfs" => "native",
                _ => return Ok((Outcome::Dropped, format!("no containerd snapshotter corresponds to `{v}`"))),
            };
            if snapshotter == "overlayfs" {
                (Outcome::Kept, "containerd's overlayfs snapshotter, kiln's default".into())
            } else {
                m.containerd.insert("snapshotter".into(), json!(snapshotter));
                (
                    Outcome::Moved,
                    format!("spec.config.containerd.snapshotter: {snapshotter} (the node needs that filesystem)"),
                )
            }
        }
        "data-root" => (
            Outcome::Dropped,
            "note: containerd keeps images under /var/lib/containerd; a replaced node pulls its images again, nothing is carried over".into(),
        ),
        "bip" | "bridge" | "fixed-cidr" | "fixed-cidr-v6" | "ip-masq" | "iptables" | "ip6tables" | "ip-forward" | "ip"
        | "default-gateway" | "userland-proxy" | "icc" | "ipv6" | "default-address-pools" => {
            (Outcome::Dropped, NETWORK.into())
        }
        "log-level" | "debug" => (
            Outcome::Dropped,
            "dockerd's own log level; containerd logs at info (set it with spec.config.containerd.overrides if needed)".into(),
        ),
        "hosts" | "containerd" | "pidfile" | "exec-root" | "group" | "tls" | "tlsverify" | "tlscacert" | "tlscert"
        | "tlskey" => (Outcome::Dropped, "the Docker API socket; nothing on a kiln node talks to dockerd".into()),
        "live-restore" => (
            Outcome::Dropped,
            "containerd's shims keep containers running across containerd restarts by design".into(),
        ),
        "max-concurrent-downloads" | "max-concurrent-uploads" | "max-download-attempts" => (
            Outcome::Dropped,
            "containerd's CRI pulls layers concurrently by itself (spec.config.containerd.overrides to tune)".into(),
        ),
        "dns" | "dns-opts" | "dns-search" => (
            Outcome::Dropped,
            "pod DNS comes from the kubelet (clusterDNS, resolvConf), not from the runtime".into(),
        ),
        "default-ulimits" => (
            Outcome::Dropped,
            "containers get containerd's defaults (LimitNOFILE of its unit); set limits in the pod spec or image".into(),
        ),
        "selinux-enabled" | "userns-remap" | "seccomp-profile" | "no-new-privileges" => (
            Outcome::Dropped,
            "set per pod through securityContext under Kubernetes".into(),
        ),
        "runtimes" | "default-runtime" => (
            Outcome::Dropped,
            "extra OCI runtimes go to spec.components.runtimes and are offered as RuntimeClasses".into(),
        ),
        _ => (Outcome::Dropped, "no containerd equivalent kiln maps".into()),
    })
}

fn registry<'a>(registries: &'a mut Map<String, Value>, host: &str) -> &'a mut Map<String, Value> {
    registries
        .entry(host.to_string())
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("a registry is a map")
}

/// Docker's `10m` (binary units, as its json-file driver reads them) as a kubelet quantity `10Mi`.
fn kubelet_quantity(size: &str) -> Option<String> {
    let size = size.trim_matches('"').trim();
    let split = size.find(|c: char| !c.is_ascii_digit()).unwrap_or(size.len());
    let (n, unit) = size.split_at(split);
    let n: u64 = n.parse().ok()?;
    let unit = match unit.to_ascii_lowercase().trim_end_matches('b') {
        "" => "",
        "k" => "Ki",
        "m" => "Mi",
        "g" => "Gi",
        _ => return None,
    };
    Some(format!("{n}{unit}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(name: &str, value: &str) -> Setting {
        Setting {
            name: name.into(),
            value: value.into(),
            source: "daemon.json".into(),
        }
    }

    #[test]
    fn every_setting_gets_a_result_and_the_mapped_ones_land_in_the_config() {
        let s: Vec<Setting> = [
            ("mtu", "1472"),
            ("registry-mirrors", "https://mirror.example.com/"),
            ("insecure-registries", "registry.lan:5000"),
            ("insecure-registries", "10.0.0.0/8"),
            ("log-opts", "max-size=10m"),
            ("log-opts", "max-file=3"),
            ("exec-opts", "native.cgroupdriver=cgroupfs"),
            ("storage-driver", "overlay2"),
            ("data-root", "/srv/docker"),
            ("bip", ""),
            ("something-new", "x"),
        ]
        .iter()
        .map(|(k, v)| setting(k, v))
        .collect();
        let m = map(&s).unwrap();
        assert_eq!(m.rows.len(), s.len());
        assert_eq!(Value::Object(m.cni), json!({"mtu": 1472}));
        assert_eq!(
            Value::Object(m.containerd),
            json!({"systemdCgroup": false, "registries": {
                "docker.io": {"mirrors": [{"host": "https://mirror.example.com", "capabilities": ["pull", "resolve"]}]},
                "registry.lan:5000": {"skipVerify": true}}})
        );
        assert_eq!(
            Value::Object(m.kubelet_settings),
            json!({"containerLogMaxSize": "10Mi", "containerLogMaxFiles": 3})
        );
        let outcome = |name: &str| {
            m.rows
                .iter()
                .find(|r| r.flag == format!("dockerd {name}"))
                .unwrap()
                .outcome
        };
        assert_eq!(outcome("storage-driver"), Outcome::Kept);
        assert_eq!(outcome("data-root"), Outcome::Dropped);
        assert_eq!(outcome("something-new"), Outcome::Dropped);
        let e = map(&[setting("mtu", "big")]).err().unwrap().to_string();
        assert_eq!(e, "daemon.json: dockerd mtu: `big` is not an MTU");
    }

    #[test]
    fn command_line_names_become_daemon_json_keys() {
        let s = from_flags(
            vec![
                ("registry-mirror".into(), "https://m".into()),
                ("s".into(), "overlay2".into()),
            ],
            "docker.service",
        );
        assert_eq!(s[0].name, "registry-mirrors");
        assert_eq!(s[1].name, "storage-driver");
        assert_eq!(kubelet_quantity("100k").as_deref(), Some("100Ki"));
        assert_eq!(kubelet_quantity("1g").as_deref(), Some("1Gi"));
        assert_eq!(kubelet_quantity("ten"), None);
    }
}
