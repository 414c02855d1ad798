//! The health phase: containerd and kubelet checked after their start, and the rollback to the
//! previous bundle when they fail.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use kiln_bundle::index::Index;

use crate::state::{NodeJoin, State, Status, StepTiming};
use crate::system::System;

use super::*;

/// The second half of a boot-time activation: health checks on the services the first half
/// queued, then the final state (and a rollback on failure).
pub(crate) fn health_phase(root: &Path, sys: &mut dyn System, opts: &Options) -> Result<Outcome> {
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
            crate::update::settle(root, &state.version, true)?;
            state.write(root)?;
            Ok(Outcome::Activated { version: state.version })
        }
        Err(e) => {
            let msg = format!("{e:#}");
            state.result = Status::Failed;
            state.error = Some(msg.clone());
            let rolled = rollback(root, sys, &before, &state.version)?;
            let was_trial = crate::update::settle(root, &state.version, false)?;
            state.write(root)?;
            if rolled.is_none() && was_trial {
                // An update tried at this boot, with nothing to flip back to in this boot (a
                // verity image is mounted only in the boot that mounted it): activate the last
                // healthy bundle now rather than leave the node broken until the next boot.
                let again = super::run(
                    root,
                    sys,
                    &Options {
                        phase: Phase::All,
                        ..opts.clone()
                    },
                );
                match again {
                    Ok(Outcome::Activated { version } | Outcome::AlreadyActive { version }) => bail!(
                        "bundle {} failed its health check ({msg}); activated {version} again",
                        state.version
                    ),
                    Ok(Outcome::Stopped { .. }) => bail!("bundle {} failed its health check ({msg})", state.version),
                    Err(e) => bail!(
                        "bundle {} failed its health check ({msg}), and activating the last healthy bundle failed too: {e:#}",
                        state.version
                    ),
                }
            }
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
pub(crate) fn health(
    root: &Path,
    sys: &mut dyn System,
    index: &Index,
    timeout: Duration,
    node: Option<&NodeJoin>,
) -> Result<()> {
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
pub(crate) fn rollback(
    root: &Path,
    sys: &mut dyn System,
    before: &Option<State>,
    failed: &str,
) -> Result<Option<String>> {
    let Some(prev) = before
        .as_ref()
        .filter(|s| s.result == Status::Ok && s.version != failed)
    else {
        return Ok(None);
    };
    let dir = root.join(BUNDLES).join(&prev.version);
    let rendered = root.join(RENDERED).join(&prev.rendered);
    // A verity image is mounted only in the boot that mounted it: after a reboot the previous
    // bundle's directory is an empty mount point, and there is nothing to roll back to.
    if !dir.join(kiln_bundle::index::INDEX_NAME).is_file() || !rendered.is_dir() {
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
