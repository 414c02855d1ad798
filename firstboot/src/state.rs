//! `/var/lib/kiln/state.json`: what is active, from which bundle and configuration, how long each
//! step took, and the last result.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

pub use kiln_bundle::layout::root::STATE;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleId {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i128,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepTiming {
    pub step: String,
    pub ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub version: String,
    /// sha256 of the bundle file.
    pub digest: String,
    pub bundle: BundleId,
    pub config_digest: String,
    /// The rendered directory's name under /var/lib/kiln/rendered.
    pub rendered: String,
    pub result: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The version and rendered directory that were active before, for rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<(String, String)>,
    pub steps: Vec<StepTiming>,
    /// The configuration sources that were read.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The system's uptime in seconds when this state was written: on a first boot, the time from
    /// boot to the bundle being activated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<f64>,
    /// How the bundle's files are on the node: mounted from its verity image, or unpacked.
    #[serde(default)]
    pub mode: Mode,
    /// Why the bundle was unpacked although it has a verity image (no dm-verity on this node, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_reason: Option<String>,
    /// The Node this activation registers (bundles with a kubelet), for the health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeJoin>,
}

/// How an active bundle's files are on the node, as `state.json` and `kiln-firstboot status` spell it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Verified and unpacked into a writable directory (every bundle, every node).
    #[default]
    Unpack,
    /// The bundle's erofs image, mounted read-only through dm-verity: every read is checked
    /// against the root hash in the signed index.
    Verity,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Unpack => "unpack",
            Mode::Verity => "verity",
        })
    }
}

/// How the last activation ended, as `state.json` and `kiln-firstboot status` spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Active and healthy.
    Ok,
    /// Active at boot (`--phase boot`); the health check after the services start decides.
    PendingHealth,
    /// Failed, and rolled back where there was something to roll back to.
    Failed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::PendingHealth => "pending-health",
            Status::Failed => "failed",
        })
    }
}

/// What the health check waits for: the Node `name` Ready within `timeout_s`, then carrying
/// `labels` (the bundle's: kubelet applies `--node-labels` only when it creates the Node, so a
/// machine that comes back under an existing Node, reimaged or updated in place, gets them set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeJoin {
    pub name: String,
    pub timeout_s: u64,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// When kubelet was (re)started in this boot by the run that wrote this (RFC 3339): the Ready
    /// status must be reported at or after it (`lastHeartbeatTime`), since the bootID alone cannot
    /// tell a kubelet restarted in the same boot from the one before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The kubeconfig to check with, when not kiln's kubelet's (`/var/lib/kubelet/kubeconfig`):
    /// the old kubelet's, after an adoption rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
}

/// Seconds since boot, from /proc/uptime.
fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl State {
    pub fn load(root: &Path) -> Result<Option<State>> {
        let p = root.join(STATE);
        match std::fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| anyhow!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    pub fn write(&self, root: &Path) -> Result<()> {
        let p = root.join(STATE);
        let mut state = self.clone();
        state.uptime_s = uptime();
        let mut bytes = serde_json::to_vec_pretty(&state)?;
        bytes.push(b'\n');
        std::fs::create_dir_all(p.parent().expect("state has a parent"))
            .with_context(|| format!("cannot create {}", p.display()))?;
        kiln_bundle::atomic::write_file(&p, &bytes, 0o644)?;
        Ok(())
    }
}
