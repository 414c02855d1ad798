//! Rendering the node's files and installing what systemd, the kernel and operators look for.
//! Every write is atomic and skipped when the content is already there, so a re-run changes nothing.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::index::Index;
use kiln_bundle::layout::files;
use kiln_bundle::placeholder;

use super::{placeholder_values, remove_if_exists, CURRENT, NODE, RENDERED};
use crate::config::{NodeConfig, WriteFile};
use crate::system::System;

/// Render the bundle's templates with the node's values into `rendered/<name>` (via `.partial`).
pub fn render(
    root: &Path,
    bundle_dir: &Path,
    index: &Index,
    cfg: &NodeConfig,
    name: &str,
    digest: &Sha256,
) -> Result<()> {
    let base = root.join(RENDERED);
    let dest = base.join(name);
    if dest.is_dir() {
        return Ok(()); // the name is the version and the configuration digest: same content
    }
    fs::create_dir_all(&base).with_context(|| format!("cannot create {}", base.display()))?;
    let partial = base.join(format!("{name}.partial"));
    remove_if_exists(&partial)?;
    fs::create_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let values = placeholder_values(root, index, cfg, digest)?;
    let mut templates: Vec<&str> = index
        .placeholders
        .iter()
        .flat_map(|p| p.files.iter().map(String::as_str))
        .chain(
            index
                .files
                .iter()
                .map(|f| f.path.as_str())
                .filter(|p| files::rendered_on_node(p)),
        )
        .collect();
    templates.sort();
    templates.dedup();
    for rel in templates {
        let rec = index
            .file(rel)
            .ok_or_else(|| anyhow!("the index lists template {rel} but not the file"))?;
        let src = bundle_dir.join(rel);
        let text = fs::read_to_string(&src).with_context(|| format!("cannot read {}", src.display()))?;
        let mut out = if rel == files::KUBELET_BOOTSTRAP && cfg.node.bootstrap_kubeconfig.is_some() {
            cfg.node.bootstrap_kubeconfig.clone().unwrap_or_default()
        } else {
            placeholder::substitute(&text, &values).map_err(|e| anyhow!("{rel}: {e}"))?
        };
        if rel == files::KUBELET_CONFIG && !cfg.node.kubelet_settings.is_empty() {
            out = merge_kubelet_settings(&out, &cfg.node.kubelet_settings)?;
        }
        let secret = index
            .placeholders
            .iter()
            .any(|p| p.secret && p.files.iter().any(|f| f == rel));
        let mode = if secret { 0o600 } else { rec.mode.0 };
        let path = partial.join(rel);
        fs::create_dir_all(path.parent().expect("relative path has a parent"))
            .with_context(|| format!("cannot create {}", path.display()))?;
        kiln_bundle::atomic::write_file(&path, out.as_bytes(), mode)?;
    }
    fs::rename(&partial, &dest)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), dest.display()))?;
    kiln_bundle::atomic::sync_dir(&base)?;
    Ok(())
}

fn merge_kubelet_settings(
    yaml: &str,
    settings: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Result<String> {
    let mut doc: serde_json::Value = kiln_bundle::yaml::from_str(yaml, "the bundle's kubelet config")?;
    for (k, v) in settings {
        if k == "apiVersion" || k == "kind" {
            bail!("kubeletSettings: `{k}` cannot be changed");
        }
        doc[k] = v.clone();
    }
    Ok(serde_saphyr::to_string(&doc)?)
}

/// Write `bytes` to `path` (with `mode`) unless it already holds exactly that; true when written.
fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    if let Ok(existing) = fs::read(path) {
        let same_mode = fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
        if existing == bytes && same_mode {
            return Ok(false);
        }
    }
    fs::create_dir_all(path.parent().expect("absolute path"))
        .with_context(|| format!("cannot create the directory of {}", path.display()))?;
    kiln_bundle::atomic::write_file(path, bytes, mode)?;
    Ok(true)
}

fn link(path: &Path, target: &str) -> Result<()> {
    if fs::read_link(path).is_ok_and(|t| t == Path::new(target)) {
        return Ok(());
    }
    fs::create_dir_all(path.parent().expect("absolute path"))
        .with_context(|| format!("cannot create the directory of {}", path.display()))?;
    kiln_bundle::atomic::replace_symlink(path, Path::new(target))?;
    Ok(())
}

/// The units, from the active bundle (`current`) or its rendered files (`node`). True if changed.
pub fn install_units(root: &Path, index: &Index) -> Result<bool> {
    let mut changed = false;
    let mut units = vec![(files::CONTAINERD_UNIT, CURRENT, kiln_bundle::layout::units::CONTAINERD)];
    if index.file(files::IMAGES_UNIT).is_some() {
        units.push((files::IMAGES_UNIT, CURRENT, kiln_bundle::layout::units::IMAGES));
    }
    if index.has_kubelet() {
        units.push((files::KUBELET_UNIT, NODE, kiln_bundle::layout::units::KUBELET));
    }
    if index.file(files::KUBE_PROXY_UNIT).is_some() {
        units.push((files::KUBE_PROXY_UNIT, CURRENT, kiln_bundle::layout::units::KUBE_PROXY));
    }
    for (rel, base, name) in units {
        let src = root.join(base).join(rel);
        let bytes = fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
        changed |= put(&root.join("etc/systemd/system").join(name), &bytes, 0o644)?;
    }
    Ok(changed)
}

/// Bundle files copied to where the system looks for them.
const COPIES: [(&str, &str); 5] = [
    (files::CNI_CONFLIST, "etc/cni/net.d/10-kiln.conflist"),
    (files::CNI_LOOPBACK, "etc/cni/net.d/99-loopback.conf"),
    (files::SYSCTL, "etc/sysctl.d/99-kiln.conf"),
    (files::MODULES_LOAD, "etc/modules-load.d/kiln.conf"),
    (files::CRICTL, "etc/crictl.yaml"),
];

/// The bundle's tools linked into `/usr/local/bin` for operators.
const TOOLS: [&str; 3] = ["ctr", "crictl", "nerdctl"];

/// Every path [`install`] may write, relative to the root, but `write_files`: what an adoption
/// saves first, so that a rollback can put the worker back.
pub fn targets() -> Vec<String> {
    let mut out: Vec<String> = [
        kiln_bundle::layout::units::CONTAINERD,
        kiln_bundle::layout::units::IMAGES,
        kiln_bundle::layout::units::KUBELET,
        kiln_bundle::layout::units::KUBE_PROXY,
    ]
    .iter()
    .map(|u| format!("etc/systemd/system/{u}"))
    .collect();
    out.extend(COPIES.iter().map(|(_, dest)| dest.to_string()));
    out.extend(TOOLS.iter().map(|t| format!("usr/local/bin/{t}")));
    out.push("etc/hostname".into());
    out
}

/// Units, CNI configuration, sysctl and modules-load files, crictl.yaml, operator tool links and
/// `write_files`. Returns whether a unit changed (so services must restart).
pub fn install(root: &Path, index: &Index, cfg: &NodeConfig) -> Result<bool> {
    let changed = install_units(root, index)?;
    let current = root.join(CURRENT);
    for (rel, dest) in COPIES {
        if index.file(rel).is_none() {
            continue;
        }
        let bytes =
            fs::read(current.join(rel)).with_context(|| format!("cannot read {}", current.join(rel).display()))?;
        put(&root.join(dest), &bytes, 0o644)?;
    }
    for tool in TOOLS {
        let rel = format!("bin/{tool}");
        if index.file(&rel).is_some() {
            link(
                &root.join("usr/local/bin").join(tool),
                &format!("/var/lib/kiln/current/{rel}"),
            )?;
        }
    }
    if let Some(h) = &cfg.node.hostname {
        put(&root.join("etc/hostname"), format!("{h}\n").as_bytes(), 0o644)?;
    }
    for wf in &cfg.write_files {
        write_file(root, wf)?;
    }
    Ok(changed)
}

/// `path` (absolute, from user data) under `root`, refusing `..` and any existing symlink on the
/// way, so a write cannot leave the root.
pub fn confined(root: &Path, path: &str) -> Result<PathBuf> {
    let mut out = root.to_path_buf();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                out.push(n);
                if fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) {
                    bail!(
                        "`{path}` goes through the symlink {}; refusing to write through it",
                        out.display()
                    );
                }
            }
            Component::ParentDir | Component::Prefix(_) => bail!("`{path}` leaves the root"),
        }
    }
    Ok(out)
}

fn write_file(root: &Path, wf: &WriteFile) -> Result<()> {
    let path = confined(root, &wf.path).map_err(|e| anyhow!("{}: {e}", wf.origin))?;
    let mut bytes = wf.content.clone();
    if wf.append {
        if let Ok(existing) = fs::read(&path) {
            if existing.ends_with(&bytes) {
                return Ok(()); // appended by an earlier run
            }
            let mut joined = existing;
            joined.extend_from_slice(&bytes);
            bytes = joined;
        }
    }
    put(&path, &bytes, wf.mode).map_err(|e| anyhow!("{}: {e}", wf.origin))?;
    let (uid, gid) = owner(root, &wf.owner).map_err(|e| anyhow!("{}: {e}", wf.origin))?;
    let md = fs::metadata(&path)?;
    use std::os::unix::fs::MetadataExt;
    if md.uid() != uid || md.gid() != gid {
        chown(&path, Some(uid), Some(gid))
            .map_err(|e| anyhow!("{}: cannot chown {}: {e}", wf.origin, path.display()))?;
    }
    Ok(())
}

/// `user:group` (names or numbers) looked up in the root's /etc/passwd and /etc/group.
fn owner(root: &Path, spec: &str) -> Result<(u32, u32)> {
    let (user, group) = spec.split_once(':').unwrap_or((spec, spec));
    let lookup = |file: &str, name: &str, col: usize| -> Result<u32> {
        if let Ok(n) = name.parse() {
            return Ok(n);
        }
        if name == "root" {
            return Ok(0);
        }
        let text = fs::read_to_string(root.join(file)).unwrap_or_default();
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(col).and_then(|v| v.parse().ok()))
            .ok_or_else(|| anyhow!("owner `{spec}`: no `{name}` in /{file}"))
    };
    Ok((lookup("etc/passwd", user, 2)?, lookup("etc/group", group, 2)?))
}

/// Load the modules and apply the sysctls the bundle asks for.
pub fn kernel(root: &Path, sys: &mut dyn System, hostname: Option<&str>) -> Result<()> {
    if let Some(name) = hostname {
        set_hostname(root, sys, name)?;
    }
    let modules = root.join("etc/modules-load.d/kiln.conf");
    if let Ok(text) = fs::read_to_string(&modules) {
        for m in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            sys.load_module(m)?;
        }
    }
    let sysctl = root.join("etc/sysctl.d/99-kiln.conf");
    if sysctl.is_file() {
        sys.apply_sysctl(&sysctl)?;
    }
    Ok(())
}

/// The node's name from its configuration: /etc/hostname (images ship without one) and the running
/// system's, as cloud-init would set them.
fn set_hostname(root: &Path, sys: &mut dyn System, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !valid {
        bail!("hostname {name:?} is not a valid host name (RFC 1123)");
    }
    let etc = root.join("etc/hostname");
    if fs::read_to_string(&etc).ok().as_deref().map(str::trim) != Some(name) {
        kiln_bundle::atomic::write_file(&etc, format!("{name}\n").as_bytes(), 0o644)?;
    }
    sys.set_hostname(name)
}

/// Swap must be off unless the kubelet is told to allow it.
pub fn check_swap(root: &Path) -> Result<()> {
    let swaps = fs::read_to_string(root.join("proc/swaps")).unwrap_or_default();
    let active: Vec<&str> = swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if active.is_empty() {
        return Ok(());
    }
    let config = fs::read_to_string(root.join(NODE).join(files::KUBELET_CONFIG)).unwrap_or_default();
    let allowed = config.lines().any(|l| l.trim() == "failSwapOn: false");
    if !allowed {
        bail!(
            "swap is on ({}) and the kubelet's failSwapOn is true: turn swap off (swapoff -a, and remove it from /etc/fstab) or set kubeletSettings.failSwapOn: false",
            active.join(", ")
        );
    }
    Ok(())
}
