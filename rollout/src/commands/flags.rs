//! Flags more than one verb takes: output format, `--dry-run`, and kubectl drain's own.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::drain::{DrainArgs, DryRun};
use crate::plan::DrainOptions;
use crate::replace::parse_duration;

/// `--dry-run=none|client|server`, as kubectl spells it.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DryRunFlag {
    None,
    Client,
    Server,
}

impl From<DryRunFlag> for DryRun {
    fn from(f: DryRunFlag) -> DryRun {
        match f {
            DryRunFlag::None => DryRun::None,
            DryRunFlag::Client => DryRun::Client,
            DryRunFlag::Server => DryRun::Server,
        }
    }
}

/// `-o table|wide|json`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Json,
}

/// How pods leave a node: `kubectl drain`'s flags.
#[derive(Args, Clone)]
pub struct DrainFlags {
    /// Leave DaemonSet-managed pods alone
    #[arg(long)]
    pub ignore_daemonsets: bool,
    /// Evict pods with emptyDir volumes (their data is lost)
    #[arg(long)]
    pub delete_emptydir_data: bool,
    /// Evict pods that no controller manages
    #[arg(long)]
    pub force: bool,
    /// Seconds each pod gets to terminate (default: the pod's own)
    #[arg(long)]
    pub grace_period: Option<i64>,
    /// Give up on the drain after this long: 90, 90s, 5m (0: no limit)
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Give up on one pod after this long
    #[arg(long, value_parser = parse_duration)]
    pub pod_timeout: Option<Duration>,
    /// Only pods matching this label selector
    #[arg(long)]
    pub pod_selector: Option<String>,
    /// Skip pods whose deletion started more than this many seconds ago
    #[arg(long, default_value_t = 0)]
    pub skip_wait_for_delete_timeout: i64,
    /// Delete pods instead of evicting them (ignores PodDisruptionBudgets)
    #[arg(long)]
    pub disable_eviction: bool,
}

impl DrainFlags {
    pub fn args(&self, dry_run: DryRun) -> DrainArgs {
        DrainArgs {
            options: DrainOptions {
                ignore_daemonsets: self.ignore_daemonsets,
                delete_emptydir_data: self.delete_emptydir_data,
                force: self.force,
                skip_wait_for_delete_timeout: self.skip_wait_for_delete_timeout,
            },
            grace_period: self.grace_period,
            timeout: if self.timeout.is_zero() {
                Duration::from_secs(u64::MAX / 4)
            } else {
                self.timeout
            },
            pod_timeout: self.pod_timeout,
            pod_selector: self.pod_selector.clone(),
            disable_eviction: self.disable_eviction,
            dry_run,
            delete_when_blocked: false,
        }
    }
}
