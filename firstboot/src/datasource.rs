//! Where the node's configuration comes from, all paths under the given root:
//! 1. `/etc/kiln/node.yaml`, then `/etc/kiln/node.d/*.yaml` in name order (a bare node section);
//! 2. `kiln.config=<path|http(s) URL>` on the kernel command line (a node section or user data);
//! 3. the first datasource that has user data: the NoCloud seed `/var/lib/cloud/seed/nocloud/`, a
//!    filesystem labelled `cidata`/`CIDATA` (mounted read-only by the [`crate::system::System`]),
//!    `ds=nocloud;s=URL` (PXE), then EC2 IMDSv2 when enabled (`kiln.datasource=imds` on the command
//!    line, or an EC2 machine), where a 404 means no user data.
//!
//! Later sources win (see [`crate::config`]).

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::config::{NodeConfig, NodeSection};
use crate::net::{Http, NetError};
use crate::system::System;
use crate::userdata;

pub const NODE_YAML: &str = "etc/kiln/node.yaml";
pub const NODE_D: &str = "etc/kiln/node.d";
pub const CMDLINE: &str = "proc/cmdline";
pub const NOCLOUD_SEED: &str = "var/lib/cloud/seed/nocloud";

/// Datasource settings that are not in the root.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `http://169.254.169.254` on EC2; tests point it at 127.0.0.1.
    pub imds: String,
    pub timeout: Duration,
    pub retries: u32,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            imds: "http://169.254.169.254".into(),
            timeout: Duration::from_secs(5),
            retries: 3,
        }
    }
}

/// Gather and merge the node configuration from every source.
pub fn gather(root: &Path, ep: &Endpoints, sys: &mut dyn System) -> Result<NodeConfig> {
    let mut cfg = NodeConfig::default();
    local_files(root, &mut cfg)?;
    let cmdline = fs::read_to_string(root.join(CMDLINE)).unwrap_or_default();
    let args = parse_cmdline(&cmdline);
    let http = Http::new(ep.timeout, ep.retries);
    if let Some(src) = arg(&args, "kiln.config") {
        let origin = format!("kiln.config={src}");
        let bytes = if src.starts_with("http://") || src.starts_with("https://") {
            http.request("GET", src, &[]).map_err(|e| anyhow!("{origin}: {e}"))?
        } else {
            let p = root.join(src.trim_start_matches('/'));
            fs::read(&p).with_context(|| format!("{origin}: cannot read {}", p.display()))?
        };
        node_section_or_user_data(&bytes, &origin, &mut cfg)?;
    }
    // The first datasource with user data.
    let seed = root.join(NOCLOUD_SEED);
    if seed.join("user-data").is_file() {
        nocloud_dir(&seed, &format!("NoCloud seed /{NOCLOUD_SEED}"), &mut cfg)?;
    } else if let Some(dir) = sys.mount_cidata(root)? {
        nocloud_dir(&dir, "NoCloud filesystem labelled cidata", &mut cfg)?;
    } else if let Some(url) = arg(&args, "ds").and_then(nocloud_url) {
        let base = url.trim_end_matches('/');
        let origin = format!("NoCloud ds=nocloud;s={url}");
        match http.request("GET", &format!("{base}/user-data"), &[]) {
            Ok(bytes) => userdata::apply(&bytes, &format!("{origin} user-data"), &mut cfg)?,
            Err(NetError::NotFound { .. }) => tracing::info!("{origin}: no user-data"),
            Err(e) => return Err(anyhow!("{origin}: {e}")),
        }
    } else if imds_enabled(root, &args) {
        imds(&http, &ep.imds, &mut cfg)?;
    }
    // Checked here, before anything is written: a bad value must not reach a rendered file.
    cfg.node.validate().map_err(|e| {
        anyhow!(
            "node configuration ({}): {e}",
            if cfg.sources.is_empty() {
                "no sources".to_string()
            } else {
                cfg.sources.join(", ")
            }
        )
    })?;
    Ok(cfg)
}

fn local_files(root: &Path, cfg: &mut NodeConfig) -> Result<()> {
    let mut files = Vec::new();
    let main = root.join(NODE_YAML);
    if main.is_file() {
        files.push(main);
    }
    if let Ok(dir) = fs::read_dir(root.join(NODE_D)) {
        let mut more: Vec<_> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let text = fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let origin = format!("/{}", f.strip_prefix(root).unwrap_or(&f).display());
        let section: NodeSection = kiln_bundle::yaml::from_str(&text, &origin)?;
        cfg.add(&origin, section);
    }
    Ok(())
}

/// `kiln.config` may point at a bare node section or at user data.
fn node_section_or_user_data(bytes: &[u8], origin: &str, cfg: &mut NodeConfig) -> Result<()> {
    let text = String::from_utf8_lossy(bytes);
    let head = text.trim_start();
    if head.starts_with("#cloud-config") || head.starts_with("Content-Type") || bytes.starts_with(&[0x1f, 0x8b]) {
        userdata::apply(bytes, origin, cfg)?;
    } else {
        let section: NodeSection = kiln_bundle::yaml::from_str(&text, origin)?;
        cfg.add(origin, section);
    }
    Ok(())
}

fn nocloud_dir(dir: &Path, origin: &str, cfg: &mut NodeConfig) -> Result<()> {
    let ud = dir.join("user-data");
    let bytes = fs::read(&ud).with_context(|| format!("{origin}: cannot read {}", ud.display()))?;
    userdata::apply(&bytes, &format!("{origin} user-data"), cfg)?;
    // meta-data's local-hostname is the fallback host name.
    if cfg.node.hostname.is_none() {
        if let Ok(meta) = fs::read_to_string(dir.join("meta-data")) {
            if let Some(h) = meta.lines().find_map(|l| l.strip_prefix("local-hostname:")) {
                cfg.node.hostname = Some(h.trim().trim_matches(['"', '\'']).to_string());
            }
        }
    }
    Ok(())
}

fn imds(http: &Http, base: &str, cfg: &mut NodeConfig) -> Result<()> {
    let base = base.trim_end_matches('/');
    let token = http
        .request(
            "PUT",
            &format!("{base}/latest/api/token"),
            &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
        )
        .map_err(|e| anyhow!("IMDSv2 token: {e}"))?;
    let token = String::from_utf8(token).map_err(|_| anyhow!("IMDSv2 token is not text"))?;
    match http.request(
        "GET",
        &format!("{base}/latest/user-data"),
        &[("X-aws-ec2-metadata-token", token.trim())],
    ) {
        Ok(bytes) => userdata::apply(&bytes, "IMDS user-data", cfg)?,
        Err(NetError::NotFound { .. }) => tracing::info!("IMDS: the instance has no user data"),
        Err(e) => return Err(anyhow!("IMDS user-data: {e}")),
    }
    Ok(())
}

fn imds_enabled(root: &Path, args: &[(String, Option<String>)]) -> bool {
    if arg(args, "kiln.datasource") == Some("imds") {
        return true;
    }
    let vendor = fs::read_to_string(root.join("sys/class/dmi/id/sys_vendor")).unwrap_or_default();
    let board = fs::read_to_string(root.join("sys/class/dmi/id/board_vendor")).unwrap_or_default();
    vendor.contains("Amazon") || board.contains("Amazon")
}

/// Kernel command line words as `(key, value)`, honouring double quotes.
pub fn parse_cmdline(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars().chain(std::iter::once(' ')) {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    let word = std::mem::take(&mut cur);
                    match word.split_once('=') {
                        Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
                        None => out.push((word, None)),
                    }
                }
            }
            c => cur.push(c),
        }
    }
    out
}

fn arg<'a>(args: &'a [(String, Option<String>)], key: &str) -> Option<&'a str> {
    args.iter()
        .rev()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_deref())
}

/// `nocloud;s=http://host/path/` (or `nocloud-net;seedfrom=...`) -> the seed URL.
fn nocloud_url(ds: &str) -> Option<&str> {
    let mut parts = ds.split(';');
    let kind = parts.next()?;
    if kind != "nocloud" && kind != "nocloud-net" {
        return None;
    }
    parts.find_map(|p| p.strip_prefix("s=").or_else(|| p.strip_prefix("seedfrom=")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_command_line() {
        let a = parse_cmdline("BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro quiet \"ds=nocloud;s=http://10.0.0.1/seed/\" kiln.config=/etc/x.yaml\n");
        assert_eq!(arg(&a, "kiln.config"), Some("/etc/x.yaml"));
        assert_eq!(arg(&a, "ds").and_then(nocloud_url), Some("http://10.0.0.1/seed/"));
        assert_eq!(arg(&a, "ro"), None);
        assert_eq!(nocloud_url("ec2"), None);
        assert_eq!(nocloud_url("nocloud-net;seedfrom=http://x/"), Some("http://x/"));
    }
}
