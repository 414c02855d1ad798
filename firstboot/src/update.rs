//! Bundle updates in place: a bundle delivered to a running node is verified (digest, and
//! signature when the node configuration sets `bundlePublicKey`) before anything is written, then
//! staged under `/var/lib/kiln/staged/<version>/` and put on **trial** in
//! `/var/lib/kiln/selection.json`. The next activation (at once, or at the next boot) takes the
//! trial bundle and uses up its one try before it changes anything; the health check settles it:
//! healthy, it becomes the bundle every later boot activates; unhealthy, the links flip back to
//! the previous bundle (kept until then) and the trial is dropped. A boot that never reaches the
//! health check (a hang, a kernel panic) leaves a trial with no try left, and the boot after it
//! falls back to the last bundle proven healthy: kiln's own boot counting, for the bundle, since
//! systemd's counts boot loader entries, not what a unit activates.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use kiln_bundle::layout::root::{SELECTION, STAGED};
use kiln_bundle::verity::verity_path;
use kiln_bundle::writer::{minisig_path, sha256_path};

use crate::activate::{self, find_bundle, Options, Outcome};
use crate::state::{State, Status};
use crate::system::System;

/// `/var/lib/kiln/selection.json`. Absent: activations take the baked bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    /// The bundle last proven healthy by an update (relative to the root); absent: the baked one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    /// A staged bundle the next activation tries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
}

/// A staged bundle on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trial {
    pub version: String,
    /// The bundle file, relative to the root.
    pub bundle: String,
    /// Activations that may still take it: 1 when staged, 0 once one has started. A trial found
    /// with none left was taken by a boot that never reached its health check.
    pub tries_left: u32,
}

impl Selection {
    pub fn load(root: &Path) -> Result<Selection> {
        let p = root.join(SELECTION);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is not a bundle selection", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Selection::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    fn write(&self, root: &Path) -> Result<()> {
        let p = root.join(SELECTION);
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        fs::create_dir_all(p.parent().expect("a parent")).with_context(|| format!("cannot create {}", p.display()))?;
        kiln_bundle::atomic::write_file(&p, &bytes, 0o644)?;
        Ok(())
    }
}

/// The bundle file an activation takes. A trial with a try left uses
/// it up (written before anything else changes); one with none left is dropped, said on stderr,
/// and the last bundle proven healthy is taken.
pub(crate) fn pick(root: &Path) -> Result<PathBuf> {
    let mut sel = Selection::load(root)?;
    if let Some(t) = sel.trial.clone() {
        if t.tries_left > 0 {
            sel.trial = Some(Trial {
                tries_left: t.tries_left - 1,
                ..t.clone()
            });
            sel.write(root)?;
            return Ok(root.join(&t.bundle));
        }
        sel.trial = None;
        sel.write(root)?;
        drop_staged(root, &sel, &t.version)?;
        eprintln!(
            "kiln-firstboot: bundle {} was activated by an earlier boot that never reached its health check; falling back to the last healthy bundle",
            t.version
        );
    }
    match &sel.bundle {
        Some(b) => {
            let p = root.join(b);
            if !p.is_file() {
                bail!("the selected bundle /{b} (in /{SELECTION}) does not exist");
            }
            Ok(p)
        }
        None => find_bundle(root),
    }
}

/// After the health check of `version`: a healthy trial becomes the selected bundle (and staged
/// bundles nothing selects any more are removed); a failed one is dropped with its staged files.
/// True when `version` was on trial.
pub(crate) fn settle(root: &Path, version: &str, healthy: bool) -> Result<bool> {
    let mut sel = Selection::load(root)?;
    let Some(t) = sel.trial.clone().filter(|t| t.version == version) else {
        return Ok(false);
    };
    sel.trial = None;
    if healthy {
        sel.bundle = Some(t.bundle.clone());
    }
    sel.write(root)?;
    let dir = root.join(STAGED);
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let kept = sel
            .bundle
            .as_deref()
            .is_some_and(|b| Path::new(b).starts_with(Path::new(STAGED).join(&name)));
        if !kept {
            activate::remove_if_exists(&e.path())?;
        }
    }
    Ok(true)
}

/// Remove the staged directory of `version` unless the selection still takes it.
fn drop_staged(root: &Path, sel: &Selection, version: &str) -> Result<()> {
    let rel = Path::new(STAGED).join(version);
    if sel.bundle.as_deref().is_some_and(|b| Path::new(b).starts_with(&rel)) {
        return Ok(());
    }
    activate::remove_if_exists(&root.join(rel))
}

/// When a staged bundle is activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum At {
    /// Now, health-gated, with rollback.
    #[default]
    Now,
    /// By the next boot's activation.
    NextBoot,
}

/// How an update ended (the failures are errors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "result", rename_all_fields = "camelCase")]
pub enum Updated {
    /// The bundle is the active one already.
    AlreadyActive { version: String },
    /// Staged; the next boot activates it.
    Staged { version: String, staged: String },
    /// Active and healthy, replacing `previous`.
    Activated {
        version: String,
        staged: String,
        previous: String,
    },
    /// Stopped by `stop_after` (crash-safety tests).
    Stopped { version: String },
}

/// Deliver `bundle` (with its `.sha256`, and `.minisig` and `.verity` where it has them, beside
/// it) to this node: verify, stage, and activate at once or at the next boot.
pub fn update(root: &Path, sys: &mut dyn System, bundle: &Path, at: At, opts: &Options) -> Result<Updated> {
    let active = State::load(root)?.ok_or_else(|| {
        anyhow!(
            "this node has no active bundle to fall back to ({} does not exist): activate the baked bundle first",
            root.join(crate::state::STATE).display()
        )
    })?;
    if active.result == Status::PendingHealth {
        bail!(
            "bundle {} is still waiting for its health check; update once `kiln-firstboot status` says ok or failed",
            active.version
        );
    }
    let cfg = crate::datasource::gather(root, &opts.endpoints, sys)?;
    let index =
        kiln_bundle::reader::read_index(bundle).with_context(|| format!("refusing bundle {}", bundle.display()))?;
    let version = index.version.clone();
    activate::check_version_name(&version)?;
    let expected = activate::read_expected_digest(bundle)?;
    // First: a digest beside the bundle means nothing until the bundle matches it.
    activate::verify_raw(bundle, expected, &cfg)?;
    if active.result == Status::Ok && active.digest == expected.hex() {
        return Ok(Updated::AlreadyActive { version });
    }
    if active.version == version {
        bail!(
            "bundle {} carries version {version}, which is active with another digest ({}); an update needs a new version",
            bundle.display(),
            &active.digest[..12.min(active.digest.len())]
        );
    }
    let rel = stage_trial(root, bundle, &version)?;
    let shown = format!("/{rel}");
    if at == At::NextBoot {
        return Ok(Updated::Staged { version, staged: shown });
    }
    let now = Options {
        phase: activate::Phase::All,
        ..opts.clone()
    };
    match activate::run(root, sys, &now) {
        Ok(Outcome::Stopped { .. }) => Ok(Updated::Stopped { version }),
        Ok(_) => Ok(Updated::Activated {
            version,
            staged: shown,
            previous: active.version,
        }),
        // A failed health check has rolled back and dropped the trial already.
        Err(e) if Selection::load(root)?.trial.is_none() => Err(e),
        // Anything else stopped it before the health check: drop the trial and activate what was
        // active again, so the node is not left between two bundles.
        Err(e) => {
            settle(root, &version, false)?;
            let again = activate::run(root, sys, &now);
            match again {
                Ok(_) => Err(e.context(format!(
                    "bundle {version} was not activated; {} is active again",
                    active.version
                ))),
                Err(e2) => Err(e.context(format!(
                    "bundle {version} was not activated, and reactivating {} failed too: {e2:#}",
                    active.version
                ))),
            }
        }
    }
}

/// Stage `bundle` (verified already) and put it on trial with one try; its path relative to the
/// root.
pub(crate) fn stage_trial(root: &Path, bundle: &Path, version: &str) -> Result<String> {
    let staged = stage(root, bundle, version)?;
    let rel = staged
        .strip_prefix(root)
        .expect("staged under the root")
        .display()
        .to_string();
    Selection {
        trial: Some(Trial {
            version: version.to_string(),
            bundle: rel.clone(),
            tries_left: 1,
        }),
        ..Selection::load(root)?
    }
    .write(root)?;
    Ok(rel)
}

/// Copy `bundle` and what is beside it into `/var/lib/kiln/staged/<version>/` (through a
/// `.partial` directory renamed into place); a directory already holding the same bundle is kept.
fn stage(root: &Path, bundle: &Path, version: &str) -> Result<PathBuf> {
    let name = bundle
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", bundle.display()))?;
    let dir = root.join(STAGED);
    let dest = dir.join(version);
    let staged = dest.join(name);
    let sidecars = [sha256_path(bundle), minisig_path(bundle), verity_path(bundle)];
    if same_file(bundle, &staged)? && sidecars.iter().all(|s| same_beside(s, &dest).unwrap_or(false)) {
        return Ok(staged);
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let partial = dir.join(format!("{version}.partial"));
    activate::remove_if_exists(&partial)?;
    fs::create_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    for src in std::iter::once(bundle.to_path_buf()).chain(sidecars) {
        if !src.exists() {
            continue;
        }
        let to = partial.join(src.file_name().expect("a file name"));
        fs::copy(&src, &to).with_context(|| format!("cannot copy {} to {}", src.display(), to.display()))?;
        // The copy keeps the delivered file's mtime: an activation identifies its bundle file by
        // path, size and mtime, and the same delivery staged twice is the same bundle.
        let modified = fs::metadata(&src)
            .and_then(|m| m.modified())
            .with_context(|| format!("cannot stat {}", src.display()))?;
        let f = fs::File::options()
            .write(true)
            .open(&to)
            .with_context(|| format!("cannot open {}", to.display()))?;
        f.set_modified(modified)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot sync {}", to.display()))?;
    }
    activate::remove_if_exists(&dest)?;
    fs::rename(&partial, &dest)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), dest.display()))?;
    kiln_bundle::atomic::sync_dir(&dir)?;
    Ok(staged)
}

/// Whether `a` and `b` hold the same bytes (false when `b` does not exist).
fn same_file(a: &Path, b: &Path) -> Result<bool> {
    if !b.is_file() {
        return Ok(false);
    }
    let (ha, _) = kiln_bundle::digest::hash_file(a)?;
    let (hb, _) = kiln_bundle::digest::hash_file(b)?;
    Ok(ha == hb)
}

/// Whether the sidecar `src` is in `dir` as it is beside the bundle (both absent counts).
fn same_beside(src: &Path, dir: &Path) -> Result<bool> {
    let there = dir.join(src.file_name().expect("a file name"));
    match (src.exists(), there.exists()) {
        (false, false) => Ok(true),
        (true, true) => same_file(src, &there),
        _ => Ok(false),
    }
}
