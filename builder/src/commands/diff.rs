//! `kiln diff A B`: components and files added, removed and changed between two bundles, from their
//! indexes alone.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use kiln_bundle::index::Index;
use kiln_bundle::reader::read_index;
use serde::Serialize;

use crate::cli::{DiffArgs, OutputFormat};

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `component` or `file`.
    pub kind: &'static str,
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    pub detail: String,
}

/// Every difference between two indexes, components first, each group sorted by name.
pub fn diff(a: &Index, b: &Index) -> Vec<Change> {
    let mut out = Vec::new();
    let ca: BTreeMap<_, _> = a.components.iter().map(|c| (c.name.as_str(), c)).collect();
    let cb: BTreeMap<_, _> = b.components.iter().map(|c| (c.name.as_str(), c)).collect();
    for (name, change, detail) in compare(
        &ca,
        &cb,
        |x, y| {
            if x.version != y.version {
                Some(format!("{} -> {}", x.version, y.version))
            } else if x.source_sha256 != y.source_sha256 || x.source != y.source {
                Some(format!(
                    "{} source changed ({} -> {})",
                    x.version,
                    x.source_sha256.short(),
                    y.source_sha256.short()
                ))
            } else {
                None
            }
        },
        |c| c.version.clone(),
    ) {
        out.push(Change {
            kind: "component",
            name,
            change,
            detail,
        });
    }
    let fa: BTreeMap<_, _> = a.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let fb: BTreeMap<_, _> = b.files.iter().map(|f| (f.path.as_str(), f)).collect();
    for (name, change, detail) in compare(
        &fa,
        &fb,
        |x, y| {
            let mut d = Vec::new();
            if x.sha256 != y.sha256 || x.target != y.target {
                d.push(format!("content {} -> {}", short(x), short(y)));
            }
            if x.mode != y.mode {
                d.push(format!("mode {} -> {}", x.mode, y.mode));
            }
            (!d.is_empty()).then(|| d.join(", "))
        },
        |f| format!("{} bytes", f.size),
    ) {
        out.push(Change {
            kind: "file",
            name,
            change,
            detail,
        });
    }
    out
}

fn short(f: &kiln_bundle::FileRecord) -> String {
    f.sha256
        .map(|d| d.short())
        .or_else(|| f.target.clone().map(|t| format!("-> {t}")))
        .unwrap_or_default()
}

fn compare<T>(
    a: &BTreeMap<&str, T>,
    b: &BTreeMap<&str, T>,
    changed: impl Fn(&T, &T) -> Option<String>,
    describe: impl Fn(&T) -> String,
) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    for (k, x) in a {
        match b.get(k) {
            None => out.push((k.to_string(), "removed", describe(x))),
            Some(y) => {
                if let Some(d) = changed(x, y) {
                    out.push((k.to_string(), "changed", d));
                }
            }
        }
    }
    for (k, y) in b {
        if !a.contains_key(k) {
            out.push((k.to_string(), "added", describe(y)));
        }
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

pub fn run(a: &DiffArgs) -> Result<ExitCode> {
    let ia = read_index(&a.a)?;
    let ib = read_index(&a.b)?;
    let changes = diff(&ia, &ib);
    if a.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&changes)?);
        return Ok(ExitCode::SUCCESS);
    }
    if changes.is_empty() {
        println!("no differences");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                c.kind.to_string(),
                c.change.to_string(),
                c.name.clone(),
                c.detail.clone(),
            ]
        })
        .collect();
    print!("{}", super::table(&["KIND", "CHANGE", "NAME", "DETAIL"], &rows));
    Ok(ExitCode::SUCCESS)
}
