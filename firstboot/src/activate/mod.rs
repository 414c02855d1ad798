//! Activation, in steps, each crash-safe and idempotent:
//!
//! 1. `config`: gather the node configuration (see [`crate::datasource`]);
//! 2. `verify-unpack`: find the baked bundle, verify its outer digest, signature and every file
//!    while unpacking it into `/var/lib/kiln/bundles/<version>.partial`, fsynced;
//! 3. `rename`: rename it to `<version>` (skipped when that directory holds the same index);
//! 4. `render`: substitute the node's values into the bundle's templates, into
//!    `/var/lib/kiln/rendered/<version>.<config digest>` (secrets 0600);
//! 5. `flip`: point `/var/lib/kiln/node` and `/var/lib/kiln/current` at them, by atomic renames;
//! 6. `install`: units, CNI configuration, sysctl and modules-load files, crictl.yaml, tool links
//!    and `write_files`, each written only if it differs;
//! 7. `kernel`: load the modules and apply the sysctls;
//! 8. `swap`: refuse to go on if swap is on and the kubelet does not allow it;
//! 9. `services`: daemon-reload, then enable and start (or restart, if their units changed)
//!    containerd, then kubelet;
//! 10. `health`: containerd answers on its socket; kubelet's healthz answers `ok`;
//! 11. `state`: write `/var/lib/kiln/state.json`.
//!
//! A run killed at any point leaves a state the next run finishes from. A re-run with the same
//! bundle and configuration, with the services up, changes nothing. When a previously active
//! bundle exists and the new one fails its health check, the links flip back and the old services
//! restart.

pub mod install;
pub mod unpack;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::index::Index;
use kiln_bundle::reader::{read_bundle, Expect};
use kiln_bundle::signature;
use kiln_bundle::writer::{minisig_path, read_sha256_beside, sha256_path};

use crate::config::NodeConfig;
use crate::datasource::{self, Endpoints};
use crate::state::{BundleId, NodeJoin, State, Status, StepTiming};
use crate::system::System;

pub const BAKED: &str = "usr/lib/kiln/bundles";
pub const BUNDLES: &str = "var/lib/kiln/bundles";
pub const RENDERED: &str = "var/lib/kiln/rendered";
pub const CURRENT: &str = "var/lib/kiln/current";
pub const NODE: &str = "var/lib/kiln/node";

/// Declares the steps once: the enum, its names, and `Step::ALL` in order, so a new step cannot be
/// left out of `ALL` (the crash-at-every-step test walks it).
macro_rules! steps {
    ($($step:ident => $name:literal),+ $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Step {
            $($step),+
        }

        impl Step {
            /// Every step, in the order activation runs them.
            pub const ALL: &'static [Step] = &[$(Step::$step),+];

            pub fn name(self) -> &'static str {
                match self {
                    $(Step::$step => $name),+
                }
            }
        }
    };
}

steps! {
    Config => "config",
    VerifyUnpack => "verify-unpack",
    Rename => "rename",
    Render => "render",
    Flip => "flip",
    Install => "install",
    Kernel => "kernel",
    Swap => "swap",
    Services => "services",
    Health => "health",
    State => "state",
}

impl Step {
    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.iter().copied().find(|st| st.name() == s)
    }
}

pub struct Options {
    pub endpoints: Endpoints,
    pub health_timeout: Duration,
    /// Stop right after this step, as if the process were killed there (crash-safety tests).
    pub stop_after: Option<Step>,
    pub phase: Phase,
}

/// At boot, systemd orders containerd and kubelet after `kiln-firstboot.service`, so activation
/// cannot wait for them: it queues their start and exits, and `kiln-firstboot-health.service`
/// (ordered after them) checks their health and rolls back. Run by hand, both phases run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    All,
    Activate,
    Health,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            endpoints: Endpoints::default(),
            health_timeout: Duration::from_secs(60),
            stop_after: None,
            phase: Phase::All,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was already in place; nothing was changed.
    AlreadyActive {
        version: String,
    },
    Activated {
        version: String,
    },
    /// Stopped by `stop_after`.
    Stopped {
        after: Step,
    },
}

struct Timer {
    steps: Vec<StepTiming>,
    started: Instant,
    stop_after: Option<Step>,
}

impl Timer {
    /// Record `step` as done; true when the run must stop here.
    fn done(&mut self, step: Step) -> bool {
        self.steps.push(StepTiming {
            step: step.name().into(),
            ms: self.started.elapsed().as_secs_f64() * 1000.0,
        });
        self.started = Instant::now();
        self.stop_after == Some(step)
    }
}

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
    let bundle = find_bundle(root)?;
    let id = bundle_id(root, &bundle)?;
    let config_digest = cfg.digest();
    if let Some(version) = already_active(root, &state_before, &id, &config_digest, sys) {
        return Ok(Outcome::AlreadyActive { version });
    }
    if t.done(Step::Config) {
        return Ok(Outcome::Stopped { after: Step::Config });
    }

    // Verify and unpack in one pass.
    let index = kiln_bundle::reader::read_index(&bundle)?;
    let version = index.version.clone();
    check_version_name(&version)?;
    let bundles = root.join(BUNDLES);
    fs::create_dir_all(&bundles).with_context(|| format!("cannot create {}", bundles.display()))?;
    let dest = bundles.join(&version);
    let partial = bundles.join(format!("{version}.partial"));
    remove_if_exists(&partial)?;
    let expected = read_expected_digest(&bundle)?;
    let reuse = fs::read(dest.join(kiln_bundle::index::INDEX_NAME))
        .ok()
        .and_then(|b| Index::from_json(&b, "").ok())
        .is_some_and(|i| i == index)
        && state_before.as_ref().is_some_and(|s| s.digest == expected.hex());
    if !reuse {
        verify_unpack(&bundle, &partial, expected, &cfg)?;
    }
    if t.done(Step::VerifyUnpack) {
        return Ok(Outcome::Stopped {
            after: Step::VerifyUnpack,
        });
    }
    if !reuse {
        remove_if_exists(&dest)?;
        fs::rename(&partial, &dest)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), dest.display()))?;
        kiln_bundle::atomic::sync_dir(&bundles)?;
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
    services(sys, &index, changed || version_changed, opts.phase == Phase::Activate)?;
    if t.done(Step::Services) {
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
        node: if index.has_kubelet() {
            Some(NodeJoin {
                name: node_hostname(root, &cfg)?,
                timeout_s: cfg.node.join_timeout_seconds.unwrap_or(DEFAULT_JOIN_TIMEOUT_S),
            })
        } else {
            None
        },
    };
    if opts.phase == Phase::Activate {
        // kiln-firstboot-health.service finishes the job once the services have started.
        state.result = Status::PendingHealth;
        t.done(Step::State);
        state.steps = t.steps;
        state.write(root)?;
        return Ok(Outcome::Activated { version });
    }
    let health = health(root, sys, &index, opts.health_timeout, state.node.as_ref());
    if let Err(e) = health {
        let msg = format!("{e:#}");
        state.result = Status::Failed;
        state.error = Some(msg.clone());
        let rolled = rollback(root, sys, &state_before, &version)?;
        t.done(Step::Health);
        state.steps = t.steps;
        state.write(root)?;
        match rolled {
            Some(prev) => bail!("bundle {version} failed its health check ({msg}); rolled back to {prev}"),
            None => bail!("bundle {version} failed its health check: {msg}"),
        }
    }
    if t.done(Step::Health) {
        return Ok(Outcome::Stopped { after: Step::Health });
    }
    t.done(Step::State);
    state.steps = t.steps;
    state.write(root)?;
    Ok(Outcome::Activated { version })
}

fn check_version_name(version: &str) -> Result<()> {
    if version.is_empty() || version.contains('/') || version.starts_with('.') || version.ends_with(".partial") {
        bail!("the bundle's version `{version}` cannot name a directory");
    }
    Ok(())
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display())),
        Ok(_) => fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display())),
        Err(_) => Ok(()),
    }
}

fn read_expected_digest(bundle: &Path) -> Result<Sha256> {
    read_sha256_beside(bundle)?.ok_or_else(|| {
        anyhow!(
            "cannot read {} (the bundle's digest is baked beside it)",
            sha256_path(bundle).display()
        )
    })
}

fn verify_unpack(bundle: &Path, partial: &Path, expected: Sha256, cfg: &NodeConfig) -> Result<()> {
    let key = cfg
        .node
        .bundle_public_key
        .as_deref()
        .map(|k| signature::parse_public_key(k).map_err(|e| anyhow!("bundlePublicKey: not a minisign public key: {e}")))
        .transpose()?;
    let sig = match &key {
        Some(_) => Some(signature::load_signature(&minisig_path(bundle))?),
        None => None,
    };
    let expect = Expect {
        sha256: Some(expected),
        signature: key.as_ref().zip(sig.as_ref()),
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

/// The current targets of the `current` and `node` links.
fn links(root: &Path) -> Option<(String, String)> {
    let cur = fs::read_link(root.join(CURRENT)).ok()?;
    let node = fs::read_link(root.join(NODE)).ok()?;
    Some((cur.to_string_lossy().into_owned(), node.to_string_lossy().into_owned()))
}

/// Point `node` and `current` at new targets (relative to /var/lib/kiln), each by an atomic rename.
pub fn flip(root: &Path, current: &str, node: &str) -> Result<()> {
    for (link, target) in [(NODE, node), (CURRENT, current)] {
        let path = root.join(link);
        kiln_bundle::atomic::replace_symlink(&path, Path::new(target))
            .with_context(|| format!("cannot flip {}", path.display()))?;
    }
    kiln_bundle::atomic::sync_dir(&root.join("var/lib/kiln"))?;
    Ok(())
}

fn already_active(
    root: &Path,
    state: &Option<State>,
    id: &BundleId,
    config_digest: &str,
    sys: &mut dyn System,
) -> Option<String> {
    let s = state.as_ref()?;
    if s.result != Status::Ok || &s.bundle != id || s.config_digest != config_digest {
        return None;
    }
    let (cur, node) = links(root)?;
    if cur != format!("bundles/{}", s.version) || node != format!("rendered/{}", s.rendered) {
        return None;
    }
    if !root.join(CURRENT).join(kiln_bundle::index::INDEX_NAME).is_file() {
        return None;
    }
    let kubelet = root.join(CURRENT).join("bin/kubelet").exists();
    use kiln_bundle::layout::units;
    if !sys.is_active(units::CONTAINERD) || (kubelet && !sys.is_active(units::KUBELET)) {
        return None;
    }
    Some(s.version.clone())
}

fn services(sys: &mut dyn System, index: &Index, restart: bool, queue_only: bool) -> Result<()> {
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
    for unit in units {
        sys.enable(unit)?;
        if sys.is_active(unit) {
            if restart {
                sys.restart(unit)?;
            }
        } else if queue_only {
            sys.queue_start(unit)?;
        } else {
            sys.start(unit)?;
        }
    }
    Ok(())
}

/// The second half of a boot-time activation: health checks on the services the first half
/// queued, then the final state (and a rollback on failure).
fn health_phase(root: &Path, sys: &mut dyn System, opts: &Options) -> Result<Outcome> {
    let started = Instant::now();
    let mut state =
        State::load(root)?.ok_or_else(|| anyhow!("no activation to check: {} does not exist", crate::state::STATE))?;
    if state.result == Status::Ok {
        return Ok(Outcome::AlreadyActive { version: state.version });
    }
    if state.result != Status::PendingHealth {
        bail!(
            "the last activation of {} ended `{}`; nothing to check",
            state.version,
            state.result
        );
    }
    let dir = root.join(CURRENT);
    let index = Index::from_json(
        &fs::read(dir.join(kiln_bundle::index::INDEX_NAME))?,
        &dir.display().to_string(),
    )?;
    let result = health(root, sys, &index, opts.health_timeout, state.node.as_ref());
    state.steps.push(StepTiming {
        step: Step::Health.name().into(),
        ms: started.elapsed().as_secs_f64() * 1000.0,
    });
    let before = state.previous.as_ref().map(|(v, r)| State {
        version: v.clone(),
        rendered: r.clone(),
        result: Status::Ok,
        ..state.clone()
    });
    match result {
        Ok(()) => {
            state.result = Status::Ok;
            state.write(root)?;
            Ok(Outcome::Activated { version: state.version })
        }
        Err(e) => {
            let msg = format!("{e:#}");
            state.result = Status::Failed;
            state.error = Some(msg.clone());
            let rolled = rollback(root, sys, &before, &state.version)?;
            state.write(root)?;
            match rolled {
                Some(prev) => bail!(
                    "bundle {} failed its health check ({msg}); rolled back to {prev}",
                    state.version
                ),
                None => bail!("bundle {} failed its health check: {msg}", state.version),
            }
        }
    }
}

/// Healthy means: containerd answers on its socket; with a kubelet, its healthz answers `ok` and
/// its Node is registered and Ready (kubelet's healthz is ok long before it reaches the API server).
fn health(root: &Path, sys: &mut dyn System, index: &Index, timeout: Duration, node: Option<&NodeJoin>) -> Result<()> {
    sys.containerd_healthy(&root.join("run/containerd/containerd.sock"), timeout)?;
    if index.has_kubelet() {
        if let Some(node) = node {
            // A kubelet that cannot bootstrap never serves healthz: the join check says why.
            sys.node_joined(root, node)?;
        }
        sys.kubelet_healthy(timeout)?;
    }
    Ok(())
}

/// How long the health check waits for the Node to be Ready unless the node configuration says.
pub const DEFAULT_JOIN_TIMEOUT_S: u64 = 300;

/// Flip back to the previously active bundle, if there is one, and restart its services.
fn rollback(root: &Path, sys: &mut dyn System, before: &Option<State>, failed: &str) -> Result<Option<String>> {
    let Some(prev) = before
        .as_ref()
        .filter(|s| s.result == Status::Ok && s.version != failed)
    else {
        return Ok(None);
    };
    let dir = root.join(BUNDLES).join(&prev.version);
    let rendered = root.join(RENDERED).join(&prev.rendered);
    if !dir.is_dir() || !rendered.is_dir() {
        return Ok(None);
    }
    flip(
        root,
        &format!("bundles/{}", prev.version),
        &format!("rendered/{}", prev.rendered),
    )?;
    let index = Index::from_json(
        &fs::read(dir.join(kiln_bundle::index::INDEX_NAME))?,
        &dir.display().to_string(),
    )?;
    install::install_units(root, &index)?;
    services(sys, &index, true, false)?;
    Ok(Some(prev.version.clone()))
}

/// Values for the bundle's placeholders from the node configuration.
pub fn placeholder_values(
    root: &Path,
    index: &Index,
    cfg: &NodeConfig,
    digest: &Sha256,
) -> Result<BTreeMap<String, String>> {
    let n = &cfg.node;
    let mut v = BTreeMap::new();
    let needed: Vec<&str> = index.placeholders.iter().map(|p| p.name.as_str()).collect();
    for name in &needed {
        if let Some(host) = kiln_bundle::placeholder::registry_auth_host(name) {
            let auth = n.registry_auth.get(host).ok_or_else(|| {
                anyhow!("the node configuration lacks registryAuth[{host}] (the bundle's registry {host} needs credentials)")
            })?;
            v.insert(name.to_string(), auth.basic());
        }
    }
    if needed.iter().all(|n| v.contains_key(*n)) {
        return Ok(v);
    }
    let missing = n.missing_for_kubelet();
    if !missing.is_empty() {
        bail!(
            "the node configuration lacks {} (needed by the bundle's kubelet); sources read: {}",
            missing.join(", "),
            if cfg.sources.is_empty() {
                "none".to_string()
            } else {
                cfg.sources.join(", ")
            }
        );
    }
    let node_ip = match n.node_ip.as_deref() {
        None | Some("auto") => wait_for_default_route(NODE_IP_WAIT, default_route_address)?,
        Some(ip) => ip
            .parse::<std::net::IpAddr>()
            .map(|a| a.to_string())
            .map_err(|_| anyhow!("nodeIP `{ip}` is not an IP address or `auto`"))?,
    };
    let hostname = node_hostname(root, cfg)?;
    let mut labels = n.labels.clone();
    labels.insert(
        kiln_bundle::layout::labels::BUNDLE_VERSION.into(),
        index.version.clone(),
    );
    labels.insert(kiln_bundle::layout::labels::BUNDLE_DIGEST.into(), digest.short());
    v.insert("node-ip".into(), node_ip);
    v.insert("hostname".into(), hostname);
    v.insert(
        "node-labels".into(),
        labels
            .iter()
            .map(|(k, val)| format!("{k}={val}"))
            .collect::<Vec<_>>()
            .join(","),
    );
    let taints = n.taints.clone().unwrap_or_default();
    v.insert(
        "register-with-taints".into(),
        crate::config::taints_yaml(&taints).map_err(|e| anyhow!("taints: {e}"))?,
    );
    v.insert("node-taints".into(), taints.join(","));
    v.insert("cluster-dns".into(), n.cluster_dns.clone().unwrap_or_default());
    v.insert("api-server".into(), n.api_server.clone().unwrap_or_default());
    v.insert(
        "cluster-ca".into(),
        n.cluster_ca.clone().unwrap_or_default().trim_end().to_string(),
    );
    v.insert("bootstrap-token".into(), n.bootstrap_token.clone().unwrap_or_default());
    if needed.contains(&"kube-proxy-token") {
        let t = n.kube_proxy_token.clone().ok_or_else(|| {
            anyhow!("the node configuration lacks kubeProxyToken (needed by the bundle's kube-proxy)")
        })?;
        v.insert("kube-proxy-token".into(), t);
    }
    Ok(v)
}

/// The node's name: the configured host name, else /etc/hostname.
fn node_hostname(root: &Path, cfg: &NodeConfig) -> Result<String> {
    match &cfg.node.hostname {
        Some(h) => Ok(h.clone()),
        None => fs::read_to_string(root.join("etc/hostname"))
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow!("no hostname: set it in user data (hostname/fqdn) or kiln.hostname")),
    }
}

/// How long `nodeIP: auto` waits for the node's network (DHCP) to give it a default route.
pub const NODE_IP_WAIT: Duration = Duration::from_secs(120);

/// `probe` until it finds an address or `timeout` passes; the error says how long it waited.
pub fn wait_for_default_route(timeout: Duration, mut probe: impl FnMut() -> Result<String>) -> Result<String> {
    let mut found = None;
    crate::system::poll(timeout, || {
        found = Some(probe()?);
        Ok(())
    })
    .map_err(|e| {
        anyhow!(
            "nodeIP auto: no default route after {}s ({e:#}); set nodeIP, or give the node a network with a default route",
            timeout.as_secs()
        )
    })?;
    Ok(found.expect("poll succeeded"))
}

/// The source address of the default route (no packet is sent).
fn default_route_address() -> Result<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").context("nodeIP auto: cannot open a socket")?;
    s.connect("192.0.2.1:9")
        .context("nodeIP auto: no default route; set nodeIP")?;
    Ok(s.local_addr()?.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ip_auto_waits_for_the_route_and_gives_up_naming_the_fix() {
        let mut tries = 0;
        let ip = wait_for_default_route(Duration::from_secs(10), || {
            tries += 1;
            if tries < 3 {
                bail!("network unreachable")
            }
            Ok("10.0.2.15".into())
        })
        .unwrap();
        assert_eq!((ip.as_str(), tries), ("10.0.2.15", 3));

        let e = wait_for_default_route(Duration::from_millis(300), || bail!("network unreachable")).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.starts_with("nodeIP auto: no default route after 0s") && e.contains("set nodeIP"),
            "{e}"
        );
    }
}
