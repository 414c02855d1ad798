//! `kiln lock MANIFEST`: resolve every artifact for every architecture and write `MANIFEST.lock`.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cache::Cache;
use crate::cli::LockArgs;
use crate::lockfile::{lock_path, Lock, Locked, LOCK_VERSION};
use crate::mirror::Mirrors;
use crate::plan::{self, Ctx};

pub fn run(a: &LockArgs, cache: Option<std::path::PathBuf>) -> Result<ExitCode> {
    let manifest = super::load_manifest(&a.manifest)?;
    crate::install_signal_handlers()?;
    let cache = Cache::open(cache)?;
    let mirrors = Mirrors::parse(&a.fetch.mirrors)?;
    let ctx = Ctx::new(&cache, &mirrors, &a.manifest, a.fetch.offline, a.fetch.retries);
    let mut artifacts = Vec::new();
    for arch in &manifest.spec.architectures {
        // Resolve afresh: apt versions float to the candidate unless the manifest pins them.
        for r in plan::resolve(&manifest, *arch, None, &ctx)? {
            artifacts.push(Locked {
                component: r.component.to_string(),
                arch: r.arch,
                version: r.version,
                source: r.source,
                sha256: r.sha256,
                size: r.size,
            });
        }
    }
    let lock = Lock {
        lock_version: LOCK_VERSION,
        artifacts,
    };
    let path = lock_path(&a.manifest);
    kiln_bundle::atomic::write_file(&path, &lock.to_json(), 0o644)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}: {} artifacts locked", path.display(), lock.artifacts.len());
    Ok(ExitCode::SUCCESS)
}
