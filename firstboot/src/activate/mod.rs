//! Activation of the baked bundle (or one `kiln-firstboot update` staged, see [`crate::update`]),
//! in steps, each crash-safe and idempotent:
//!
//! 1. `config`: gather the node configuration (see [`crate::datasource`]);
//! 2. `verify`: find the baked bundle, verify its outer digest, signature and every file
//!    while unpacking it into `/var/lib/kiln/bundles/<version>.partial`, fsynced; in verity mode
//!    (see [`verity`]), verify the bundle file's digest and signature only, and mount its verity
//!    image read-only at `/var/lib/kiln/bundles/<version>`;
//! 3. `rename`: rename the unpacked tree to `<version>` (skipped when that directory holds the same
//!    index, and in verity mode);
//! 4. `render`: substitute the node's values into the bundle's templates, into
//!    `/var/lib/kiln/rendered/<version>.<config digest>` (secrets 0600);
//! 5. `flip`: point `/var/lib/kiln/node` and `/var/lib/kiln/current` at them, by atomic renames;
//! 6. `install`: units, CNI configuration, sysctl and modules-load files, crictl.yaml, tool links
//!    and `write_files`, each written only if it differs;
//! 7. `kernel`: load the modules and apply the sysctls;
//! 8. `swap`: refuse to go on if swap is on and the kubelet does not allow it;
//! 9. `services`: daemon-reload, then enable and start (or restart, if their units changed)
//!    containerd, then kubelet; a service that fails to start fails the health check;
//! 10. `health`: containerd answers on its socket; kubelet's healthz answers `ok`;
//! 11. `state`: write `/var/lib/kiln/state.json`.
//!
//! A run killed at any point leaves a state the next run finishes from. A re-run with the same
//! bundle and configuration, with the services up, changes nothing. When a previously active
//! bundle exists and the new one fails its health check, the links flip back and the old services
//! restart.

mod health;
pub mod install;
mod links;
mod steps;
pub mod unpack;
mod values;
mod verity;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::index::Index;
use kiln_bundle::reader::{read_bundle, Expect};
use kiln_bundle::signature::{self, PublicKey, Signature};
use kiln_bundle::writer::{minisig_path, read_sha256_beside, sha256_path};

use crate::config::NodeConfig;
use crate::datasource::{self};
use crate::state::{BundleId, Mode, NodeJoin, State, Status};
use crate::system::System;

pub use kiln_bundle::layout::root::{BAKED, BUNDLES, CURRENT, NODE, RENDERED};

pub use health::*;
pub use links::*;
pub use steps::*;
pub use values::*;

/// The single bundle baked into the image.
pub fn find_bundle(root: &Path) -> Result<PathBuf> {
    let dir = root.join(BAKED);
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("no baked bundle: cannot read /{BAKED}"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".kiln.tar.zst"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no bundle in /{BAKED}: the image was built without one"),
        n => bail!("{n} bundles in /{BAKED}; an image carries exactly one"),
    }
}

fn bundle_id(root: &Path, path: &Path) -> Result<BundleId> {
    let md = fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let shown = format!("/{}", path.strip_prefix(root).unwrap_or(path).display());
    Ok(BundleId {
        path: shown,
        size: md.size(),
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
    })
}

/// Activate the baked bundle under `root`.
pub fn run(root: &Path, sys: &mut dyn System, opts: &Options) -> Result<Outcome> {
    if opts.phase == Phase::Health {
        return health_phase(root, sys, opts);
    }
    let mut t = Timer {
        steps: Vec::new(),
        started: Instant::now(),
        stop_after: opts.stop_after,
    };
    let state_before = State::load(root)?;

    let cfg = datasource::gather(root, &opts.endpoints, sys)?;
    // The baked bundle, or one delivered by `kiln-firstboot update` (see [`crate::update`]).
    let bundle = crate::update::pick(root)?;
    let id = bundle_id(root, &bundle)?;
    let config_digest = cfg.digest();
    // Active in another mode than the one asked for is not "already active".
    let mode_as_asked = state_before.as_ref().is_some_and(|s| match opts.mode {
        ModeRequest::Auto => true,
        ModeRequest::Verity => s.mode == Mode::Verity,
        ModeRequest::Unpack => s.mode == Mode::Unpack,
    });
    if let Some(version) = already_active(root, &state_before, &id, &config_digest, sys).filter(|_| mode_as_asked) {
        return Ok(Outcome::AlreadyActive { version });
    }
    if t.done(Step::Config) {
        return Ok(Outcome::Stopped { after: Step::Config });
    }

    let index = kiln_bundle::reader::read_index(&bundle)?;
    let version = index.version.clone();
    check_version_name(&version)?;
    let chosen = verity::choose(&bundle, &index, sys, opts.mode)?;
    let bundles = root.join(BUNDLES);
    fs::create_dir_all(&bundles).with_context(|| format!("cannot create {}", bundles.display()))?;
    let dest = bundles.join(&version);
    let partial = bundles.join(format!("{version}.partial"));
    remove_if_exists(&partial)?;
    let expected = read_expected_digest(&bundle)?;
    let same_bundle = state_before.as_ref().is_some_and(|s| s.digest == expected.hex());
    match &chosen.image {
        // Verity: verify the bundle file (its index carries the root hash), then mount the image.
        Some(image) => {
            // Mounted already by a run that stopped before writing its state: verified again, not
            // mounted again.
            let mounted = verity::mounted(&dest, &index, sys);
            if !(same_bundle && mounted) {
                verify_raw(&bundle, expected, &cfg)?;
                if !mounted {
                    verity::mount(image, &index, &dest, sys)?;
                }
            }
            if t.done(Step::Verify) {
                return Ok(Outcome::Stopped { after: Step::Verify });
            }
        }
        // Unpack: verify and unpack in one pass, then rename into place.
        None => {
            if sys.is_mounted(&dest) {
                bail!(
                    "{} is a mounted verity image; a node cannot switch bundle {version} to unpack mode without a reboot",
                    dest.display()
                );
            }
            let reuse = same_bundle && holds_index(&dest, &index);
            if !reuse {
                verify_unpack(&bundle, &partial, expected, &cfg)?;
            }
            if t.done(Step::Verify) {
                return Ok(Outcome::Stopped { after: Step::Verify });
            }
            if !reuse {
                remove_if_exists(&dest)?;
                fs::rename(&partial, &dest)
                    .with_context(|| format!("cannot rename {} to {}", partial.display(), dest.display()))?;
                kiln_bundle::atomic::sync_dir(&bundles)?;
            }
        }
    }
    if t.done(Step::Rename) {
        return Ok(Outcome::Stopped { after: Step::Rename });
    }

    let rendered_name = format!("{version}.{}", &config_digest[..12]);
    install::render(root, &dest, &index, &cfg, &rendered_name, &expected)?;
    if t.done(Step::Render) {
        return Ok(Outcome::Stopped { after: Step::Render });
    }

    let previous = links(root);
    flip(
        root,
        &format!("bundles/{version}"),
        &format!("rendered/{rendered_name}"),
    )?;
    if t.done(Step::Flip) {
        return Ok(Outcome::Stopped { after: Step::Flip });
    }

    let changed = install::install(root, &index, &cfg)?;
    if t.done(Step::Install) {
        return Ok(Outcome::Stopped { after: Step::Install });
    }
    install::kernel(root, sys, cfg.node.hostname.as_deref())?;
    if t.done(Step::Kernel) {
        return Ok(Outcome::Stopped { after: Step::Kernel });
    }
    if index.has_kubelet() {
        install::check_swap(root)?;
    }
    if t.done(Step::Swap) {
        return Ok(Outcome::Stopped { after: Step::Swap });
    }
    let version_changed = previous
        .as_ref()
        .is_some_and(|(cur, _)| *cur != format!("bundles/{version}"));
    // A service that fails to start is a failed health check: it rolls back like one.
    let services_at = now_rfc3339();
    let started = services(sys, &index, changed || version_changed, opts.phase == Phase::Activate);
    // A kubelet (re)started in this boot: only a Ready it reports from now on counts.
    let since = matches!(started, Ok(true)).then_some(services_at);
    let started = started.map(drop);
    if t.done(Step::Services) && started.is_ok() {
        return Ok(Outcome::Stopped { after: Step::Services });
    }

    let mut state = State {
        version: version.clone(),
        digest: expected.hex(),
        bundle: id,
        config_digest,
        rendered: rendered_name,
        result: Status::Ok,
        error: None,
        previous: state_before
            .as_ref()
            .filter(|s| s.result == Status::Ok && s.version != version)
            .map(|s| (s.version.clone(), s.rendered.clone())),
        steps: Vec::new(),
        sources: cfg.sources.clone(),
        uptime_s: None,
        mode: chosen.mode,
        mode_reason: chosen.reason,
        node: if index.has_kubelet() {
            Some(NodeJoin {
                name: node_hostname(root, &cfg)?,
                timeout_s: cfg.node.join_timeout_seconds.unwrap_or(DEFAULT_JOIN_TIMEOUT_S),
                labels: bundle_labels(&version, &expected),
                since,
                kubeconfig: None,
            })
        } else {
            None
        },
    };
    if opts.phase == Phase::Activate && started.is_ok() {
        // kiln-firstboot-health.service finishes the job once the services have started.
        state.result = Status::PendingHealth;
        t.done(Step::State);
        state.steps = t.steps;
        state.write(root)?;
        return Ok(Outcome::Activated { version });
    }
    let health = started.and_then(|()| health(root, sys, &index, opts.health_timeout, state.node.as_ref()));
    if let Err(e) = health {
        let msg = format!("{e:#}");
        state.result = Status::Failed;
        state.error = Some(msg.clone());
        let rolled = rollback(root, sys, &state_before, &version)?;
        crate::update::settle(root, &version, false)?;
        t.done(Step::Health);
        state.steps = t.steps;
        state.write(root)?;
        match rolled {
            Some(prev) => bail!("bundle {version} failed its health check ({msg}); rolled back to {prev}"),
            None => bail!("bundle {version} failed its health check: {msg}"),
        }
    }
    crate::update::settle(root, &version, true)?;
    if t.done(Step::Health) {
        return Ok(Outcome::Stopped { after: Step::Health });
    }
    t.done(Step::State);
    state.steps = t.steps;
    state.write(root)?;
    Ok(Outcome::Activated { version })
}

/// Now, to the second, as the API server writes times.
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    kiln_bundle::time::rfc3339(secs)
}

/// Whether the bundle directory `dir` holds exactly `index` in its `kiln-bundle.json`.
fn holds_index(dir: &Path, index: &Index) -> bool {
    fs::read(dir.join(kiln_bundle::index::INDEX_NAME))
        .ok()
        .and_then(|b| Index::from_json(&b, "").ok())
        .is_some_and(|i| i == *index)
}

pub(crate) fn check_version_name(version: &str) -> Result<()> {
    if version.is_empty() || version.contains('/') || version.starts_with('.') || version.ends_with(".partial") {
        bail!("the bundle's version `{version}` cannot name a directory");
    }
    Ok(())
}

pub(crate) fn remove_if_exists(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display())),
        Ok(_) => fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display())),
        Err(_) => Ok(()),
    }
}

pub(crate) fn read_expected_digest(bundle: &Path) -> Result<Sha256> {
    read_sha256_beside(bundle)?.ok_or_else(|| {
        anyhow!(
            "cannot read {} (the bundle's digest is baked beside it)",
            sha256_path(bundle).display()
        )
    })
}

/// The node configuration's public key, if it sets one, and the signature beside the bundle.
fn signature_of(bundle: &Path, cfg: &NodeConfig) -> Result<Option<(PublicKey, Signature)>> {
    let Some(k) = cfg.node.bundle_public_key.as_deref() else {
        return Ok(None);
    };
    let key = signature::parse_public_key(k).map_err(|e| anyhow!("bundlePublicKey: not a minisign public key: {e}"))?;
    let sig = signature::load_signature(&minisig_path(bundle))?;
    Ok(Some((key, sig)))
}

/// Verity mode's check of the bundle file: its digest and signature, which cover the index and the
/// root hash in it. The files are read from the image, each block checked as it is read.
pub(crate) fn verify_raw(bundle: &Path, expected: Sha256, cfg: &NodeConfig) -> Result<()> {
    let signed = signature_of(bundle, cfg)?;
    let expect = Expect {
        sha256: Some(expected),
        signature: signed.as_ref().map(|(k, s)| (k, s)),
    };
    kiln_bundle::reader::verify_raw(bundle, &expect)
        .map(drop)
        .with_context(|| format!("refusing bundle {}", bundle.display()))
}

fn verify_unpack(bundle: &Path, partial: &Path, expected: Sha256, cfg: &NodeConfig) -> Result<()> {
    let signed = signature_of(bundle, cfg)?;
    let expect = Expect {
        sha256: Some(expected),
        signature: signed.as_ref().map(|(k, s)| (k, s)),
    };
    let mut sink = unpack::Unpack::new(partial)?;
    let f = fs::File::open(bundle).with_context(|| format!("cannot open {}", bundle.display()))?;
    let report = read_bundle(
        std::io::BufReader::with_capacity(1 << 20, f),
        &bundle.display().to_string(),
        &expect,
        &mut sink,
    );
    let outcome = report.map_err(anyhow::Error::from).and_then(|r| {
        r.into_result(&bundle.display().to_string())
            .map_err(anyhow::Error::from)
    });
    if let Err(e) = outcome {
        let _ = fs::remove_dir_all(partial);
        return Err(e.context(format!("refusing bundle {}", bundle.display())));
    }
    sink.finish()?;
    Ok(())
}

/// Enable and start (or restart) the bundle's services; true when kubelet was started or
/// restarted here (not only queued).
fn services(sys: &mut dyn System, index: &Index, restart: bool, queue_only: bool) -> Result<bool> {
    sys.daemon_reload()?;
    let mut units = vec![kiln_bundle::layout::units::CONTAINERD];
    if index.file(kiln_bundle::layout::files::IMAGES_UNIT).is_some() {
        units.push(kiln_bundle::layout::units::IMAGES);
    }
    if index.has_kubelet() {
        units.push(kiln_bundle::layout::units::KUBELET);
    }
    if index.file(kiln_bundle::layout::files::KUBE_PROXY_UNIT).is_some() {
        units.push(kiln_bundle::layout::units::KUBE_PROXY);
    }
    let mut kubelet_started = false;
    for unit in units {
        sys.enable(unit)?;
        let started = if sys.is_active(unit) {
            if restart {
                sys.restart(unit)?;
            }
            restart
        } else if queue_only {
            sys.queue_start(unit)?;
            false
        } else {
            sys.start(unit)?;
            true
        };
        kubelet_started |= started && unit == kiln_bundle::layout::units::KUBELET;
    }
    Ok(kubelet_started)
}
