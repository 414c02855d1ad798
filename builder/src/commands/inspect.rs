//! `kiln inspect BUNDLE`: components, versions, sizes and digests, as a table or JSON.

use std::process::ExitCode;

use anyhow::Result;
use kiln_bundle::reader::read_index;
use serde_json::json;

use super::{human_size, table};
use crate::cli::{InspectArgs, OutputFormat};

pub fn run(a: &InspectArgs) -> Result<ExitCode> {
    let index = read_index(&a.bundle)?;
    if a.output == OutputFormat::Json {
        let mut v = serde_json::to_value(&index)?;
        v["hasKubelet"] = json!(index.has_kubelet());
        v["totalSize"] = json!(index.total_size());
        if !a.files {
            v.as_object_mut().expect("index is an object").remove("files");
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("bundle      {} {} ({})", index.name, index.version, index.arch);
    println!("kubernetes  {}", index.kubernetes_version);
    println!("kind        {}", index.flavor());
    println!("files       {} ({})", index.files.len(), human_size(index.total_size()));
    println!(
        "built by    {} (SOURCE_DATE_EPOCH {})",
        index.build.tool, index.build.source_date_epoch
    );
    if let Some(v) = &index.verity {
        println!(
            "verity      {}, {} ({}), dm-verity root hash {}",
            v.filesystem,
            human_size(v.size),
            kiln_bundle::verity::verity_path(&a.bundle)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            v.root_hash
        );
    }
    // Declared setuid/setgid files, always shown: they are the bundle's privileged surface.
    for path in &index.setid {
        let mode = index.file(path).map(|f| f.mode.to_string()).unwrap_or_default();
        println!("setid       {path} ({mode})");
    }
    // Registries the bundle configures, and which need credentials at first boot.
    let hosts_dir = format!("{}/", kiln_bundle::layout::files::REGISTRY_HOSTS_DIR);
    for f in &index.files {
        let Some(host) = f
            .path
            .strip_prefix(&hosts_dir)
            .and_then(|r| r.strip_suffix("/hosts.toml"))
        else {
            continue;
        };
        let auth = format!("{}{host}", kiln_bundle::placeholder::REGISTRY_AUTH);
        let creds = if index.placeholders.iter().any(|p| p.name == auth) {
            format!(" (credentials from the node configuration: registryAuth[{host}], placeholder {auth})")
        } else {
            String::new()
        };
        println!("registry    {host}{creds}");
    }
    // Extra runtime handlers, each with the RuntimeClass pods select it by.
    let classes_dir = format!("{}/", kiln_bundle::layout::files::RUNTIME_CLASSES_DIR);
    for f in &index.files {
        if let Some(name) = f.path.strip_prefix(&classes_dir).and_then(|r| r.strip_suffix(".yaml")) {
            println!("runtime     {name} (RuntimeClass {name}: {})", f.path);
        }
    }
    println!();
    let rows: Vec<Vec<String>> = index
        .components
        .iter()
        .map(|c| {
            let files: Vec<_> = index
                .files
                .iter()
                .filter(|f| f.component.as_deref() == Some(c.name.as_str()))
                .collect();
            vec![
                c.name.clone(),
                c.version.clone(),
                files.len().to_string(),
                human_size(files.iter().map(|f| f.size).sum()),
                c.source_sha256.short(),
                c.source.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["COMPONENT", "VERSION", "FILES", "SIZE", "SOURCE SHA256", "SOURCE"],
            &rows
        )
    );
    if a.files {
        println!();
        let rows: Vec<Vec<String>> = index
            .files
            .iter()
            .map(|f| {
                vec![
                    f.path.clone(),
                    f.mode.to_string(),
                    human_size(f.size),
                    f.sha256
                        .map(|d| d.short())
                        .or_else(|| f.target.as_ref().map(|t| format!("-> {t}")))
                        .unwrap_or_default(),
                    f.component.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print!("{}", table(&["PATH", "MODE", "SIZE", "SHA256", "COMPONENT"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}
