//! `kiln build MANIFEST -o DIR`: one reproducible bundle per architecture, with its `.sha256` (and
//! `.minisig` when signing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln_bundle::digest::{hash_file, parse_sha256sum, Sha256};
use kiln_bundle::index::{BuildInfo, EntryKind, FileRecord, Index, SBOM_PATH, SCHEMA_VERSION};
use kiln_bundle::layout::Layout;
use kiln_bundle::manifest::{Arch, Manifest};
use kiln_bundle::mode::Mode;
use kiln_bundle::verity::verity_path;
use kiln_bundle::writer::{self, sha256_path, Content};

use crate::cache::Cache;
use crate::cli::{password_from_env, BuildArgs};
use crate::lockfile::{lock_path, Lock};
use crate::mirror::Mirrors;
use crate::plan::{self, Ctx};
use crate::render;

pub fn run(a: &BuildArgs, cache: Option<PathBuf>) -> Result<ExitCode> {
    let manifest = super::load_manifest(&a.manifest)?;
    let archs = select_archs(&manifest, &a.archs)?;
    let lock_file = lock_path(&a.manifest);
    let lock = Lock::load(&lock_file)?;
    match (&lock, a.locked) {
        (None, true) => bail!(
            "--locked: {} does not exist; run `kiln lock {}`",
            lock_file.display(),
            a.manifest.display()
        ),
        (Some(l), locked) => {
            let diffs = l.disagreements(&manifest, &archs);
            if !diffs.is_empty() {
                let msg = format!(
                    "{} disagrees with {}:\n  {}",
                    lock_file.display(),
                    a.manifest.display(),
                    diffs.join("\n  ")
                );
                if locked {
                    bail!("--locked: {msg}\nrun `kiln lock {}` to update it", a.manifest.display());
                }
                tracing::warn!("{msg}\nthe lock is ignored; run `kiln lock` to update it");
            }
        }
        (None, false) => {}
    }
    let lock = lock.filter(|l| l.disagreements(&manifest, &archs).is_empty());
    let password = password_from_env(a.key_password_env.as_deref())?;
    let cache = Cache::open(cache)?;
    let mirrors = Mirrors::parse(&a.fetch.mirrors)?;
    let ctx = Ctx::new(&cache, &mirrors, &a.manifest, a.fetch.offline, a.fetch.retries);
    crate::install_signal_handlers()?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("cannot create output directory {}", a.output.display()))?;

    for arch in archs {
        let started = Instant::now();
        let resolved = plan::resolve(&manifest, arch, lock.as_ref(), &ctx)?;
        let mut planned = plan::install(&manifest, &resolved, &ctx)?;
        planned.extend(plan::images(&manifest, arch, &ctx)?);
        let epoch = a.source_date_epoch.unwrap_or(0);
        let (mut index, contents) = assemble(&manifest, arch, &resolved, planned, epoch)?;
        let dest = a.output.join(index.file_name());
        let verity_dest = verity_path(&dest);
        let (digest, fresh) = match up_to_date(&dest, &index, manifest.spec.verity) {
            Some((d, existing)) => {
                // The existing index carries its verity record: the image is not built again.
                index = existing;
                (d, false)
            }
            None => {
                // The image first: a bundle is never left naming an image that is not beside it.
                if manifest.spec.verity {
                    let built = crate::verity::build(&index, &contents, &a.output)?;
                    index.verity = Some(built.record.clone());
                    built.install(&verity_dest)?;
                } else {
                    remove_stale(&verity_dest)?;
                }
                let opts = writer::WriteOptions {
                    workers: writer::default_workers(),
                    cancel: Some(crate::interrupted()),
                };
                let w = writer::write_bundle(&a.output, &index, &contents, opts)?;
                (w.sha256, true)
            }
        };
        if let Some(key) = &a.sign {
            let comment = format!("kiln bundle {} sha256:{digest}", index.file_name());
            let sig = crate::signing::sign_file(&dest, key, password.clone(), &comment)?;
            tracing::info!("signed: {}", sig.display());
        }
        if let Some(v) = &index.verity {
            println!(
                "{} {} (dm-verity root hash {})",
                verity_dest.display(),
                super::human_size(v.size),
                v.root_hash
            );
        }
        let state = if fresh { "built" } else { "up to date" };
        println!(
            "{} {state} ({} files, {}, {:.2}s)\nsha256 {digest}",
            dest.display(),
            index.files.len(),
            super::human_size(std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0)),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn select_archs(m: &Manifest, wanted: &[String]) -> Result<Vec<Arch>> {
    if wanted.is_empty() {
        return Ok(m.spec.architectures.clone());
    }
    wanted
        .iter()
        .map(|w| {
            let arch: Arch = w.parse().map_err(anyhow::Error::msg)?;
            if !m.spec.architectures.contains(&arch) {
                bail!(
                    "--arch {arch}: the manifest does not list it (it lists {:?})",
                    m.spec.architectures
                );
            }
            Ok(arch)
        })
        .collect()
}

/// The index and contents of one bundle: the installed files, the rendered node configuration and
/// the SBOM.
pub fn assemble(
    m: &Manifest,
    arch: Arch,
    resolved: &[plan::Resolved],
    planned: Vec<plan::Planned>,
    epoch: u64,
) -> Result<(Index, BTreeMap<String, Content>)> {
    let components: Vec<_> = resolved.iter().map(plan::Resolved::record).collect();
    let versions = render::Versions {
        containerd: m.spec.components.containerd.version.clone(),
        kubernetes: m
            .spec
            .components
            .kubelet
            .as_ref()
            .map_or(m.spec.kubernetes_version.clone(), |k| k.version.clone()),
    };
    let (rendered, warnings) = render::render_all(m, &versions, &Layout::default())?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let placeholders = render::placeholders(&rendered)?;
    let sbom = crate::sbom::render(&m.metadata.name, &m.metadata.version, arch, &components, epoch);
    let mut generated: Vec<(String, Mode, Vec<u8>)> = rendered
        .into_iter()
        .map(|r| (r.path.to_string(), r.mode, r.text.into_bytes()))
        .collect();
    generated.push((SBOM_PATH.into(), Mode::FILE, sbom));

    let mut files: Vec<FileRecord> = Vec::with_capacity(planned.len() + generated.len());
    let mut contents = BTreeMap::new();
    for p in planned {
        contents.insert(p.record.path.clone(), p.content);
        files.push(p.record);
    }
    for (path, mode, bytes) in generated {
        if contents.contains_key(&path) {
            bail!("`{path}` is rendered by kiln; an install rule or spec.files entry must not write it");
        }
        files.push(FileRecord {
            path: path.clone(),
            kind: EntryKind::File,
            mode,
            size: bytes.len() as u64,
            sha256: Some(Sha256::of(&bytes)),
            target: None,
            component: None,
        });
        contents.insert(path, Content::Bytes(bytes));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if !m.spec.images.is_empty() && !contents.contains_key("bin/ctr") {
        bail!("spec.images: the bundle has no bin/ctr to import them with; install ctr from the containerd component");
    }
    let index = Index {
        schema_version: SCHEMA_VERSION,
        name: m.metadata.name.clone(),
        version: m.metadata.version.clone(),
        arch,
        kubernetes_version: m.spec.kubernetes_version.clone(),
        components,
        files,
        placeholders,
        setid: {
            let mut s = m.spec.setid.clone();
            s.sort();
            s.dedup();
            s
        },
        build: BuildInfo {
            tool: crate::tool_version(),
            source_date_epoch: epoch,
            compression: format!("zstd-{}", writer::ZSTD_LEVEL),
        },
        verity: None,
    };
    Ok((index, contents))
}

/// The digest and index of an existing bundle at `dest` built from exactly `index` (which has no
/// verity record yet), if it is intact: the same index, a verity image beside it exactly when
/// `verity` is asked for and matching its record, and bytes matching the `.sha256` beside it.
/// Rebuilding would give the same files, the image being a function of the index.
fn up_to_date(dest: &Path, index: &Index, verity: bool) -> Option<(Sha256, Index)> {
    let existing = kiln_bundle::reader::read_index(dest).ok()?;
    if existing.without_verity() != *index || existing.verity.is_some() != verity {
        return None;
    }
    if let Some(v) = &existing.verity {
        crate::verity::check_beside(dest, v).ok()?;
    }
    let recorded = parse_sha256sum(&std::fs::read_to_string(sha256_path(dest)).ok()?).ok()?;
    let (actual, _) = hash_file(dest).ok()?;
    (actual == recorded).then_some((actual, existing))
}

/// A verity image left beside the bundle by an earlier build with `spec.verity`.
fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove the stale {}", path.display())),
    }
}
