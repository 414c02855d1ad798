//! Activation of the baked bundle (or one `kiln-firstboot update` staged, see [`crate::update`]),
//! in steps, each crash-safe and idempotent:
//!
//! 1. `config`: gather the node configuration (see [`crate::datasource`]), pick the bundle and read
//!    its index and digest, and choose the mode; nothing is written;
//! 2. `verify`: verify the bundle's outer digest, signature and every file
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

/// Activate the baked bundle under `root`: [`Activation::prepare`], then every step of
/// [`Step::ALL`] in order, each one method of [`Activation`] and each a point where `stop_after`
/// can stop the run.
pub fn run(root: &Path, sys: &mut dyn System, opts: &Options) -> Result<Outcome> {
    if opts.phase == Phase::Health {
        return health_phase(root, sys, opts);
    }
    let mut a = match Activation::prepare(root, sys, opts)? {
        Prepared::AlreadyActive(version) => return Ok(Outcome::AlreadyActive { version }),
        Prepared::Ready(a) => a,
    };
    for &step in Step::ALL {
        match a.step(step, sys)? {
            Next::Ran => {
                if a.timer.done(step) {
                    return Ok(Outcome::Stopped { after: step });
                }
            }
            Next::RanFailing => {
                a.timer.done(step);
            }
            Next::Skipped | Next::Recorded => {}
        }
    }
    Ok(Outcome::Activated { version: a.version })
}

/// What a step tells the loop in [`run`].
enum Next {
    /// Done: its time is recorded, and the run stops here if asked to.
    Ran,
    /// Failed in a way a later step handles (a service that did not start fails the health check):
    /// its time is recorded, but the run never stops here, since the failure must be handled.
    RanFailing,
    /// Nothing to do in this phase: no time is recorded.
    Skipped,
    /// Done, its time recorded by the step itself (it wrote the times into the state).
    Recorded,
}

enum Prepared<'a> {
    /// Everything is in place already: nothing is changed.
    AlreadyActive(String),
    Ready(Box<Activation<'a>>),
}

/// One activation: what [`Activation::prepare`] read, and what each step found out for the ones
/// after it.
struct Activation<'a> {
    root: &'a Path,
    opts: &'a Options,
    timer: Timer,
    /// The state the previous activation left, if any.
    before: Option<State>,
    cfg: NodeConfig,
    /// The bundle file and its identity (path, size, mtime).
    bundle: PathBuf,
    id: BundleId,
    config_digest: String,
    index: Index,
    version: String,
    chosen: verity::Chosen,
    /// The bundle's digest, baked beside it.
    expected: Sha256,
    bundles: PathBuf,
    /// `/var/lib/kiln/bundles/<version>` and its `.partial` sibling.
    dest: PathBuf,
    partial: PathBuf,
    /// `<version>.<config digest>`, the rendered directory's name.
    rendered: String,
    /// Found by `verify`: the bundle is unpacked at `dest` already, so `rename` has nothing to do.
    reuse: bool,
    /// Found by `flip`: where the links pointed before.
    previous: Option<(String, String)>,
    /// Found by `install`: a file the services read changed.
    changed: bool,
    /// Found by `services`: why a service did not start; `health` reports it and rolls back.
    start_failure: Option<anyhow::Error>,
    /// Found by `services`: when kubelet was (re)started in this run; only a Ready it reports
    /// from then on counts.
    since: Option<String>,
}

impl<'a> Activation<'a> {
    /// The `config` step's work, done before the loop since it decides whether anything runs:
    /// gather the node configuration, pick the bundle, and read what it says of itself (its
    /// index, its digest, the mode it can run in). Nothing is written.
    fn prepare(root: &'a Path, sys: &mut dyn System, opts: &'a Options) -> Result<Prepared<'a>> {
        let timer = Timer {
            steps: Vec::new(),
            started: Instant::now(),
            stop_after: opts.stop_after,
        };
        let before = State::load(root)?;
        let cfg = datasource::gather(root, &opts.endpoints, sys)?;
        // The baked bundle, or one delivered by `kiln-firstboot update` (see [`crate::update`]).
        let bundle = crate::update::pick(root)?;
        let id = bundle_id(root, &bundle)?;
        let config_digest = cfg.digest();
        // Active in another mode than the one asked for is not "already active".
        let mode_as_asked = before.as_ref().is_some_and(|s| match opts.mode {
            ModeRequest::Auto => true,
            ModeRequest::Verity => s.mode == Mode::Verity,
            ModeRequest::Unpack => s.mode == Mode::Unpack,
        });
        if let Some(version) = already_active(root, &before, &id, &config_digest, sys).filter(|_| mode_as_asked) {
            return Ok(Prepared::AlreadyActive(version));
        }
        let index = kiln_bundle::reader::read_index(&bundle)?;
        let version = index.version.clone();
        check_version_name(&version)?;
        let chosen = verity::choose(&bundle, &index, sys, opts.mode)?;
        let expected = read_expected_digest(&bundle)?;
        let bundles = root.join(BUNDLES);
        Ok(Prepared::Ready(Box::new(Activation {
            root,
            opts,
            timer,
            before,
            dest: bundles.join(&version),
            partial: bundles.join(format!("{version}.partial")),
            rendered: format!("{version}.{}", &config_digest[..12]),
            bundles,
            cfg,
            bundle,
            id,
            config_digest,
            index,
            version,
            chosen,
            expected,
            reuse: false,
            previous: None,
            changed: false,
            start_failure: None,
            since: None,
        })))
    }

    fn step(&mut self, step: Step, sys: &mut dyn System) -> Result<Next> {
        let root = self.root;
        match step {
            // Done by `prepare`.
            Step::Config => {}
            Step::Verify => self.verify(sys)?,
            Step::Rename => self.rename()?,
            Step::Render => install::render(root, &self.dest, &self.index, &self.cfg, &self.rendered, &self.expected)?,
            Step::Flip => {
                self.previous = links(root);
                flip(
                    root,
                    &format!("bundles/{}", self.version),
                    &format!("rendered/{}", self.rendered),
                )?;
            }
            Step::Install => self.changed = install::install(root, &self.index, &self.cfg)?,
            Step::Kernel => install::kernel(root, sys, self.cfg.node.hostname.as_deref())?,
            Step::Swap => {
                if self.index.has_kubelet() {
                    install::check_swap(root)?;
                }
            }
            Step::Services => return Ok(self.services(sys)),
            Step::Health => return self.health(sys),
            Step::State => return self.write_state(),
        }
        Ok(Next::Ran)
    }

    /// Verity: verify the bundle file (its index carries the root hash), then mount the image.
    /// Unpack: verify and unpack in one pass into `<version>.partial`.
    fn verify(&mut self, sys: &mut dyn System) -> Result<()> {
        fs::create_dir_all(&self.bundles).with_context(|| format!("cannot create {}", self.bundles.display()))?;
        remove_if_exists(&self.partial)?;
        let same_bundle = self.before.as_ref().is_some_and(|s| s.digest == self.expected.hex());
        let dest = &self.dest;
        match &self.chosen.image {
            Some(image) => {
                // Mounted already by a run that stopped before writing its state: verified again,
                // not mounted again.
                let mounted = verity::mounted(dest, &self.index, sys);
                if !(same_bundle && mounted) {
                    verify_raw(&self.bundle, self.expected, &self.cfg)?;
                    if !mounted {
                        verity::mount(image, &self.index, dest, sys)?;
                    }
                }
            }
            None => {
                if sys.is_mounted(dest) {
                    bail!(
                        "{} is a mounted verity image; a node cannot switch bundle {} to unpack mode without a reboot",
                        dest.display(),
                        self.version
                    );
                }
                self.reuse = same_bundle && holds_index(dest, &self.index);
                if !self.reuse {
                    verify_unpack(&self.bundle, &self.partial, self.expected, &self.cfg)?;
                }
            }
        }
        Ok(())
    }

    /// Unpack mode: rename the verified tree into place.
    fn rename(&self) -> Result<()> {
        if self.chosen.image.is_some() || self.reuse {
            return Ok(());
        }
        let (partial, dest) = (&self.partial, &self.dest);
        remove_if_exists(dest)?;
        fs::rename(partial, dest)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), dest.display()))?;
        kiln_bundle::atomic::sync_dir(&self.bundles)?;
        Ok(())
    }

    fn services(&mut self, sys: &mut dyn System) -> Next {
        let version_changed = self
            .previous
            .as_ref()
            .is_some_and(|(cur, _)| *cur != format!("bundles/{}", self.version));
        let at = now_rfc3339();
        let queue_only = self.opts.phase == Phase::Activate;
        match services(sys, &self.index, self.changed || version_changed, queue_only) {
            Ok(kubelet_started) => {
                self.since = kubelet_started.then_some(at);
                Next::Ran
            }
            // A service that fails to start is a failed health check: it rolls back like one.
            Err(e) => {
                self.start_failure = Some(e);
                Next::RanFailing
            }
        }
    }

    /// Check the services' health; when it fails, roll back, write the failed state and fail.
    fn health(&mut self, sys: &mut dyn System) -> Result<Next> {
        if self.opts.phase == Phase::Activate && self.start_failure.is_none() {
            // kiln-firstboot-health.service checks them once they have started.
            return Ok(Next::Skipped);
        }
        let mut state = self.state(Status::Ok)?;
        let checked = match self.start_failure.take() {
            Some(e) => Err(e),
            None => health(
                self.root,
                sys,
                &self.index,
                self.opts.health_timeout,
                state.node.as_ref(),
            ),
        };
        let (root, version) = (self.root, &self.version);
        if let Err(e) = checked {
            let msg = format!("{e:#}");
            state.result = Status::Failed;
            state.error = Some(msg.clone());
            let rolled = rollback(root, sys, &self.before, version)?;
            crate::update::settle(root, version, false)?;
            self.timer.done(Step::Health);
            state.steps = std::mem::take(&mut self.timer.steps);
            state.write(root)?;
            match rolled {
                Some(prev) => bail!("bundle {version} failed its health check ({msg}); rolled back to {prev}"),
                None => bail!("bundle {version} failed its health check: {msg}"),
            }
        }
        crate::update::settle(root, version, true)?;
        Ok(Next::Ran)
    }

    /// Write the state, with every step's time; in the activate phase, as pending its health check.
    fn write_state(&mut self) -> Result<Next> {
        let result = match self.opts.phase {
            Phase::Activate => Status::PendingHealth,
            Phase::All | Phase::Health => Status::Ok,
        };
        let mut state = self.state(result)?;
        self.timer.done(Step::State);
        state.steps = std::mem::take(&mut self.timer.steps);
        state.write(self.root)?;
        Ok(Next::Recorded)
    }

    /// The state this activation writes, without the steps' times.
    fn state(&self, result: Status) -> Result<State> {
        let version = &self.version;
        Ok(State {
            version: version.clone(),
            digest: self.expected.hex(),
            bundle: self.id.clone(),
            config_digest: self.config_digest.clone(),
            rendered: self.rendered.clone(),
            result,
            error: None,
            previous: self
                .before
                .as_ref()
                .filter(|s| s.result == Status::Ok && s.version != *version)
                .map(|s| (s.version.clone(), s.rendered.clone())),
            steps: Vec::new(),
            sources: self.cfg.sources.clone(),
            uptime_s: None,
            mode: self.chosen.mode,
            mode_reason: self.chosen.reason.clone(),
            node: if self.index.has_kubelet() {
                Some(NodeJoin {
                    name: node_hostname(self.root, &self.cfg)?,
                    timeout_s: self.cfg.node.join_timeout_seconds.unwrap_or(DEFAULT_JOIN_TIMEOUT_S),
                    labels: bundle_labels(version, &self.expected),
                    since: self.since.clone(),
                    kubeconfig: None,
                })
            } else {
                None
            },
        })
    }
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
