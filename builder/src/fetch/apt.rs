//! The `apt` source: a Debian or Ubuntu package obtained with `apt-get download`, so apt's
//! signed-repository checks apply (the InRelease signature against the host's trusted keys, then
//! the package's hash against the signed index).
//!
//! kiln keeps its own package lists under the cache (`Dir::State::Lists`, `Dir::Cache`) and uses the
//! host's sources and keys: it never changes the host's apt state, and it works on a machine whose
//! lists were never downloaded.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::manifest::Arch;

use crate::process;

pub struct Apt {
    state: PathBuf,
}

impl Apt {
    pub fn new(state: PathBuf) -> Apt {
        Apt { state }
    }

    fn command(&self, verb: &str) -> Command {
        let tool = if verb == "show" { "apt-cache" } else { "apt-get" };
        let mut c = Command::new(tool);
        c.arg("-q")
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", self.state.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", self.state.join("cache").display()))
            .arg("-o")
            .arg("Debug::NoLocking=1")
            .arg(verb)
            .env("LC_ALL", "C");
        c
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(self.state.join("lists"))
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name().to_string_lossy().ends_with("_Packages")
                        || e.file_name().to_string_lossy().contains("_Packages.")
                })
            })
            .unwrap_or(false)
    }

    /// Download kiln's private copy of the package lists (`apt-get update`).
    pub fn update(&self) -> Result<()> {
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(self.state.join(d))
                .with_context(|| format!("cannot create {}", self.state.join(d).display()))?;
        }
        tracing::info!("apt: updating kiln's package lists in {}", self.state.display());
        process::run(&mut self.command("update")).context("apt: cannot update the package lists")?;
        if !self.has_lists() {
            bail!("apt: `apt-get update` found no package lists; check /etc/apt/sources.list");
        }
        Ok(())
    }

    /// The version and sha256 of each `(package, version)` (an exact version, or apt's candidate) in
    /// kiln's package lists, which apt verified against the repository's signature. One `apt-cache`
    /// call answers them all; no network is used unless kiln has no lists yet or a package is missing.
    pub fn candidates(&self, wanted: &[(String, Option<String>)], what: &str) -> Result<Vec<(String, Sha256)>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        if !self.has_lists() {
            self.update()?;
        }
        let specs: Vec<String> = wanted
            .iter()
            .map(|(p, v)| match v {
                Some(v) => format!("{p}={v}"),
                None => p.clone(),
            })
            .collect();
        let show = || {
            let mut c = self.command("show");
            c.arg("--no-all-versions").args(&specs);
            process::run(&mut c)
        };
        let out = match show() {
            Ok(o) => o,
            Err(first) => {
                tracing::info!("apt: not all of {specs:?} are in kiln's lists ({first}); refreshing them");
                self.update()?;
                show().map_err(|e| anyhow!("{what}: apt does not know all of {}: {e}", specs.join(", ")))?
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let stanzas: Vec<BTreeMap<&str, &str>> = text
            .split("\n\n")
            .map(|st| {
                st.lines()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .collect()
            })
            .collect();
        wanted
            .iter()
            .zip(&specs)
            .map(|((pkg, ver), spec)| {
                let st = stanzas
                    .iter()
                    .find(|st| {
                        st.get("Package") == Some(&pkg.as_str())
                            && ver.as_deref().is_none_or(|v| st.get("Version") == Some(&v))
                    })
                    .ok_or_else(|| anyhow!("{what}: apt-cache shows nothing for `{spec}`"))?;
                let version = st
                    .get("Version")
                    .ok_or_else(|| anyhow!("{what}: apt-cache shows no Version for `{spec}`"))?;
                let sha = st
                    .get("SHA256")
                    .ok_or_else(|| anyhow!("{what}: apt-cache shows no SHA256 for `{spec}`"))?;
                let sha: Sha256 = sha
                    .parse()
                    .map_err(|e| anyhow!("{what}: apt-cache SHA256 for `{spec}`: {e}"))?;
                Ok((version.to_string(), sha))
            })
            .collect()
    }

    /// Download `package` (at `version`, or the candidate) into `dest`, returning the .deb's path.
    /// The package lists are fetched first when kiln has none, and refreshed once when the package or
    /// version is not found.
    pub fn download(
        &self,
        package: &str,
        version: Option<&str>,
        arch: Arch,
        dest: &Path,
        what: &str,
    ) -> Result<PathBuf> {
        if Arch::host() != Some(arch) {
            bail!("{what}: the apt source downloads packages for the host architecture only; `{arch}` is not it");
        }
        if !self.has_lists() {
            self.update()?;
        }
        let spec = match version {
            Some(v) => format!("{package}={v}"),
            None => package.to_string(),
        };
        let attempt = || {
            let mut c = self.command("download");
            c.arg(&spec).current_dir(dest);
            process::run(&mut c)
        };
        if let Err(first) = attempt() {
            tracing::info!("apt: {spec} not found in kiln's lists ({first}); refreshing them");
            self.update()?;
            attempt().map_err(|e| anyhow!("{what}: apt cannot download `{spec}`: {e}"))?;
        }
        let debs: Vec<PathBuf> = fs::read_dir(dest)
            .with_context(|| format!("cannot read {}", dest.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        match debs.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!(
                "{what}: expected one .deb from `apt-get download {spec}`, found {}",
                debs.len()
            ),
        }
    }
}
