//! `MANIFEST.lock`: every resolved artifact (upstream URL or apt package version, sha256, size), so
//! that a build months later fetches exactly the same bytes. `kiln build --locked` refuses to build
//! when the manifest and the lock disagree.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::manifest::{expand, Arch, Components, Manifest};
use serde::{Deserialize, Serialize};

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Lock {
    pub lock_version: u32,
    pub artifacts: Vec<Locked>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Locked {
    pub component: String,
    pub arch: Arch,
    pub version: String,
    /// The upstream URL, or `apt:<package>=<version>`.
    pub source: String,
    pub sha256: Sha256,
    pub size: u64,
}

impl Locked {
    /// `(package, version)` of an apt artifact.
    pub fn apt(&self) -> Option<(&str, &str)> {
        self.source.strip_prefix("apt:")?.split_once('=')
    }
}

pub fn lock_path(manifest: &Path) -> PathBuf {
    let mut s = manifest.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

impl Lock {
    pub fn load(path: &Path) -> Result<Option<Lock>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let lock: Lock = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))?;
        if lock.lock_version != LOCK_VERSION {
            bail!(
                "{}: lockVersion {} is not supported (expected {LOCK_VERSION})",
                path.display(),
                lock.lock_version
            );
        }
        Ok(Some(lock))
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("lock serializes");
        v.push(b'\n');
        v
    }

    pub fn find(&self, component: &str, arch: Arch) -> Option<&Locked> {
        self.artifacts
            .iter()
            .find(|a| a.component == component && a.arch == arch)
    }

    /// Every way the manifest and this lock disagree, for the given architectures.
    pub fn disagreements(&self, m: &Manifest, archs: &[Arch]) -> Vec<String> {
        let mut out = Vec::new();
        for arch in archs {
            for (name, c) in m.spec.components.iter() {
                let at = format!("{}/{arch}", Components::key(&name));
                let Some(l) = self.find(&name, *arch) else {
                    out.push(format!("{at}: not in the lock"));
                    continue;
                };
                if l.version != c.version {
                    out.push(format!(
                        "{at}: version {} in the manifest, {} in the lock",
                        c.version, l.version
                    ));
                }
                if let Some(expected) = c.source.sha256.get(arch) {
                    if *expected != l.sha256 {
                        out.push(format!(
                            "{at}: sha256 {expected} in the manifest, {} in the lock",
                            l.sha256
                        ));
                    }
                }
                match (&c.source.url, &c.source.apt) {
                    (Some(url), _) => {
                        let url = expand(url, &c.version, *arch);
                        if url != l.source {
                            out.push(format!("{at}: source {url} in the manifest, {} in the lock", l.source));
                        }
                    }
                    (None, Some(apt)) => match l.apt() {
                        Some((pkg, ver)) if pkg == apt.package => {
                            if let Some(want) = &apt.version {
                                if want != ver {
                                    out.push(format!("{at}: apt version {want} in the manifest, {ver} in the lock"));
                                }
                            }
                        }
                        _ => out.push(format!(
                            "{at}: apt package {} in the manifest, {} in the lock",
                            apt.package, l.source
                        )),
                    },
                    (None, None) => {}
                }
            }
        }
        let names: Vec<String> = m.spec.components.iter().into_iter().map(|(n, _)| n).collect();
        for l in &self.artifacts {
            if !names.contains(&l.component) || !m.spec.architectures.contains(&l.arch) {
                out.push(format!(
                    "{}/{}: in the lock but not in the manifest",
                    Components::key(&l.component),
                    l.arch
                ));
            }
        }
        out
    }
}
