//! `kiln migrate`: from dockershim-era node settings to a kiln manifest's `config:` section.
//!
//! Inputs come in the shapes real nodes have them, several at once: a YAML map of kubelet flags
//! (optionally nested one level under a key, as configuration-management variables are), a kubelet
//! or dockerd command line, systemd units with their drop-ins (`Environment=` and
//! `EnvironmentFile=` expanded as systemd does), environment files (`/etc/default/kubelet`,
//! kubeadm's `kubeadm-flags.env`), Docker's `daemon.json`, and the old KubeletConfiguration file.
//! Every flag, variable and setting read gets a row in the report with its result: kept, moved,
//! removed, replaced, node-specific, dropped (with the reason), overridden (a later value wins, as
//! in kubelet) or not-read (an environment file the unit names but kiln was not given). Pure
//! functions; the command prints.

mod docker;
mod error;
pub mod fields;
pub mod flags;
pub mod systemd;

/// `(major, minor)` of a version string.
pub fn minor(version: &str) -> Option<(u32, u32)> {
    kiln_bundle::manifest::parse_minor(version)
}

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{json, Map, Value};

pub use crate::error::{Error, Words};
use crate::fields::has_field;
use crate::flags::{moved, removed};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Kept,
    Moved,
    Removed,
    Replaced,
    NodeSpecific,
    Dropped,
    Overridden,
    NotRead,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Kept => "kept",
            Outcome::Moved => "moved",
            Outcome::Removed => "removed",
            Outcome::Replaced => "replaced",
            Outcome::NodeSpecific => "node-specific",
            Outcome::Dropped => "dropped",
            Outcome::Overridden => "overridden",
            Outcome::NotRead => "not-read",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    /// The kubelet flag, `dockerd NAME`, `$VARIABLE`, a KubeletConfiguration field or a unit line.
    pub flag: String,
    pub value: String,
    pub outcome: Outcome,
    /// Where it was read: the input, and the variable it came through.
    pub source: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    /// The `config:` section for the manifest.
    pub config: Value,
    pub rows: Vec<Row>,
}

/// One setting as read: a flag or daemon setting, its value, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub value: String,
    pub source: String,
}

/// One input: its text and a name for it (usually the path).
#[derive(Debug, Clone)]
pub struct Input {
    pub origin: String,
    pub text: String,
}

/// Everything read from the inputs, in the order the kubelet (or dockerd) would see it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OldSettings {
    pub kubelet: Vec<Setting>,
    pub docker: Vec<Setting>,
    /// Rows about the inputs themselves: Docker dependencies, unused variables, unread files.
    pub notes: Vec<Row>,
}

enum Shape {
    DaemonJson(Value),
    Unit(systemd::UnitFile),
    EnvFile(Vec<(String, String)>),
    CommandLine(Vec<(String, String)>, bool),
    YamlMap(Vec<(String, String)>),
}

fn shape(input: &Input) -> Result<Shape, Error> {
    let text = input.text.as_str();
    let origin = input.origin.as_str();
    if text.trim().is_empty() {
        return Err(nothing(origin, "empty; expected kubelet or Docker settings"));
    }
    if text.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#')) {
        return Err(nothing(origin, "only comments; expected kubelet or Docker settings"));
    }
    if text.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Syntax {
            origin: origin.to_string(),
            message: format!("not valid JSON (daemon.json): {e}"),
        })?;
        return Ok(Shape::DaemonJson(v));
    }
    if systemd::looks_like_unit(text) {
        return Ok(Shape::Unit(systemd::parse_unit(text, origin)));
    }
    if systemd::looks_like_env_file(text) {
        return Ok(Shape::EnvFile(systemd::parse_env_file(text, origin)?));
    }
    let first = text.split_whitespace().next().unwrap_or_default();
    if first.starts_with('-') || first.ends_with("kubelet") || first.ends_with("dockerd") {
        let flags = parse_command_line(text).map_err(|problem| Error::Words {
            origin: origin.to_string(),
            problem,
        })?;
        return Ok(Shape::CommandLine(flags, first.ends_with("dockerd")));
    }
    parse_yaml_map(text, origin).map(Shape::YamlMap)
}

fn nothing(origin: &str, what: &'static str) -> Error {
    Error::Nothing {
        origin: origin.to_string(),
        what,
    }
}

fn shape_error(origin: &str, expected: &str) -> Error {
    Error::Shape {
        origin: origin.to_string(),
        expected: expected.to_string(),
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn is_dockerd(exec: &str) -> bool {
    exec.split_whitespace().next().is_some_and(|b| basename(b) == "dockerd")
}

/// Read every input, in order. Later inputs win where kubelet would let them.
pub fn read(inputs: &[Input]) -> Result<OldSettings, Error> {
    let mut old = OldSettings::default();
    let mut units: Vec<systemd::UnitFile> = Vec::new();
    let mut docker_units: Vec<systemd::UnitFile> = Vec::new();
    let mut env_files: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for input in inputs {
        let origin = input.origin.clone();
        match shape(input)? {
            Shape::DaemonJson(v) => old.docker.extend(docker::from_daemon_json(&v, &origin)?),
            Shape::Unit(u) => {
                let runs_dockerd = u
                    .entries
                    .iter()
                    .any(|(s, k, v)| s == "Service" && k == "ExecStart" && is_dockerd(v));
                if runs_dockerd {
                    docker_units.push(u);
                } else {
                    units.push(u);
                }
            }
            Shape::EnvFile(vars) if vars.is_empty() => return Err(nothing(&origin, "no variables")),
            Shape::EnvFile(vars) => env_files.push((origin, vars)),
            Shape::CommandLine(flags, dockerd) if dockerd => old.docker.extend(docker::from_flags(flags, &origin)),
            Shape::CommandLine(flags, _) => old.kubelet.extend(settings(flags, &origin)),
            Shape::YamlMap(flags) => old.kubelet.extend(settings(flags, &origin)),
        }
    }
    let mut consumed = vec![false; env_files.len()];
    for (group, dockerd) in [(units, false), (docker_units, true)] {
        if !group.is_empty() {
            read_service(&group, dockerd, &env_files, &mut consumed, &mut old)?;
        }
    }
    let has_unit = inputs.iter().any(|i| systemd::looks_like_unit(&i.text));
    read_loose_env_files(&env_files, &consumed, has_unit, &mut old);
    if old.kubelet.is_empty() && old.docker.is_empty() {
        let names: Vec<&str> = inputs.iter().map(|i| i.origin.as_str()).collect();
        return Err(Error::NoSettings {
            origins: names.join(", "),
            dropped: old
                .notes
                .iter()
                .map(|r| format!("{} {}: {}", r.flag, r.value, r.detail))
                .collect(),
        });
    }
    Ok(old)
}

/// The environment files given, each with its variables.
type EnvFiles = [(String, Vec<(String, String)>)];

/// One service (a unit and its drop-ins; kubelet's or dockerd's): its ExecStart expanded with
/// its environment, into settings. `consumed` marks the environment files it reads.
fn read_service(
    group: &[systemd::UnitFile],
    dockerd: bool,
    env_files: &EnvFiles,
    consumed: &mut [bool],
    old: &mut OldSettings,
) -> Result<(), Error> {
    let names: Vec<&str> = group.iter().map(|u| u.origin.as_str()).collect();
    let names = names.join(", ");
    let service = systemd::merge(group).map_err(|e| Error::Service {
        units: names.clone(),
        problem: Box::new(e),
    })?;
    let Some((exec, exec_origin)) = service.exec.clone() else {
        return Err(Error::NoExecStart { units: names });
    };
    for (dep, origin) in &service.docker_deps {
        old.notes.push(Row {
            flag: "unit".into(),
            value: dep.clone(),
            outcome: Outcome::Replaced,
            source: origin.clone(),
            detail: "kiln's kubelet.service has After= and Requires=containerd.service, no Docker dependency".into(),
        });
    }
    let env = service_env(&service, env_files, consumed, old);
    let (words, used) = systemd::expand(&exec, &env).map_err(|problem| Error::Words {
        origin: format!("{exec_origin}: ExecStart"),
        problem,
    })?;
    for (name, var) in &env {
        if !used.contains(name) {
            old.notes.push(Row {
                flag: format!("${name}"),
                value: var.value.clone(),
                outcome: Outcome::Dropped,
                source: var.source.clone(),
                detail: "not used by ExecStart, so the service never sees it".into(),
            });
        } else if var.value.trim().is_empty() {
            old.notes.push(Row {
                flag: format!("${name}"),
                value: String::new(),
                outcome: Outcome::Dropped,
                source: var.source.clone(),
                detail: "empty: no flags to carry over".into(),
            });
        }
    }
    let flags = flags_of_words(&words, &exec_origin)?;
    if dockerd {
        for (name, value, source) in flags {
            old.docker.extend(docker::from_flags(vec![(name, value)], &source));
        }
    } else {
        old.kubelet.extend(
            flags
                .into_iter()
                .map(|(name, value, source)| Setting { name, value, source }),
        );
    }
    Ok(())
}

/// The service's environment as systemd gives it: Environment=, then each EnvironmentFile= found
/// among `env_files`, later assignments winning (each override noted).
fn service_env(
    service: &systemd::Service,
    env_files: &EnvFiles,
    consumed: &mut [bool],
    old: &mut OldSettings,
) -> BTreeMap<String, systemd::Var> {
    // Environment= first; EnvironmentFile= overrides it (systemd.exec(5)), files in order.
    let mut assignments: Vec<(String, systemd::Var)> = service.environment.clone();
    for (path, optional, unit) in &service.environment_files {
        let found = env_files
            .iter()
            .position(|(o, _)| o == path)
            .or_else(|| env_files.iter().position(|(o, _)| basename(o) == basename(path)));
        match found {
            Some(i) => {
                consumed[i] = true;
                let (origin, vars) = &env_files[i];
                for (k, v) in vars {
                    assignments.push((
                        k.clone(),
                        systemd::Var {
                            value: v.clone(),
                            source: origin.clone(),
                        },
                    ));
                }
            }
            None => old.notes.push(Row {
                flag: "EnvironmentFile".into(),
                value: path.clone(),
                outcome: Outcome::NotRead,
                source: unit.clone(),
                detail: format!(
                    "not given to kiln migrate, so its variables count as unset here; pass a copy of it ({}){}",
                    basename(path),
                    if *optional {
                        "; the unit allows it to be missing (-)"
                    } else {
                        ""
                    }
                ),
            }),
        }
    }
    let mut env: BTreeMap<String, systemd::Var> = BTreeMap::new();
    for (k, v) in assignments {
        if let Some(earlier) = env.insert(k.clone(), v.clone()) {
            old.notes.push(Row {
                flag: format!("${k}"),
                value: earlier.value,
                outcome: Outcome::Overridden,
                source: earlier.source,
                detail: format!("set again in {}, which wins", v.source),
            });
        }
    }
    env
}

/// Environment files no unit read: with a unit given, their variables never reach the service;
/// with none, each variable holds flags (the file the service sources).
fn read_loose_env_files(env_files: &EnvFiles, consumed: &[bool], has_unit: bool, old: &mut OldSettings) {
    for (i, (origin, vars)) in env_files.iter().enumerate() {
        if consumed[i] {
            continue;
        }
        for (k, v) in vars {
            let source = format!("{origin} (${k})");
            if has_unit {
                old.notes.push(Row {
                    flag: format!("${k}"),
                    value: v.clone(),
                    outcome: Outcome::Dropped,
                    source: origin.clone(),
                    detail: "the file is not an EnvironmentFile= of the unit given, so the service never sees it"
                        .into(),
                });
                continue;
            }
            // No unit: the file is read as the one the service sources; each variable holds flags.
            match parse_command_line(&format!("kubelet {v}")) {
                Ok(f) if f.is_empty() => old.notes.push(Row {
                    flag: format!("${k}"),
                    value: String::new(),
                    outcome: Outcome::Dropped,
                    source: origin.clone(),
                    detail: "empty: no flags to carry over".into(),
                }),
                Ok(f) if k.starts_with("DOCKER") => {
                    old.docker.extend(docker::from_flags(f, &source));
                }
                Ok(f) => old.kubelet.extend(settings(f, &source)),
                Err(e) => old.notes.push(Row {
                    flag: format!("${k}"),
                    value: v.clone(),
                    outcome: Outcome::Dropped,
                    source: origin.clone(),
                    detail: format!("not a list of flags ({e})"),
                }),
            }
        }
    }
}

fn settings(flags: Vec<(String, String)>, source: &str) -> Vec<Setting> {
    flags
        .into_iter()
        .map(|(name, value)| Setting {
            name,
            value,
            source: source.to_string(),
        })
        .collect()
}

/// The flags of an expanded command line, each with the variable it came through.
fn flags_of_words(words: &[systemd::Expanded], origin: &str) -> Result<Vec<(String, String, String)>, Error> {
    let mut out = Vec::new();
    let mut it = words.iter().filter(|w| !w.word.is_empty()).skip(1).peekable();
    let source = |w: &systemd::Expanded| match &w.via {
        Some((var, from)) => format!("{from} (${var})"),
        None => format!("{origin} (ExecStart)"),
    };
    while let Some(w) = it.next() {
        let Some(name) = w.word.strip_prefix("--").or_else(|| w.word.strip_prefix('-')) else {
            return Err(Error::Words {
                origin: format!("{origin}: ExecStart"),
                problem: Words::NotAFlag(w.word.clone()),
            });
        };
        match name.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string(), source(w))),
            None => {
                let value = match it.peek() {
                    Some(next) if !next.word.starts_with('-') => it.next().map(|n| n.word.clone()).unwrap_or_default(),
                    _ => "true".to_string(),
                };
                out.push((name.to_string(), value, source(w)));
            }
        }
    }
    Ok(out)
}

/// Read old settings from one text (the single-input form).
pub fn parse(text: &str, origin: &str) -> Result<OldSettings, Error> {
    read(&[Input {
        origin: origin.to_string(),
        text: text.to_string(),
    }])
}

fn parse_yaml_map(text: &str, origin: &str) -> Result<Vec<(String, String)>, Error> {
    let v: Value = kiln_bundle::yaml::from_str(text, origin).map_err(Error::Unrecognised)?;
    let map = v
        .as_object()
        .ok_or_else(|| shape_error(origin, "a YAML map of kubelet flags"))?;
    // `k8s_worker_kubelet_settings: {flag: value, ...}`: one key holding the map.
    let map = match (map.len(), map.values().next()) {
        (1, Some(Value::Object(inner))) => inner,
        _ => map,
    };
    if map.is_empty() {
        return Err(nothing(origin, "an empty map: no kubelet flags"));
    }
    let mut flags = Vec::new();
    for (k, v) in map {
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Null => String::new(),
            other => {
                return Err(shape_error(
                    &format!("{origin}: `{k}`"),
                    &format!("a scalar value, got {other}"),
                ))
            }
        };
        flags.push((k.trim_start_matches('-').to_string(), value));
    }
    Ok(flags)
}

/// Split a command line the way a POSIX shell would for plain words and quotes, joining
/// backslash-newline continuations. No expansion is done.
fn words(text: &str) -> Result<Vec<String>, Words> {
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
                        None => return Err(Words::UnterminatedSingle),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.push(chars.next().ok_or(Words::UnterminatedDouble)?),
                        Some(x) => cur.push(x),
                        None => return Err(Words::UnterminatedDouble),
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
pub fn parse_command_line(text: &str) -> Result<Vec<(String, String)>, Words> {
    let w = words(text)?;
    let mut it = w.into_iter().peekable();
    if it.peek().is_some_and(|first| !first.starts_with('-')) {
        it.next(); // the kubelet binary
    }
    let mut flags = Vec::new();
    while let Some(word) = it.next() {
        let Some(name) = word.strip_prefix("--").or_else(|| word.strip_prefix('-')) else {
            return Err(Words::NotAFlag(word));
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

const KILN_KUBECONFIG: &str = "/var/lib/kubelet/kubeconfig";
const ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// The old `--config` file, given with `--kubelet-config`.
pub struct OldKubeletConfig {
    pub origin: String,
    pub text: String,
}

/// Classify every setting for Kubernetes `target` and build the `config:` section. Later values
/// win, as in kubelet: a repeated flag's last value, and flags over the config file's fields.
pub fn migrate(old: &OldSettings, target: &str, kubelet_config: Option<&OldKubeletConfig>) -> Result<Migration, Error> {
    let t = minor(target).ok_or_else(|| Error::TargetVersion(target.to_string()))?;
    let mut settings = Map::new();
    let mut flags = Map::new();
    let mut containerd = Map::new();
    let mut rows = Vec::new();
    // Which row set each KubeletConfiguration field, so a later flag can mark it overridden.
    let mut field_row: BTreeMap<String, usize> = BTreeMap::new();

    if let Some(kc) = kubelet_config {
        for (field, value, outcome, detail, merged) in old_config_fields(kc, target, &mut containerd)? {
            if let Some(v) = merged {
                field_row.insert(field.clone(), rows.len());
                settings.insert(field.clone(), v);
            }
            rows.push(Row {
                flag: field,
                value: compact(&value),
                outcome,
                source: kc.origin.clone(),
                detail,
            });
        }
    }

    let last: BTreeMap<&str, usize> = old
        .kubelet
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    for (i, s) in old.kubelet.iter().enumerate() {
        let (flag, value) = (s.name.as_str(), s.value.as_str());
        let (outcome, detail) = if last[flag] != i {
            let later = &old.kubelet[last[flag]];
            (
                Outcome::Overridden,
                format!(
                    "--{flag}={} from {} comes later and wins, as in kubelet",
                    later.value, later.source
                ),
            )
        } else {
            let mut out = Out {
                settings: &mut settings,
                flags: &mut flags,
                containerd: &mut containerd,
            };
            classify(flag, value, t, kubelet_config.map(|k| k.origin.as_str()), &mut out)
        };
        if outcome == Outcome::Moved {
            if let Some(field) = moved(flag, t) {
                if let Some(&r) = field_row.get(field) {
                    rows[r].outcome = Outcome::Overridden;
                    rows[r].detail = format!(
                        "the flag --{flag} ({}) wins over the config file, as in kubelet",
                        s.source
                    );
                }
            }
        }
        rows.push(Row {
            flag: flag.to_string(),
            value: value.to_string(),
            outcome,
            source: s.source.clone(),
            detail,
        });
    }

    let mapped = docker::map(&old.docker)?;
    rows.extend(mapped.rows);
    for (k, v) in mapped.kubelet_settings {
        settings.insert(k, v);
    }
    for (k, v) in mapped.containerd {
        containerd.insert(k, v);
    }
    rows.extend(old.notes.iter().cloned());

    let mut kubelet = Map::new();
    if !settings.is_empty() {
        kubelet.insert("settings".into(), Value::Object(settings));
    }
    if !flags.is_empty() {
        kubelet.insert("flags".into(), Value::Object(flags));
    }
    let mut config = Map::new();
    if !containerd.is_empty() {
        config.insert("containerd".into(), Value::Object(containerd));
    }
    if !kubelet.is_empty() {
        config.insert("kubelet".into(), Value::Object(kubelet));
    }
    if !mapped.cni.is_empty() {
        config.insert("cni".into(), Value::Object(mapped.cni));
    }
    Ok(Migration {
        config: json!({ "config": config }),
        rows,
    })
}

/// Where a classified flag's value goes.
struct Out<'a> {
    settings: &'a mut Map<String, Value>,
    flags: &'a mut Map<String, Value>,
    containerd: &'a mut Map<String, Value>,
}

fn classify(flag: &str, value: &str, t: (u32, u32), config_file: Option<&str>, out: &mut Out) -> (Outcome, String) {
    match flag {
        "node-ip" | "hostname-override" | "node-labels" | "register-with-taints" => {
            (Outcome::NodeSpecific, "filled at first boot from the node's configuration".to_string())
        }
        "config" => match config_file {
            Some(f) => (
                Outcome::Replaced,
                format!("kiln renders the KubeletConfiguration into the bundle; the file's fields were read from {f} (--kubelet-config)"),
            ),
            None => (
                Outcome::Replaced,
                "kiln renders the KubeletConfiguration into the bundle; give the file with --kubelet-config to merge its fields into spec.config.kubelet.settings".into(),
            ),
        },
        "kubeconfig" if value == KILN_KUBECONFIG => (Outcome::Kept, "kiln uses the same path".into()),
        "kubeconfig" | "bootstrap-kubeconfig" => {
            (Outcome::Replaced, format!("kiln sets it ({KILN_KUBECONFIG} after TLS bootstrap)"))
        }
        "container-runtime" if value == "docker" || t >= (1, 27) => {
            let detail = if t >= (1, 27) {
                format!("removed in 1.27; kiln sets containerRuntimeEndpoint: {ENDPOINT}")
            } else {
                format!("docker (dockershim) removed in 1.24; --container-runtime=remote --container-runtime-endpoint={ENDPOINT}")
            };
            (Outcome::Replaced, detail)
        }
        "container-runtime-endpoint" | "image-service-endpoint" => {
            (Outcome::Replaced, format!("kiln points the kubelet at containerd ({ENDPOINT})"))
        }
        "pod-infra-container-image" => {
            out.containerd.insert("sandboxImage".into(), Value::String(value.to_string()));
            (
                Outcome::Replaced,
                "under containerd the sandbox image is containerd's setting: spec.config.containerd.sandboxImage".into(),
            )
        }
        "cgroup-driver" => match value {
            "systemd" | "cgroupfs" => {
                out.containerd.insert("systemdCgroup".into(), Value::Bool(value == "systemd"));
                (
                    Outcome::Moved,
                    "spec.config.containerd.systemdCgroup (kiln sets the kubelet's cgroupDriver to match containerd's)".into(),
                )
            }
            _ => (Outcome::Dropped, "not a cgroup driver (systemd or cgroupfs)".into()),
        },
        f => match (removed(f), moved(f, t)) {
            (Some(r), _) if t >= r.version => (
                Outcome::Removed,
                format!("removed in {}.{} ({}); {}", r.version.0, r.version.1, r.why, r.replacement),
            ),
            (_, Some(field)) => {
                insert_path(out.settings, field, convert(field, value));
                (Outcome::Moved, format!("KubeletConfiguration {field}"))
            }
            _ => {
                out.flags.insert(f.to_string(), Value::String(value.to_string()));
                (Outcome::Kept, String::new())
            }
        },
    }
}

/// A field of the old KubeletConfiguration: its name, value, result, detail, and the value merged
/// into `spec.config.kubelet.settings` (if any).
type ConfigField = (String, Value, Outcome, String, Option<Value>);

/// The old KubeletConfiguration's fields, each with its result for `target`.
fn old_config_fields(
    kc: &OldKubeletConfig,
    target: &str,
    containerd: &mut Map<String, Value>,
) -> Result<Vec<ConfigField>, Error> {
    let v: Value = kiln_bundle::yaml::from_str(&kc.text, &kc.origin).map_err(Error::Yaml)?;
    let map = v
        .as_object()
        .ok_or_else(|| shape_error(&kc.origin, "a KubeletConfiguration (a YAML map)"))?;
    match map.get("kind").and_then(Value::as_str) {
        Some("KubeletConfiguration") => {}
        other => {
            return Err(Error::Kind {
                origin: kc.origin.clone(),
                found: other.map_or("no kind".to_string(), |k| format!("kind: {k}")),
            })
        }
    }
    let mut out = Vec::new();
    for (field, value) in map {
        let (outcome, detail, merged) = match field.as_str() {
            "apiVersion" | "kind" => continue,
            "containerRuntimeEndpoint" => (
                Outcome::Replaced,
                format!("kiln points the kubelet at containerd ({ENDPOINT})"),
                None,
            ),
            "cgroupDriver" => match value.as_str() {
                Some(d @ ("systemd" | "cgroupfs")) => {
                    containerd.insert("systemdCgroup".into(), Value::Bool(d == "systemd"));
                    (
                        Outcome::Moved,
                        "spec.config.containerd.systemdCgroup (kiln sets the kubelet's cgroupDriver to match containerd's)".into(),
                        None,
                    )
                }
                _ => (
                    Outcome::Dropped,
                    "not a cgroup driver (systemd or cgroupfs)".into(),
                    None,
                ),
            },
            "clusterDNS" => (
                Outcome::NodeSpecific,
                "filled at first boot from the node configuration's clusterDNS".into(),
                None,
            ),
            "authentication" => {
                // kiln points x509.clientCAFile at the cluster CA it writes at first boot.
                let mut auth = value.clone();
                let x509 = auth.pointer_mut("/x509").and_then(Value::as_object_mut);
                let ca = x509.and_then(|x| x.remove("clientCAFile"));
                if auth
                    .pointer("/x509")
                    .and_then(Value::as_object)
                    .is_some_and(Map::is_empty)
                {
                    auth.as_object_mut().map(|a| a.remove("x509"));
                }
                let detail = match ca {
                    Some(ca) => format!(
                        "KubeletConfiguration authentication, without x509.clientCAFile ({}): kiln writes the cluster CA at first boot",
                        compact(&ca)
                    ),
                    None => "KubeletConfiguration authentication".into(),
                };
                (Outcome::Moved, detail, Some(auth))
            }
            f if has_field(f, target) => (Outcome::Moved, format!("KubeletConfiguration {f}"), Some(value.clone())),
            _ => (
                Outcome::Removed,
                format!(
                    "not a KubeletConfiguration field in Kubernetes {target} (removed or renamed since, or misspelt)"
                ),
                None,
            ),
        };
        out.push((field.clone(), value.clone(), outcome, detail, merged));
    }
    if out.is_empty() {
        return Err(nothing(&kc.origin, "the KubeletConfiguration sets no fields"));
    }
    Ok(out)
}

/// A value on one line for the report.
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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
        let e = parse_yaml_map("network-plugin: cni\nnetwork-plugin: kubenet\n", "flags.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("flags.yaml") && e.to_lowercase().contains("duplicate"),
            "{e}"
        );
        let huge = format!("a: \"{}\"\n", "x".repeat(kiln_bundle::yaml::MAX_YAML_BYTES));
        let e = parse_yaml_map(&huge, "flags.yaml").unwrap_err().to_string();
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
        let flags: Vec<(&str, &str)> = old
            .kubelet
            .iter()
            .map(|s| (s.name.as_str(), s.value.as_str()))
            .collect();
        assert_eq!(flags, [("network-plugin", "cni"), ("max-pods", "50")]);
        assert_eq!(old.kubelet[1].source, "u ($KUBELET_EXTRA)");
        let deps: Vec<&str> = old.notes.iter().map(|r| r.value.as_str()).collect();
        assert_eq!(deps, ["After=docker.service", "Requires=docker.service"]);
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
        let old = parse("--container-runtime=docker", "c").unwrap();
        let m = migrate(&old, "1.26.3", None).unwrap();
        assert_eq!(m.rows[0].outcome, Outcome::Replaced);
        assert!(m.rows[0].detail.contains("--container-runtime=remote"));
        let old = parse("--network-plugin=cni", "c").unwrap();
        assert_eq!(migrate(&old, "1.23.0", None).unwrap().rows[0].outcome, Outcome::Kept);
    }
}
