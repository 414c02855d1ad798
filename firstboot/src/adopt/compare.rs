//! The old kubelet's settings against what the bundle's kubelet runs with: every flag and
//! KubeletConfiguration field the worker has, with a verdict. `kiln migrate` classifies the old
//! settings for the bundle's Kubernetes version (a flag that moved into KubeletConfiguration is
//! compared as that field); the bundle side is its kubelet unit's flags and its KubeletConfiguration
//! template, where a placeholder is a value filled from this node.

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use kiln_migrate::{Migration, Outcome};

/// What becomes of one old setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The bundle has the same value.
    Same,
    /// Node-specific, and adoption carries it (name, node IP), or the existing Node keeps it
    /// (labels and taints, which kubelet applies only when it registers).
    Carried,
    /// Replaced or made moot by the move to containerd and the bundle (runtime endpoint, a flag
    /// removed in the bundle's Kubernetes version).
    Replaced,
    /// The bundle sets another value: the worker loses its own.
    Changed,
    /// The bundle does not set it: the worker loses it.
    Lost,
    /// Read but without effect on the old kubelet either (a later value won, an unused variable).
    Ignored,
}

impl Verdict {
    /// Whether the worker would lose something it has.
    pub fn is_loss(self) -> bool {
        matches!(self, Verdict::Changed | Verdict::Lost)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Same => "same",
            Verdict::Carried => "carried",
            Verdict::Replaced => "replaced",
            Verdict::Changed => "changed",
            Verdict::Lost => "lost",
            Verdict::Ignored => "ignored",
        })
    }
}

/// One line of the comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compared {
    /// `--flag`, a KubeletConfiguration field path, `$VARIABLE` or a unit line.
    pub setting: String,
    pub node: String,
    /// The bundle's value, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    pub verdict: Verdict,
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The bundle's kubelet: its flags (from the unit) and its KubeletConfiguration.
pub struct BundleKubelet {
    pub flags: Vec<(String, String)>,
    pub config: Value,
}

impl BundleKubelet {
    pub fn parse(unit: &str, config: &str) -> Result<BundleKubelet> {
        let origin = "the bundle's kubelet.service";
        let settings = kiln_migrate::parse(&marked(unit, origin)?, origin).map_err(|e| anyhow!("{origin}: {e}"))?;
        let origin = "the bundle's kubelet config.yaml";
        let config = kiln_bundle::yaml::from_str(&marked(config, origin)?, origin)?;
        Ok(BundleKubelet {
            flags: settings.kubelet.into_iter().map(|s| (s.name, s.value)).collect(),
            config,
        })
    }

    fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What a placeholder reads as here: a plain word, so a template parses before the node's values
/// are known (`@` cannot start a YAML scalar).
const MARK: &str = "kiln-placeholder-";

pub(super) fn marked(template: &str, origin: &str) -> Result<String> {
    let names = kiln_bundle::placeholder::scan(template).map_err(|e| anyhow!("{origin}: {e}"))?;
    let values = names.iter().map(|n| (n.clone(), format!("{MARK}{n}"))).collect();
    kiln_bundle::placeholder::substitute(template, &values).map_err(|e| anyhow!("{origin}: {e}"))
}

fn is_placeholder(s: &str) -> bool {
    s.contains(MARK)
}

/// Every leaf of `v` as `(dotted path, value)`; arrays are leaves.
fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                leaves(&format!("{prefix}.{k}"), child, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

/// One value of the worker against the bundle's.
fn verdict_of(node: &Value, bundle: Option<&Value>) -> (Verdict, Option<String>, String) {
    match bundle {
        None => (Verdict::Lost, None, "the bundle does not set it".into()),
        Some(b) if is_placeholder(&text(b)) => (
            Verdict::Carried,
            Some(text(b)),
            "filled from this node at activation".into(),
        ),
        Some(b) if b == node || text(b) == text(node) => (Verdict::Same, Some(text(b)), String::new()),
        Some(b) => (Verdict::Changed, Some(text(b)), "the bundle sets another value".into()),
    }
}

/// Compare the worker's settings, as `kiln migrate` classified them for the bundle's version
/// (`migration`), with the bundle's kubelet.
pub fn compare(migration: &Migration, target: (u32, u32), bundle: &BundleKubelet) -> Vec<Compared> {
    let settings = &migration.config["config"]["kubelet"]["settings"];
    let mut out = Vec::new();
    for row in &migration.rows {
        let name = row.flag.as_str();
        let is_field = !name.starts_with('$') && kiln_migrate::fields::FIELDS.iter().any(|(f, _)| *f == name);
        let is_flag = !is_field && !name.starts_with('$') && name != "unit" && name != "EnvironmentFile";
        let shown = if is_flag { format!("--{name}") } else { name.to_string() };
        let line = |verdict, bundle, detail: String| Compared {
            setting: shown.clone(),
            node: row.value.clone(),
            bundle,
            verdict,
            source: row.source.clone(),
            detail,
        };
        match row.outcome {
            Outcome::Overridden | Outcome::NotRead => out.push(line(Verdict::Ignored, None, row.detail.clone())),
            _ if name.starts_with('$') || name == "unit" || name == "EnvironmentFile" => {
                out.push(line(Verdict::Ignored, None, row.detail.clone()))
            }
            Outcome::NodeSpecific => out.push(line(
                Verdict::Carried,
                None,
                match name {
                    "node-ip" | "hostname-override" => "kept by the adoption (nodeIP, hostname)".into(),
                    "clusterDNS" => "kept by the adoption (clusterDNS)".into(),
                    _ => "the existing Node keeps it (kubelet applies it only when it registers)".into(),
                },
            )),
            Outcome::Moved if name == "cgroup-driver" || name == "cgroupDriver" => {
                let (v, b, d) = verdict_of(&Value::String(row.value.clone()), bundle.config.get("cgroupDriver"));
                out.push(line(v, b, d));
            }
            Outcome::Removed | Outcome::Replaced => out.push(line(Verdict::Replaced, None, row.detail.clone())),
            Outcome::Dropped => out.push(line(Verdict::Lost, None, row.detail.clone())),
            // A KubeletConfiguration field of the old config file: each leaf against the bundle's.
            Outcome::Kept | Outcome::Moved if is_field => field_rows(name, row, settings, bundle, &mut out),
            Outcome::Moved => match kiln_migrate::flags::moved(name, target) {
                Some(field) => {
                    let node = at(settings, field).cloned().unwrap_or(Value::String(row.value.clone()));
                    let mut leafs = Vec::new();
                    leaves(field, &node, &mut leafs);
                    for (path, v) in leafs {
                        let (verdict, b, d) = verdict_of(&v, at(&bundle.config, &path));
                        out.push(Compared {
                            setting: format!("--{name} ({path})"),
                            node: text(&v),
                            bundle: b,
                            verdict,
                            source: row.source.clone(),
                            detail: d,
                        });
                    }
                }
                None => out.push(line(Verdict::Replaced, None, row.detail.clone())),
            },
            Outcome::Kept => {
                let (v, b, d) = verdict_of(
                    &Value::String(row.value.clone()),
                    bundle.flag(name).map(|s| Value::String(s.to_string())).as_ref(),
                );
                out.push(line(v, b, d));
            }
        }
    }
    out
}

fn field_rows(name: &str, row: &kiln_migrate::Row, settings: &Value, bundle: &BundleKubelet, out: &mut Vec<Compared>) {
    let Some(node) = settings.get(name) else {
        // Classified but not merged (kiln sets it itself): what kiln migrate said.
        out.push(Compared {
            setting: name.to_string(),
            node: row.value.clone(),
            bundle: bundle.config.get(name).map(text),
            verdict: Verdict::Replaced,
            source: row.source.clone(),
            detail: row.detail.clone(),
        });
        return;
    };
    let mut leafs = Vec::new();
    leaves(name, node, &mut leafs);
    for (path, v) in leafs {
        let (verdict, b, d) = verdict_of(&v, at(&bundle.config, &path));
        out.push(Compared {
            setting: path,
            node: text(&v),
            bundle: b,
            verdict,
            source: row.source.clone(),
            detail: d,
        });
    }
}
