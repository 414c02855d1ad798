//! From manifest to bundle contents: resolve each component's artifact for an architecture (from the
//! cache, the lock, or by fetching it), then apply the install rules to the artifact's members.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Error, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::index::{ComponentRecord, EntryKind, FileRecord};
use kiln_bundle::layout::files;
use kiln_bundle::manifest::{expand, Arch, Component, Components, Format, Manifest};
use kiln_bundle::mode::Mode;
use kiln_bundle::writer::Content;

use crate::archive::{self, Member, Members};
use crate::cache::Cache;
use crate::fetch::{apt::Apt, file, http::Http};
use crate::lockfile::Lock;
use crate::mirror::Mirrors;

/// Everything resolution needs besides the manifest.
pub struct Ctx<'a> {
    pub cache: &'a Cache,
    pub mirrors: &'a Mirrors,
    /// Directory that relative paths in the manifest are relative to.
    pub base: PathBuf,
    /// Never touch the network: every artifact must already be in the cache.
    pub offline: bool,
    pub retries: u32,
    http: std::cell::OnceCell<Http>,
}

impl<'a> Ctx<'a> {
    pub fn new(cache: &'a Cache, mirrors: &'a Mirrors, manifest_path: &Path, offline: bool, retries: u32) -> Self {
        let base = manifest_path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ctx {
            cache,
            mirrors,
            base,
            offline,
            retries,
            http: std::cell::OnceCell::new(),
        }
    }

    fn http(&self) -> Result<&Http> {
        if let Some(h) = self.http.get() {
            return Ok(h);
        }
        let h = Http::new(self.retries)?;
        Ok(self.http.get_or_init(|| h))
    }
}

/// One component's artifact for one architecture, in the cache.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub component: String,
    pub version: String,
    pub arch: Arch,
    /// The upstream URL (before mirror rewriting) or `apt:<package>=<version>`.
    pub source: String,
    pub format: Format,
    pub sha256: Sha256,
    pub size: u64,
}

impl Resolved {
    pub fn record(&self) -> ComponentRecord {
        ComponentRecord {
            name: self.component.to_string(),
            version: self.version.clone(),
            source: self.source.clone(),
            source_sha256: self.sha256,
            format: self.format.as_str().to_string(),
        }
    }
}

/// Resolve every component of `m` for `arch`. A lock, when given, pins apt versions and digests.
pub fn resolve(m: &Manifest, arch: Arch, lock: Option<&Lock>, ctx: &Ctx) -> Result<Vec<Resolved>> {
    // Ask apt once for every package that is not fully pinned and cached.
    let mut wanted = Vec::new();
    for (name, c) in m.spec.components.iter() {
        if let Some(apt) = &c.source.apt {
            let (pinned, expected) = apt_pins(&c, &name, arch, lock);
            if !(pinned.is_some() && expected.is_some_and(|d| ctx.cache.has(&d))) {
                wanted.push((apt.package.clone(), pinned));
            }
        }
    }
    let listed = Apt::new(ctx.cache.apt_dir()).candidates(&wanted, &format!("apt packages ({arch})"))?;
    let candidates: BTreeMap<String, (String, Sha256)> = wanted.into_iter().map(|(p, _)| p).zip(listed).collect();
    m.spec
        .components
        .iter()
        .into_iter()
        .map(|(name, c)| resolve_one(m, name, &c, arch, lock, &candidates, ctx))
        .collect()
}

/// The apt version and digest pinned by the manifest or, failing that, the lock.
fn apt_pins(c: &Component, name: &str, arch: Arch, lock: Option<&Lock>) -> (Option<String>, Option<Sha256>) {
    let locked = lock.and_then(|l| l.find(name, arch));
    let version = c
        .source
        .apt
        .as_ref()
        .and_then(|a| a.version.clone())
        .or_else(|| locked.and_then(|l| l.apt()).map(|(_, v)| v.to_string()));
    let digest = c.source.sha256.get(&arch).copied().or_else(|| locked.map(|l| l.sha256));
    (version, digest)
}

fn resolve_one(
    m: &Manifest,
    name: String,
    c: &Component,
    arch: Arch,
    lock: Option<&Lock>,
    candidates: &BTreeMap<String, (String, Sha256)>,
    ctx: &Ctx,
) -> Result<Resolved> {
    let what = format!("component {} ({arch})", Components::key(&name));
    let format = m.format_of(c);
    let (source, sha256) = match (&c.source.url, &c.source.apt) {
        (Some(template), _) => {
            let url = expand(template, &c.version, arch);
            let expected = c.source.sha256[&arch];
            fetch_pinned(&url, &expected, ctx, &what)?;
            (url, expected)
        }
        (None, Some(apt)) => {
            let (pinned, expected) = apt_pins(c, &name, arch, lock);
            let digest = match candidates.get(&apt.package) {
                // Fully pinned and cached: no apt call at all, so a rebuild works offline.
                None => expected.expect("only pinned and cached packages skip apt"),
                Some((version, listed)) => {
                    if let Some(e) = expected {
                        if e != *listed {
                            return Err(crate::fetch::mismatch(
                                &what,
                                &format!("apt package {}={version}", apt.package),
                                &e,
                                listed,
                            ));
                        }
                    }
                    if !ctx.cache.has(listed) {
                        fetch_deb(
                            &Apt::new(ctx.cache.apt_dir()),
                            &apt.package,
                            version,
                            *listed,
                            arch,
                            ctx,
                            &what,
                        )?;
                    }
                    *listed
                }
            };
            let members = archive::members(ctx.cache, &digest, &ctx.cache.blob(&digest), format, &what)?;
            let resolved_version = members
                .deb_version
                .clone()
                .ok_or_else(|| anyhow!("{what}: the .deb has no Version field"))?;
            if let Some(v) = &pinned {
                if *v != resolved_version {
                    bail!("{what}: asked apt for {} {v} but got {resolved_version}", apt.package);
                }
            }
            (format!("apt:{}={resolved_version}", apt.package), digest)
        }
        (None, None) => unreachable!("validated manifest: a source has url or apt"),
    };
    let size = std::fs::metadata(ctx.cache.blob(&sha256))
        .with_context(|| format!("{what}: cache entry vanished"))?
        .len();
    Ok(Resolved {
        component: name,
        version: c.version.clone(),
        arch,
        source,
        format,
        sha256,
        size,
    })
}

/// Bring the artifact at `url` (a local path, `file://`, or HTTP through the mirrors) into the
/// cache, checked against `expected`; nothing to do when the cache has it.
fn fetch_pinned(url: &str, expected: &Sha256, ctx: &Ctx, what: &str) -> Result<()> {
    if ctx.cache.has(expected) {
        return Ok(());
    }
    if let Some(path) = file::local_path(url, &ctx.base) {
        file::fetch(&path, expected, ctx.cache, what)
    } else if ctx.offline {
        bail!("{what}: {url} is not in the cache and --offline was given");
    } else {
        ctx.http()?.fetch(&ctx.mirrors.rewrite(url), expected, ctx.cache, what)
    }
}

/// The manifest's preloaded images for `arch`: each archive fetched and pinned like a component,
/// checked to be an OCI image layout that names the image as the manifest does, and placed at
/// [`files::image_archive`].
pub fn images(m: &Manifest, arch: Arch, ctx: &Ctx) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    for (i, img) in m.spec.images.iter().enumerate() {
        let what = format!("spec.images[{i}] ({}, {arch})", img.name);
        let url = expand(&img.url, "", arch);
        let expected = img.sha256[&arch];
        fetch_pinned(&url, &expected, ctx, &what)?;
        let blob = ctx.cache.blob(&expected);
        crate::oci::check_names(&blob, &img.name).map_err(|e| anyhow!("{what}: {url}: {e}"))?;
        let size = std::fs::metadata(&blob)
            .with_context(|| format!("{what}: cache entry vanished"))?
            .len();
        let mut record = file_record(&files::image_archive(&img.name), Mode::FILE, size, expected, "");
        record.component = None;
        out.push(Planned {
            record,
            content: Content::File(blob),
        });
    }
    Ok(out)
}

fn fetch_deb(
    apt: &Apt,
    package: &str,
    version: &str,
    expected: Sha256,
    arch: Arch,
    ctx: &Ctx,
    what: &str,
) -> Result<()> {
    if ctx.offline {
        bail!("{what}: apt package {package}={version} is not in the cache and --offline was given");
    }
    let dl = tempfile::tempdir_in(ctx.cache.tmp_dir())?;
    let deb = apt.download(package, Some(version), arch, dl.path(), what)?;
    let f = std::fs::File::open(&deb).with_context(|| format!("cannot open {}", deb.display()))?;
    let tmp = ctx.cache.temp()?;
    let mut w = kiln_bundle::digest::HashingWriter::new(tmp.as_file());
    std::io::copy(&mut std::io::BufReader::new(f), &mut w).with_context(|| format!("cannot copy {}", deb.display()))?;
    let (actual, _, _) = w.finish();
    if actual != expected {
        return Err(crate::fetch::mismatch(
            what,
            &format!("apt package {package}={version}"),
            &expected,
            &actual,
        ));
    }
    ctx.cache.commit(tmp, &actual)?;
    Ok(())
}

/// A file to be written into the bundle.
pub struct Planned {
    pub record: FileRecord,
    pub content: Content,
}

/// Apply the install rules of every component, plus the manifest's extra files.
pub fn install(m: &Manifest, resolved: &[Resolved], ctx: &Ctx) -> Result<Vec<Planned>> {
    let mut out: BTreeMap<String, Planned> = BTreeMap::new();
    let mut add = |p: Planned, by: &str| -> Result<()> {
        let path = p.record.path.clone();
        if out.insert(path.clone(), p).is_some() {
            bail!("{by}: `{path}` is installed twice");
        }
        Ok(())
    };
    for r in resolved {
        let c = m
            .spec
            .components
            .iter()
            .into_iter()
            .find(|(n, _)| *n == r.component)
            .map(|(_, c)| c)
            .expect("resolved from this manifest");
        let what = format!("component {} ({})", Components::key(&r.component), r.arch);
        let blob = ctx.cache.blob(&r.sha256);
        if r.format == Format::Binary {
            for rule in &c.install {
                let record = file_record(
                    &rule.to,
                    rule.mode.unwrap_or(Mode::EXEC),
                    r.size,
                    r.sha256,
                    &r.component,
                );
                add(
                    Planned {
                        record,
                        content: Content::File(blob.clone()),
                    },
                    &what,
                )?;
            }
            continue;
        }
        let members = archive::members(ctx.cache, &r.sha256, &blob, r.format, &what)?;
        for (i, rule) in c.install.iter().enumerate() {
            let from = rule.from.as_deref().expect("validated: archive rules have `from`");
            let rule_at = format!("{what}: install[{i}]");
            for (to, sha256, size, member_mode) in
                select(&members, from, &rule.to).map_err(|e| anyhow!("{rule_at}: {e}"))?
            {
                let mode = rule.mode.unwrap_or(if member_mode & 0o111 != 0 {
                    Mode::EXEC
                } else {
                    Mode::FILE
                });
                let record = file_record(&to, mode, size, sha256, &r.component);
                add(
                    Planned {
                        record,
                        content: Content::File(ctx.cache.blob(&sha256)),
                    },
                    &rule_at,
                )?;
            }
        }
    }
    for (i, f) in m.spec.files.iter().enumerate() {
        let bytes = match (&f.content, &f.from) {
            (Some(c), _) => c.clone().into_bytes(),
            (None, Some(from)) => {
                let p = ctx.base.join(from);
                std::fs::read(&p).with_context(|| format!("spec.files[{i}]: cannot read {}", p.display()))?
            }
            (None, None) => unreachable!("validated manifest"),
        };
        let mut record = file_record(
            &f.path,
            f.mode.unwrap_or(Mode::FILE),
            bytes.len() as u64,
            Sha256::of(&bytes),
            "",
        );
        record.component = None;
        add(
            Planned {
                record,
                content: Content::Bytes(bytes),
            },
            &format!("spec.files[{i}]"),
        )?;
    }
    for ca in crate::render::registries::ca_files(&m.spec.config.containerd) {
        let p = ctx.base.join(&ca.from);
        let bytes = std::fs::read(&p).with_context(|| format!("{}: cannot read {}", ca.field, p.display()))?;
        if !String::from_utf8_lossy(&bytes).contains("-----BEGIN CERTIFICATE-----") {
            bail!("{}: {} is not a PEM certificate", ca.field, p.display());
        }
        let mut record = file_record(&ca.path, Mode::FILE, bytes.len() as u64, Sha256::of(&bytes), "");
        record.component = None;
        add(
            Planned {
                record,
                content: Content::Bytes(bytes),
            },
            &ca.field,
        )?;
    }
    Ok(out.into_values().collect())
}

fn file_record(path: &str, mode: Mode, size: u64, sha256: Sha256, component: &str) -> FileRecord {
    FileRecord {
        path: path.to_string(),
        kind: EntryKind::File,
        mode,
        size,
        sha256: Some(sha256),
        target: None,
        component: Some(component.to_string()),
    }
}

/// The files an install rule selects: `(bundle path, digest, size, member mode)`.
fn select(members: &Members, from: &str, to: &str) -> Result<Vec<(String, Sha256, u64, u32)>> {
    let from_norm = from.trim_start_matches("./").trim_end_matches('/');
    if !from.ends_with('/') {
        let (_, m) = members
            .resolve(from_norm)
            .map_err(|e| not_found(members, from_norm, &e))?;
        return match m {
            Member::File { sha256, size, mode } => Ok(vec![(to.to_string(), *sha256, *size, *mode)]),
            _ => Err(anyhow!("member `{from_norm}` is not a regular file")),
        };
    }
    let prefix = if from_norm.is_empty() {
        String::new()
    } else {
        format!("{from_norm}/")
    };
    let mut out = Vec::new();
    for (path, m) in &members.members {
        let Some(rel) = path.strip_prefix(&prefix) else {
            continue;
        };
        if matches!(m, Member::Dir) {
            continue;
        }
        let (_, target) = members.resolve(path)?;
        if let Member::File { sha256, size, mode } = target {
            out.push((format!("{to}{rel}"), *sha256, *size, *mode));
        }
    }
    if out.is_empty() {
        bail!("no files under `{from}` in the artifact");
    }
    Ok(out)
}

fn not_found(members: &Members, wanted: &str, err: &Error) -> Error {
    let base = wanted.rsplit('/').next().unwrap_or(wanted);
    let similar: Vec<&str> = members
        .members
        .iter()
        .filter(|(p, m)| matches!(m, Member::File { .. }) && p.rsplit('/').next() == Some(base))
        .map(|(p, _)| p.as_str())
        .take(5)
        .collect();
    if similar.is_empty() {
        anyhow!("{err} in the artifact")
    } else {
        anyhow!("{err} in the artifact (did you mean {}?)", similar.join(", "))
    }
}
