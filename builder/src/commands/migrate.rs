//! `kiln migrate INPUT... [--kubelet-config FILE] --kubernetes-version V`: the manifest `config:` section on stdout, the
//! per-flag report on stderr (or both as JSON with `-o json`).

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{MigrateArgs, OutputFormat};
use crate::migrate;

pub fn run(a: &MigrateArgs) -> Result<ExitCode> {
    let read = |path: &std::path::Path| -> Result<(String, String)> {
        let origin = path.display().to_string();
        let text = if origin == "-" {
            std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {origin}"))?
        };
        Ok((origin, text))
    };
    let mut inputs = Vec::new();
    for path in &a.inputs {
        let (origin, text) = read(path)?;
        inputs.push(migrate::Input { origin, text });
    }
    let kubelet_config = match &a.kubelet_config {
        Some(p) => {
            let (origin, text) = read(p)?;
            Some(migrate::OldKubeletConfig { origin, text })
        }
        None => None,
    };
    let old = migrate::read(&inputs)?;
    let m = migrate::migrate(&old, &a.kubernetes_version, kubelet_config.as_ref())?;
    if a.output == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"config": m.config["config"], "report": m.rows}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "# kiln migrate: paste under `spec:` of a manifest for Kubernetes {}",
        a.kubernetes_version
    );
    let yaml = serde_saphyr::to_string(&m.config)?;
    print!("{}{}", yaml, if yaml.ends_with('\n') { "" } else { "\n" });
    let rows: Vec<Vec<String>> = m
        .rows
        .iter()
        .map(|r| {
            let value = if r.value.is_empty() {
                "\"\"".to_string()
            } else {
                r.value.clone()
            };
            vec![
                r.flag.clone(),
                value,
                r.outcome.to_string(),
                r.source.clone(),
                r.detail.clone(),
            ]
        })
        .collect();
    eprint!(
        "{}",
        super::table(&["SETTING", "VALUE", "RESULT", "SOURCE", "DETAIL"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}
