//! `kiln migrate`: from dockershim-era kubelet settings to a kiln manifest's `config:` section.
//!
//! Input is any of: a YAML map of flag names to values (optionally nested one level under a key,
//! as configuration-management variables are), a kubelet command line, or a kubelet systemd unit.
//! Each flag is classified for the target Kubernetes version as kept, moved into
//! KubeletConfiguration, removed, replaced, or node-specific. Pure functions; the command prints.

use std::fmt;

use serde_json::{json, Map, Value};

use crate::render::flags::{moved, removed};
use crate::render::minor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Kept,
    Moved,
    Removed,
    Replaced,
    NodeSpecific,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Kept => "kept",
            Outcome::Moved => "moved",
            Outcome::Removed => "removed",
            Outcome::Replaced => "replaced",
            Outcome::NodeSpecific => "node-specific",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    pub flag: String,
    pub value: String,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    /// The `config:` section for the manifest.
    pub config: Value,
    pub rows: Vec<Row>,
}

/// What was read: flags in order, and systemd dependencies on Docker.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OldSettings {
    pub flags: Vec<(String, String)>,
    pub docker_deps: Vec<String>,
}

/// Read old settings in whichever of the three forms `text` is.
pub fn parse(text: &str, origin: &str) -> Result<OldSettings, String> {
    if text
        .lines()
        .any(|l| l.trim_start().starts_with("ExecStart=") || l.trim() == "[Service]")
    {
        return Ok(parse_unit(text));
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with("--")
        || trimmed
            .split_whitespace()
            .next()
            .is_some_and(|w| w.ends_with("kubelet"))
    {
        return Ok(OldSettings {
            flags: parse_command_line(text)?,
            docker_deps: vec![],
        });
    }
    parse_yaml_map(text, origin)
}

fn parse_yaml_map(text: &str, origin: &str) -> Result<OldSettings, String> {
    let v: Value = kiln_bundle::yaml::from_str(text, origin)
        .map_err(|e| format!("not a kubelet command line, unit or YAML map: {e:#}"))?;
    let map = v
        .as_object()
        .ok_or_else(|| format!("{origin}: expected a YAML map of kubelet flags"))?;
    // `k8s_worker_kubelet_settings: {flag: value, ...}`: one key holding the map.
    let map = match (map.len(), map.values().next()) {
        (1, Some(Value::Object(inner))) => inner,
        _ => map,
    };
    let mut flags = Vec::new();
    for (k, v) in map {
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Null => String::new(),
            other => return Err(format!("{origin}: `{k}`: expected a scalar value, got {other}")),
        };
        flags.push((k.trim_start_matches('-').to_string(), value));
    }
    Ok(OldSettings {
        flags,
        docker_deps: vec![],
    })
}

/// Split a command line the way a POSIX shell would for plain words and quotes, joining
/// backslash-newline continuations. No expansion is done.
fn words(text: &str) -> Result<Vec<String>, String> {
    let text = text.replace("\\\n", " ");
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.push(chars.next().ok_or("unterminated double quote")?),
                        Some(x) => cur.push(x),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(x) = chars.next() {
                    cur.push(x);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `kubelet --a=b --c d --bool` into `(name, value)` pairs.
pub fn parse_command_line(text: &str) -> Result<Vec<(String, String)>, String> {
    let w = words(text)?;
    let mut it = w.into_iter().peekable();
    if it.peek().is_some_and(|first| !first.starts_with('-')) {
        it.next(); // the kubelet binary
    }
    let mut flags = Vec::new();
    while let Some(word) = it.next() {
        let Some(name) = word.strip_prefix("--").or_else(|| word.strip_prefix('-')) else {
            return Err(format!("`{word}` is not a flag"));
        };
        match name.split_once('=') {
            Some((k, v)) => flags.push((k.to_string(), v.to_string())),
            None => {
                let value = match it.peek() {
                    Some(next) if !next.starts_with('-') => it.next().unwrap_or_default(),
                    _ => "true".to_string(),
                };
                flags.push((name.to_string(), value));
            }
        }
    }
    Ok(flags)
}

fn parse_unit(text: &str) -> OldSettings {
    let joined = text.replace("\\\n", " ");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut exec = Vec::new();
    let mut docker_deps = Vec::new();
    for line in joined.lines().map(str::trim) {
        if let Some((key, value)) = line.split_once('=') {
            match key.trim() {
                "ExecStart" => exec.push(value.trim().trim_start_matches(['-', '@', '+', '!']).to_string()),
                "Environment" => {
                    for w in words(value).unwrap_or_default() {
                        if let Some((k, v)) = w.split_once('=') {
                            env.push((k.to_string(), v.to_string()));
                        }
                    }
                }
                "After" | "Requires" | "Wants" | "BindsTo" | "Requisite" | "PartOf"
                    if value
                        .split_whitespace()
                        .any(|u| u == "docker.service" || u == "docker.socket") =>
                {
                    docker_deps.push(format!("{}={}", key.trim(), value.trim()));
                }
                _ => {}
            }
        }
    }
    let mut flags = Vec::new();
    for cmd in exec.iter().filter(|c| !c.is_empty()) {
        // Expand $VAR and ${VAR} from the unit's own Environment= lines.
        let mut expanded = cmd.clone();
        for (k, v) in &env {
            expanded = expanded.replace(&format!("${{{k}}}"), v).replace(&format!("${k}"), v);
        }
        if let Ok(f) = parse_command_line(&expanded) {
            flags.extend(f);
        }
    }
    OldSettings { flags, docker_deps }
}

const KILN_KUBECONFIG: &str = "/var/lib/kubelet/kubeconfig";

/// Classify every setting for Kubernetes `target` and build the `config:` section.
pub fn migrate(old: &OldSettings, target: &str) -> Result<Migration, String> {
    let t = minor(target).ok_or_else(|| format!("`{target}` is not a Kubernetes version such as 1.36.4"))?;
    let mut settings = Map::new();
    let mut flags = Map::new();
    let mut rows = Vec::new();
    let endpoint = "unix:///run/containerd/containerd.sock";
    for (flag, value) in &old.flags {
        let (outcome, detail) = match flag.as_str() {
            "node-ip" | "hostname-override" | "node-labels" | "register-with-taints" => {
                (Outcome::NodeSpecific, "filled at first boot from the node's configuration".to_string())
            }
            "config" => (
                Outcome::Replaced,
                "kiln renders the KubeletConfiguration into the bundle; move the file's settings to spec.config.kubelet.settings".into(),
            ),
            "kubeconfig" if value == KILN_KUBECONFIG => (Outcome::Kept, "kiln uses the same path".into()),
            "kubeconfig" | "bootstrap-kubeconfig" => {
                (Outcome::Replaced, format!("kiln sets it ({KILN_KUBECONFIG} after TLS bootstrap)"))
            }
            "container-runtime" if value == "docker" || t >= (1, 27) => {
                let what = if t >= (1, 27) { "removed in 1.27" } else { "docker (dockershim) removed in 1.24" };
                let detail = if t >= (1, 27) {
                    format!("{what}; kiln sets containerRuntimeEndpoint: {endpoint}")
                } else {
                    format!("{what}; --container-runtime=remote --container-runtime-endpoint={endpoint}")
                };
                (Outcome::Replaced, detail)
            }
            "container-runtime-endpoint" | "image-service-endpoint" => {
                (Outcome::Replaced, format!("kiln points the kubelet at containerd ({endpoint})"))
            }
            f => match (removed(f), moved(f, t)) {
                (Some(r), _) if t >= r.version => (
                    Outcome::Removed,
                    format!("removed in {}.{} ({}); {}", r.version.0, r.version.1, r.why, r.replacement),
                ),
                (_, Some(field)) => {
                    insert_path(&mut settings, field, convert(field, value));
                    (Outcome::Moved, format!("KubeletConfiguration {field}"))
                }
                _ => {
                    flags.insert(f.to_string(), Value::String(value.clone()));
                    (Outcome::Kept, String::new())
                }
            },
        };
        rows.push(Row {
            flag: flag.clone(),
            value: value.clone(),
            outcome,
            detail,
        });
    }
    for dep in &old.docker_deps {
        rows.push(Row {
            flag: "unit".into(),
            value: dep.clone(),
            outcome: Outcome::Replaced,
            detail: "kiln's kubelet.service has After= and Requires=containerd.service, no Docker dependency".into(),
        });
    }
    let mut kubelet = Map::new();
    if !settings.is_empty() {
        kubelet.insert("settings".into(), Value::Object(settings));
    }
    if !flags.is_empty() {
        kubelet.insert("flags".into(), Value::Object(flags));
    }
    Ok(Migration {
        config: json!({"config": {"kubelet": kubelet}}),
        rows,
    })
}

/// Set `a.b.c` in a nested map.
fn insert_path(map: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            map.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = map.entry(head.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            insert_path(entry.as_object_mut().expect("object"), rest, value);
        }
    }
}

/// A flag's string value in the type its KubeletConfiguration field has.
fn convert(field: &str, value: &str) -> Value {
    let list = |v: &str| {
        Value::Array(
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.trim().into()))
                .collect(),
        )
    };
    let map = |v: &str, sep: char, typed: bool| {
        let mut m = Map::new();
        for pair in v.split(',').filter(|s| !s.is_empty()) {
            if let Some((k, val)) = pair.split_once(sep) {
                m.insert(
                    k.trim().into(),
                    if typed {
                        scalar(val.trim())
                    } else {
                        Value::String(val.trim().into())
                    },
                );
            }
        }
        Value::Object(m)
    };
    match field {
        "clusterDNS" | "tlsCipherSuites" | "enforceNodeAllocatable" | "allowedUnsafeSysctls" => list(value),
        "kubeReserved" | "systemReserved" | "qosReserved" => map(value, '=', false),
        "featureGates" => map(value, '=', true),
        "evictionHard" | "evictionSoft" => map(value, '<', false),
        "evictionSoftGracePeriod" | "evictionMinimumReclaim" => map(value, '=', false),
        _ => scalar(value),
    }
}

fn scalar(v: &str) -> Value {
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => v
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(v.into())),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_yaml_map_is_read_with_kilns_limits() {
        let e = parse_yaml_map("network-plugin: cni\nnetwork-plugin: kubenet\n", "flags.yaml").unwrap_err();
        assert!(
            e.contains("flags.yaml") && e.to_lowercase().contains("duplicate"),
            "{e}"
        );
        let huge = format!("a: \"{}\"\n", "x".repeat(kiln_bundle::yaml::MAX_YAML_BYTES));
        let e = parse_yaml_map(&huge, "flags.yaml").unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }

    use super::*;

    #[test]
    fn command_lines_and_units_parse() {
        let f = parse_command_line("/usr/bin/kubelet --a=b --c d --e --f='x y' --g \"1 2\"").unwrap();
        assert_eq!(
            f,
            [("a", "b"), ("c", "d"), ("e", "true"), ("f", "x y"), ("g", "1 2")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let unit = "[Unit]\nAfter=docker.service\nRequires=docker.service\n[Service]\nEnvironment=\"KUBELET_EXTRA=--max-pods=50\"\nExecStart=/usr/bin/kubelet \\\n  --network-plugin=cni $KUBELET_EXTRA\n";
        let old = parse(unit, "u").unwrap();
        assert_eq!(
            old.flags,
            [
                ("network-plugin".to_string(), "cni".to_string()),
                ("max-pods".to_string(), "50".to_string())
            ]
        );
        assert_eq!(old.docker_deps, ["After=docker.service", "Requires=docker.service"]);
    }

    #[test]
    fn values_convert_to_field_types() {
        assert_eq!(
            convert("clusterDNS", "10.96.0.10,10.96.0.11"),
            json!(["10.96.0.10", "10.96.0.11"])
        );
        assert_eq!(
            convert("evictionHard", "memory.available<100Mi,nodefs.available<10%"),
            json!({"memory.available": "100Mi", "nodefs.available": "10%"})
        );
        assert_eq!(
            convert("featureGates", "A=true,B=false"),
            json!({"A": true, "B": false})
        );
        assert_eq!(convert("maxPods", "110"), json!(110));
        let mut m = Map::new();
        insert_path(&mut m, "authentication.webhook.enabled", json!(true));
        assert_eq!(
            Value::Object(m),
            json!({"authentication": {"webhook": {"enabled": true}}})
        );
    }

    #[test]
    fn before_1_27_the_runtime_flag_is_remote() {
        let old = OldSettings {
            flags: vec![("container-runtime".into(), "docker".into())],
            docker_deps: vec![],
        };
        let m = migrate(&old, "1.26.3").unwrap();
        assert_eq!(m.rows[0].outcome, Outcome::Replaced);
        assert!(m.rows[0].detail.contains("--container-runtime=remote"));
        let old = OldSettings {
            flags: vec![("network-plugin".into(), "cni".into())],
            docker_deps: vec![],
        };
        assert_eq!(migrate(&old, "1.23.0").unwrap().rows[0].outcome, Outcome::Kept);
    }
}
