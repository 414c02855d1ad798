//! `kiln-firstboot adopt`: turn a running worker (set up by hand or by configuration management,
//! often with Docker as its runtime) into a kiln node without re-joining the cluster. It keeps the
//! Node's name, its node IP and kubelet's own identity (the kubeconfig and client certificate), so
//! no bootstrap token is needed. In steps, each crash-safe:
//!
//! 1. `inspect` (read-only): read the old kubelet's unit, drop-ins, environment files and
//!    KubeletConfiguration with `kiln migrate`'s readers, verify the bundle (digest, signature) and
//!    compare every old setting with what the bundle's kubelet runs with; a setting the worker
//!    would lose or see changed refuses the adoption unless the operator accepts the report. The
//!    old runtime's settings (Docker's `daemon.json`, the distribution containerd's `config.toml`
//!    and its registry `hosts.toml` files) are compared with the bundle's containerd the same way
//!    (`runtime`). The Node must be Ready with the old kubelet's credentials.
//! 2. `save`: record every unit's state (`systemctl is-enabled`, active) and copy every file
//!    adoption or the activation may change into `/var/lib/kiln/adoption/saved/`, then write
//!    `/var/lib/kiln/adoption.json`.
//! 3. `stop`: stop kubelet, kube-proxy, Docker (`docker.socket` too) and the distribution's
//!    containerd; disable them and mask Docker's units (and kube-proxy's, when the bundle has none);
//!    move the old kubelet's and containerd's drop-ins aside (they would apply to kiln's units of the
//!    same names); write the node configuration adoption derived (`/etc/kiln/node.d/50-adopted.yaml`)
//!    and kubelet's kubeconfig where kiln's kubelet reads it; install and enable kiln-firstboot's
//!    boot units where the worker has none (later boots verify the bundle and mount it again).
//! 4. `activate`: stage the bundle and activate it as first boot does (verity where the node can),
//!    health-gated: containerd answers, and the Node is Ready as reported by kiln's kubelet (after
//!    its start) with the bundle's labels.
//! 5. `done`: the record says adopted.
//!
//! When activation fails, the worker is put back: kiln's services stopped, every saved file
//! restored, Docker's units unmasked, the units enabled and started as they were, and the Node
//! Ready again from the old kubelet. A killed run, run again, resumes from the record.

pub mod compare;
pub mod inspect;
pub mod runtime;
pub mod saved;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use kiln_bundle::index::{FileRecord, Index};
use kiln_bundle::layout::root::{ADOPTION, ADOPTION_SAVED, CURRENT, NODE, SELECTION, STAGED, STATE};
use kiln_bundle::layout::{files, units};
use kiln_bundle::reader::{read_bundle, Expect, Sink};

use crate::activate::{self, Options, Outcome};
use crate::state::{NodeJoin, State, Status};
use crate::system::System;
use compare::{BundleKubelet, Compared};
use runtime::BundleRuntime;
use saved::SavedPath;

/// The node configuration adoption derives from the old kubelet.
pub const ADOPTED_NODE_YAML: &str = "etc/kiln/node.d/50-adopted.yaml";

/// Where kiln's kubelet reads its kubeconfig.
fn kiln_kubeconfig() -> String {
    let l = kiln_bundle::layout::Layout::default();
    format!("{}/{}", l.kubelet_root, crate::node::KUBELET_KUBECONFIG)
}

/// The units adoption stops, in the order it stops them (and starts them again in reverse).
pub const OLD_UNITS: [&str; 5] = [
    units::KUBELET,
    units::KUBE_PROXY,
    "docker.socket",
    "docker.service",
    units::CONTAINERD,
];

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdoptStep {
    Inspect,
    Save,
    Stop,
    Activate,
    Done,
}

impl AdoptStep {
    /// Every step, in the order adoption runs them.
    pub const ALL: &'static [AdoptStep] = &[
        AdoptStep::Inspect,
        AdoptStep::Save,
        AdoptStep::Stop,
        AdoptStep::Activate,
        AdoptStep::Done,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AdoptStep::Inspect => "inspect",
            AdoptStep::Save => "save",
            AdoptStep::Stop => "stop",
            AdoptStep::Activate => "activate",
            AdoptStep::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<AdoptStep> {
        AdoptStep::ALL.iter().copied().find(|st| st.name() == s)
    }
}

/// How the worker's record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Saved; nothing changed yet.
    Saved,
    /// The old services are stopped; the bundle is being activated.
    Stopped,
    /// A kiln node now.
    Adopted,
    /// The bundle failed; the worker was put back as it was.
    RolledBack,
}

/// A unit as it was before adoption, and what adoption does to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitBefore {
    pub unit: String,
    /// `systemctl is-enabled` before adoption.
    pub state: String,
    pub active: bool,
    /// `masked`, `disabled` (kiln's unit of the same name replaces it) or `untouched`.
    pub action: String,
}

/// `/var/lib/kiln/adoption.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub phase: Phase,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<String>,
    /// The bundle's version and sha256.
    pub version: String,
    pub digest: String,
    /// The old kubelet's kubeconfig, checked with again after a rollback.
    pub old_kubeconfig: String,
    pub units: Vec<UnitBefore>,
    pub saved: Vec<SavedPath>,
    /// Directories that did not exist before adoption (removed again by a rollback, once empty).
    #[serde(default)]
    pub absent_dirs: Vec<String>,
    pub compared: Vec<Compared>,
    /// The files the old kubelet was read from.
    pub read: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Record {
    pub fn load(root: &Path) -> Result<Option<Record>> {
        let p = root.join(ADOPTION);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{} is not an adoption record", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    fn write(&self, root: &Path) -> Result<()> {
        let p = root.join(ADOPTION);
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        fs::create_dir_all(p.parent().expect("a parent")).with_context(|| format!("cannot create {}", p.display()))?;
        kiln_bundle::atomic::write_file(&p, &bytes, 0o600)?;
        Ok(())
    }
}

pub struct AdoptOptions {
    /// The bundle file, with its `.sha256` (and `.minisig`, `.verity`) beside it.
    pub bundle: PathBuf,
    /// Adopt although the worker loses settings (the report lists them).
    pub accept_losses: bool,
    /// The old kubelet's unit.
    pub kubelet_unit: String,
    /// Stop right after this step, as if killed there (crash-safety tests).
    pub stop_after: Option<AdoptStep>,
    /// The activation's own options (endpoints, health timeout, mode).
    pub run: Options,
}

/// How an adoption ended.
#[derive(Debug)]
pub enum Adopted {
    /// A kiln node now (or already, with this bundle).
    Done { record: Box<Record>, already: bool },
    /// Stopped by `stop_after`.
    Stopped { after: AdoptStep },
}

/// Adopt the worker under `root`.
pub fn adopt(root: &Path, sys: &mut dyn System, opts: &AdoptOptions) -> Result<Adopted> {
    let mut record = match Record::load(root)? {
        Some(r) if r.phase == Phase::Adopted => return already(r, opts),
        // Resumed: the record holds what the worker was, read before anything changed.
        Some(r) if r.phase != Phase::RolledBack => r,
        _ => {
            if let Some(s) = State::load(root)? {
                bail!(
                    "this node is a kiln node already (bundle {} in /{STATE}); deliver a new bundle with `kiln-firstboot update`",
                    s.version
                );
            }
            let Some(record) = inspect(root, sys, opts)? else {
                return Ok(Adopted::Stopped {
                    after: AdoptStep::Inspect,
                });
            };
            record.write(root)?;
            record
        }
    };
    if opts.stop_after == Some(AdoptStep::Save) {
        return Ok(Adopted::Stopped { after: AdoptStep::Save });
    }
    if record.phase == Phase::Saved {
        stop_old(root, sys, &record)?;
        record.phase = Phase::Stopped;
        record.write(root)?;
    }
    if opts.stop_after == Some(AdoptStep::Stop) {
        return Ok(Adopted::Stopped { after: AdoptStep::Stop });
    }
    if let Err(e) = activate_bundle(root, sys, &record, opts) {
        let msg = format!("{e:#}");
        match rollback(root, sys, &mut record, &msg) {
            Ok(()) => bail!(
                "adoption of Node {} failed: {msg}; the worker was put back as it was (its kubelet and runtime running, the Node Ready)",
                record.node
            ),
            Err(r) => bail!(
                "adoption of Node {} failed: {msg}; putting the worker back failed too: {r:#} (what it was is in /{ADOPTION} and /{ADOPTION_SAVED})",
                record.node
            ),
        }
    }
    if opts.stop_after == Some(AdoptStep::Activate) {
        return Ok(Adopted::Stopped {
            after: AdoptStep::Activate,
        });
    }
    record.phase = Phase::Adopted;
    record.error = None;
    record.write(root)?;
    Ok(Adopted::Done {
        record: Box::new(record),
        already: false,
    })
}

fn already(r: Record, opts: &AdoptOptions) -> Result<Adopted> {
    let expected = activate::read_expected_digest(&opts.bundle)?;
    kiln_bundle::reader::verify_raw(
        &opts.bundle,
        &Expect {
            sha256: Some(expected),
            signature: None,
        },
    )
    .with_context(|| format!("refusing bundle {}", opts.bundle.display()))?;
    if r.digest != expected.hex() {
        bail!(
            "Node {} was adopted with bundle {} already (/{ADOPTION}); deliver a new bundle with `kiln-firstboot update`",
            r.node,
            r.version
        );
    }
    Ok(Adopted::Done {
        record: Box::new(r),
        already: true,
    })
}

/// Step 1 (read-only) and step 2: everything known before anything changes. `None` when stopped
/// after `inspect`.
fn inspect(root: &Path, sys: &mut dyn System, opts: &AdoptOptions) -> Result<Option<Record>> {
    let old = inspect::read(root, &opts.kubelet_unit)?;
    let cfg = crate::datasource::gather(root, &opts.run.endpoints, sys)?;
    let bundle = &opts.bundle;
    let index =
        kiln_bundle::reader::read_index(bundle).with_context(|| format!("refusing bundle {}", bundle.display()))?;
    activate::check_version_name(&index.version)?;
    if !index.has_kubelet() {
        bail!(
            "bundle {} has no kubelet: a worker is adopted with a node bundle",
            index.version
        );
    }
    let expected = activate::read_expected_digest(bundle)?;
    activate::verify_raw(bundle, expected, &cfg)?;
    let (kubelet, runtime) = bundle_configs(bundle, &index, expected)?;
    let target = kiln_migrate::minor(&index.kubernetes_version).ok_or_else(|| {
        anyhow!(
            "bundle {}: `{}` is not a Kubernetes version",
            index.version,
            index.kubernetes_version
        )
    })?;
    let migration = kiln_migrate::migrate(&old.settings, &index.kubernetes_version, old.config.as_ref())
        .map_err(|e| anyhow!("reading the old kubelet: {e}"))?;
    let mut compared = compare::compare(&migration, target, &kubelet);
    compared.extend(runtime::compare(root, &runtime)?);
    let losses: Vec<&Compared> = compared.iter().filter(|c| c.verdict.is_loss()).collect();
    if !losses.is_empty() && !opts.accept_losses {
        let lines: Vec<String> = losses
            .iter()
            .map(|c| {
                format!(
                    "  {} {}={} ({}{})",
                    c.verdict,
                    c.setting,
                    c.node,
                    c.source,
                    c.bundle
                        .as_ref()
                        .map(|b| format!("; the bundle has {b}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        bail!(
            "refusing to adopt Node {}: the worker would lose {} setting(s) bundle {} does not keep:\n{}\nbuild the bundle with them (kiln migrate reads these files), or accept the loss with --accept-losses",
            old.name,
            losses.len(),
            index.version,
            lines.join("\n")
        );
    }
    // The Node as the old kubelet holds it: the right name, and Ready, before anything stops.
    sys.node_joined(
        root,
        &NodeJoin {
            name: old.name.clone(),
            timeout_s: 30,
            labels: BTreeMap::new(),
            since: None,
            kubeconfig: Some(old.kubeconfig_path.clone()),
        },
    )
    .with_context(|| {
        format!(
            "refusing to adopt: Node {} is not Ready under the old kubelet",
            old.name
        )
    })?;
    if opts.stop_after == Some(AdoptStep::Inspect) {
        return Ok(None);
    }
    let units = unit_plan(sys, &index);
    let paths = paths_to_save(root, &units);
    let absent_dirs = saved::absent_dirs(root, &paths);
    let saved = saved::save(root, &paths)?;
    Ok(Some(Record {
        phase: Phase::Saved,
        node: old.name.clone(),
        node_ip: old.node_ip.clone(),
        version: index.version.clone(),
        digest: expected.hex(),
        old_kubeconfig: old.kubeconfig_path.clone(),
        units,
        saved,
        absent_dirs,
        compared,
        read: old.read.clone(),
        error: None,
    }))
}

/// The bundle's kubelet unit and KubeletConfiguration template, and its containerd config and
/// registry `hosts.toml` files, read out of the verified bundle.
fn bundle_configs(
    bundle: &Path,
    index: &Index,
    expected: kiln_bundle::digest::Sha256,
) -> Result<(BundleKubelet, BundleRuntime)> {
    struct Capture(BTreeMap<String, String>);
    impl Sink for Capture {
        fn file(&mut self, rec: &FileRecord, data: &mut dyn Read) -> kiln_bundle::Result<()> {
            let wanted = [files::KUBELET_UNIT, files::KUBELET_CONFIG, files::CONTAINERD_CONFIG];
            if wanted.contains(&rec.path.as_str()) || files::registry_of_hosts_toml(&rec.path).is_some() {
                let mut s = String::new();
                data.read_to_string(&mut s)
                    .map_err(|e| kiln_bundle::Error::bundle(&rec.path, format!("not text: {e}")))?;
                self.0.insert(rec.path.clone(), s);
            }
            Ok(())
        }
    }
    let mut sink = Capture(BTreeMap::new());
    let origin = bundle.display().to_string();
    let f = fs::File::open(bundle).with_context(|| format!("cannot open {origin}"))?;
    let report = read_bundle(
        std::io::BufReader::new(f),
        &origin,
        &Expect {
            sha256: Some(expected),
            signature: None,
        },
        &mut sink,
    )?;
    report
        .into_result(&origin)
        .with_context(|| format!("refusing bundle {origin}"))?;
    let get = |rel: &str| {
        sink.0
            .get(rel)
            .cloned()
            .ok_or_else(|| anyhow!("bundle {}: no {rel}", index.version))
    };
    let kubelet = BundleKubelet::parse(&get(files::KUBELET_UNIT)?, &get(files::KUBELET_CONFIG)?)?;
    let hosts: BTreeMap<String, String> = sink
        .0
        .iter()
        .filter_map(|(p, text)| files::registry_of_hosts_toml(p).map(|h| (h.to_string(), text.clone())))
        .collect();
    let runtime = BundleRuntime::parse(&get(files::CONTAINERD_CONFIG)?, &hosts)?;
    Ok((kubelet, runtime))
}

/// Each old unit's state and what adoption will do to it.
fn unit_plan(sys: &mut dyn System, index: &Index) -> Vec<UnitBefore> {
    let kube_proxy_in_bundle = index.file(files::KUBE_PROXY_UNIT).is_some();
    OLD_UNITS
        .iter()
        .map(|&unit| {
            let state = sys.unit_file_state(unit);
            let active = sys.is_active(unit);
            let action = match unit {
                _ if state == "not-found" && !active => "untouched",
                "docker.socket" | "docker.service" => "masked",
                units::KUBE_PROXY if !kube_proxy_in_bundle => "masked",
                _ => "disabled",
            };
            UnitBefore {
                unit: unit.to_string(),
                state,
                active,
                action: action.to_string(),
            }
        })
        .collect()
}

/// What to save: everything the activation installs, kubelet's kubeconfig, the adopted node
/// configuration, the old units' drop-ins (moved aside), and a unit file in `/etc` that a mask
/// must replace (moved aside).
fn paths_to_save(root: &Path, units: &[UnitBefore]) -> Vec<(String, bool)> {
    let mut paths: Vec<(String, bool)> = activate::install::targets().into_iter().map(|p| (p, false)).collect();
    paths.push((kiln_kubeconfig().trim_start_matches('/').to_string(), false));
    paths.push((ADOPTED_NODE_YAML.to_string(), false));
    for (unit, _) in units::FIRSTBOOT_UNITS {
        paths.push((format!("etc/systemd/system/{unit}"), false));
        paths.push((format!("{BOOT_WANTS}/{unit}"), false));
    }
    for unit in [units::KUBELET, units::CONTAINERD, units::KUBE_PROXY] {
        let (_, dropins) = inspect::unit_files(root, unit);
        paths.extend(dropins.into_iter().map(|d| (d, true)));
    }
    for u in units.iter().filter(|u| u.action == "masked") {
        let rel = format!("etc/systemd/system/{}", u.unit);
        if let Some(p) = paths.iter_mut().find(|(p, _)| *p == rel) {
            p.1 = true;
        } else if root.join(&rel).exists() {
            paths.push((rel, true));
        }
    }
    paths
}

/// Step 3: the old services stopped, disabled or masked; drop-ins aside; the node configuration
/// and kubeconfig where kiln's kubelet reads them. Idempotent.
fn stop_old(root: &Path, sys: &mut dyn System, record: &Record) -> Result<()> {
    for u in record.units.iter().filter(|u| u.action != "untouched") {
        if sys.is_active(&u.unit) {
            sys.stop(&u.unit)?;
        }
        if u.state == "enabled" {
            sys.disable(&u.unit)?;
        }
    }
    saved::move_aside(root, &record.saved)?;
    for u in record.units.iter().filter(|u| u.action == "masked") {
        if sys.unit_file_state(&u.unit) != "masked" {
            sys.mask(&u.unit)?;
        }
    }
    let old = inspect_kubeconfig(root, record)?;
    let ca = crate::node::Kubeconfig::load(root, &record.old_kubeconfig)?;
    let section = adopted_section(record, &old, &String::from_utf8_lossy(ca.ca_pem()))?;
    let p = root.join(ADOPTED_NODE_YAML);
    fs::create_dir_all(p.parent().expect("a parent")).with_context(|| format!("cannot create {}", p.display()))?;
    kiln_bundle::atomic::write_file(&p, section.as_bytes(), 0o600)?;
    boot_units(root)?;
    let kiln = kiln_kubeconfig();
    if record.old_kubeconfig != kiln {
        kiln_bundle::atomic::write_file(&root.join(kiln.trim_start_matches('/')), old.as_bytes(), 0o600)?;
    }
    sys.daemon_reload()?;
    Ok(())
}

/// Where the boot units are enabled.
const BOOT_WANTS: &str = "etc/systemd/system/multi-user.target.wants";

/// kiln-firstboot's own boot units, installed in `/etc` and enabled where the worker has none
/// (a node `kiln image` did not build): each boot verifies the active bundle and mounts its verity
/// image again, and takes or falls back from a bundle staged by `update`. A unit the worker has
/// already (a package's, or one the operator masked) is left as it is. They run the binary that
/// adopts when `/usr/bin/kiln-firstboot` is not there.
fn boot_units(root: &Path) -> Result<()> {
    let exe = if root.join("usr/bin/kiln-firstboot").is_file() {
        None
    } else {
        std::env::current_exe().ok()
    };
    for (unit, text) in units::FIRSTBOOT_UNITS {
        let provided = ["etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"]
            .iter()
            .any(|d| fs::symlink_metadata(root.join(d).join(unit)).is_ok());
        if provided {
            continue;
        }
        let text = match &exe {
            Some(p) => text.replace("/usr/bin/kiln-firstboot", &p.display().to_string()),
            None => text.to_string(),
        };
        let rel = format!("etc/systemd/system/{unit}");
        fs::create_dir_all(root.join(BOOT_WANTS)).with_context(|| format!("cannot create /{BOOT_WANTS}"))?;
        kiln_bundle::atomic::write_file(&root.join(&rel), text.as_bytes(), 0o644)?;
        kiln_bundle::atomic::replace_symlink(&root.join(BOOT_WANTS).join(unit), Path::new(&format!("/{rel}")))?;
    }
    Ok(())
}

fn inspect_kubeconfig(root: &Path, record: &Record) -> Result<String> {
    // The saved copy when the run that moved things aside was killed after overwriting it.
    let rel = record.old_kubeconfig.trim_start_matches('/');
    let saved = root.join(ADOPTION_SAVED).join(rel);
    let p = if saved.is_file() { saved } else { root.join(rel) };
    fs::read_to_string(&p).with_context(|| format!("cannot read the old kubelet's kubeconfig {}", p.display()))
}

/// The node configuration for the bundle's templates: the Node's name and IP, the API server and
/// CA from the old kubeconfig, clusterDNS, and the old kubeconfig itself as the bootstrap
/// kubeconfig (kubelet's own client certificate, so no token).
fn adopted_section(record: &Record, kubeconfig: &str, cluster_ca: &str) -> Result<String> {
    let dns = record
        .compared
        .iter()
        .find(|c| c.setting == "clusterDNS" || c.setting == "--cluster-dns (clusterDNS)")
        .map(|c| {
            c.node
                .trim_matches(|ch| ch == '[' || ch == ']' || ch == '"')
                .split(',')
                .next()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string()
        });
    let mut section = serde_json::json!({
        "hostname": record.node,
        "bootstrapKubeconfig": kubeconfig,
        "clusterCA": cluster_ca,
    });
    let kc: serde_json::Value = kiln_bundle::yaml::from_str(kubeconfig, &record.old_kubeconfig)?;
    if let Some(ip) = &record.node_ip {
        section["nodeIP"] = ip.clone().into();
    }
    if let Some(dns) = dns.filter(|d| !d.is_empty()) {
        section["clusterDNS"] = dns.into();
    }
    if let Some(s) = kc["clusters"][0]["cluster"]["server"].as_str() {
        section["apiServer"] = s.into();
    }
    Ok(format!(
        "# Written by kiln-firstboot adopt from the old kubelet (/{ADOPTION}).\n{}",
        serde_json::to_string_pretty(&section)?
    ))
}

/// Step 4: stage the bundle and activate it, health-gated.
fn activate_bundle(root: &Path, sys: &mut dyn System, record: &Record, opts: &AdoptOptions) -> Result<()> {
    let active = State::load(root)?.is_some_and(|s| s.result == Status::Ok && s.digest == record.digest);
    if !active {
        crate::update::stage_trial(root, &opts.bundle, &record.version)?;
    }
    let run = Options {
        phase: activate::Phase::All,
        ..opts.run.clone()
    };
    match activate::run(root, sys, &run)? {
        Outcome::Activated { .. } | Outcome::AlreadyActive { .. } => Ok(()),
        Outcome::Stopped { after } => bail!("activation stopped after {}", after.name()),
    }
}

/// Put the worker back as it was, and check its Node is Ready again from the old kubelet.
fn rollback(root: &Path, sys: &mut dyn System, record: &mut Record, why: &str) -> Result<()> {
    for unit in [units::KUBELET, units::KUBE_PROXY, units::IMAGES, units::CONTAINERD] {
        if sys.is_active(unit) {
            sys.stop(unit)?;
        }
    }
    for u in record
        .units
        .iter()
        .filter(|u| u.action == "masked" && u.state != "masked")
    {
        sys.unmask(&u.unit)?;
    }
    saved::restore(root, &record.saved)?;
    saved::remove_created_dirs(root, &record.absent_dirs);
    // Not a kiln node: the failed activation's state is kept beside the record.
    let failed = root.join(STATE);
    if failed.exists() {
        let dest = root.join("var/lib/kiln/adoption/failed-state.json");
        fs::rename(&failed, &dest).with_context(|| format!("cannot move {} aside", failed.display()))?;
    }
    for rel in [CURRENT, NODE, SELECTION] {
        activate::remove_if_exists(&root.join(rel))?;
    }
    activate::remove_if_exists(&root.join(STAGED))?;
    sys.daemon_reload()?;
    for u in &record.units {
        if u.state == "enabled" && u.action != "untouched" {
            sys.enable(&u.unit)?;
        }
    }
    for u in record.units.iter().rev().filter(|u| u.active) {
        sys.start(&u.unit)?;
    }
    let since = activate::now_rfc3339();
    sys.node_joined(
        root,
        &NodeJoin {
            name: record.node.clone(),
            timeout_s: 300,
            labels: BTreeMap::new(),
            since: Some(since),
            kubeconfig: Some(record.old_kubeconfig.clone()),
        },
    )?;
    record.phase = Phase::RolledBack;
    record.error = Some(why.to_string());
    record.write(root)
}
