//! `kubectl kiln drain NODE...`: cordon, then evict (kubectl drain's semantics and flags).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::flags::{DrainFlags, DryRunFlag, Output};
use crate::drain::{self, DryRun};

#[derive(Args)]
pub struct DrainCmd {
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub flags: DrainFlags,
    /// none: drain; client: only print what would happen; server: the API server checks
    /// the cordon and every eviction (PodDisruptionBudgets apply) and nothing changes.
    /// `--dry-run` alone is `client`.
    #[arg(long, value_enum, default_value_t = DryRunFlag::None, num_args = 0..=1, default_missing_value = "client", require_equals = true)]
    pub dry_run: DryRunFlag,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Drain each node in turn; exit 1 while any pod is still there.
pub async fn run(client: &kube::Client, cmd: DrainCmd) -> anyhow::Result<ExitCode> {
    let dry_run = DryRun::from(cmd.dry_run);
    let args = cmd.flags.args(dry_run);
    let mut reports = Vec::new();
    for n in &cmd.nodes {
        let live = Live::new(n);
        reports.push(drain::drain(client, n, &args, &|l| live.line(l)).await?);
        live.done();
    }
    let ok = reports.iter().all(|r| r.ok());
    if cmd.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            print_drain(r, dry_run != DryRun::None, cmd.flags.disable_eviction);
        }
    }
    // Never a success while a pod is still there.
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_drain(r: &drain::Report, dry_run: bool, deleted: bool) {
    for d in &r.skipped {
        println!("{}: skipped {} ({})", r.node, d.pod, d.reason);
    }
    for d in &r.evicted {
        let verb = match (dry_run, deleted) {
            (true, false) => "would evict",
            (true, true) => "would delete",
            (false, false) => "evicted",
            (false, true) => "deleted",
        };
        let note = if d.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", d.reason)
        };
        println!("{}: {verb} {}{note}", r.node, d.pod);
    }
    for d in &r.blocked {
        println!("{}: NOT drained: {} ({})", r.node, d.pod, d.reason);
    }
    if r.ok() && !dry_run {
        println!("node/{} drained", r.node);
    } else if !dry_run {
        println!(
            "node/{} left cordoned: `kubectl kiln uncordon {}` makes it schedulable again",
            r.node, r.node
        );
    }
}

/// A drain's live display on a terminal: one status line counting pods gone, with the latest
/// event; off a terminal, one line per event on standard error.
struct Live {
    bar: Option<indicatif::ProgressBar>,
    node: String,
}

impl Live {
    fn new(node: &str) -> Live {
        if !std::io::stderr().is_terminal() {
            return Live {
                bar: None,
                node: node.to_string(),
            };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix} {pos} pods gone [{elapsed}] {wide_msg}")
                .expect("a valid template"),
        );
        bar.set_prefix(format!("draining {node}:"));
        bar.enable_steady_tick(Duration::from_millis(120));
        Live {
            bar: Some(bar),
            node: node.to_string(),
        }
    }

    fn line(&self, l: &str) {
        match &self.bar {
            Some(bar) => {
                if l.ends_with(": gone") {
                    bar.inc(1);
                }
                bar.set_message(l.to_string());
            }
            // Off a terminal (a CI log, a pipe): a line per event, as kubectl prints them.
            None => eprintln!("{}: {l}", self.node),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
