//! `kubectl kiln roll -l SEL --to-bundle B`: move a pool to a bundle, surge-first or in place;
//! `roll status|pause|resume -l SEL` show and steer a pool's roll from anywhere.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::flags::{DrainFlags, Output};
use super::replace::print_outcome;
use crate::drain::DryRun;
use crate::replace::{self, parse_duration, Hook, RollArgs};

/// What a roll does with a drain that stays blocked.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BlockedDrain {
    Halt,
    Delete,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RollCmd {
    #[command(subcommand)]
    pub action: Option<RollAction>,
    #[command(flatten)]
    pub run: RollRun,
}

#[derive(Subcommand)]
pub enum RollAction {
    /// The pool's roll from the cluster alone: who holds its Lease, whether it is paused, each
    /// node's phase, for how long, and why a halted node stopped
    Status {
        #[arg(short = 'l', long)]
        selector: String,
        #[arg(long, default_value = crate::lease::DEFAULT_NAMESPACE)]
        lease_namespace: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Pause the pool's roll wherever it runs: nodes in flight finish, no new node starts (a roll
    /// started later starts paused)
    Pause {
        #[arg(short = 'l', long)]
        selector: String,
        #[arg(long, default_value = crate::lease::DEFAULT_NAMESPACE)]
        lease_namespace: String,
    },
    /// Let a paused roll go on
    Resume {
        #[arg(short = 'l', long)]
        selector: String,
        #[arg(long, default_value = crate::lease::DEFAULT_NAMESPACE)]
        lease_namespace: String,
    },
}

#[derive(Args)]
pub struct RollRun {
    /// The pool: a node label selector
    #[arg(short = 'l', long, required = true)]
    pub selector: Option<String>,
    /// The bundle version (kiln.dev/bundle-version) the pool moves to
    #[arg(long, required = true)]
    pub to_bundle: Option<String>,
    /// Creates one replacement node; runs with KILN_NODE (the old node), KILN_TARGET_BUNDLE and
    /// KILN_SELECTOR (no shell). If its last output line is a node name, that node is awaited.
    #[arg(long)]
    pub provision_cmd: Option<Hook>,
    /// Run after an old node is deleted, with KILN_NODE and KILN_REPLACEMENT (no shell)
    #[arg(long)]
    pub decommission_cmd: Option<Hook>,
    /// Keep every node: cordon, drain, run --reprovision-cmd, wait until the same Node is
    /// Ready on the target bundle after a new boot (its bootID changed), uncordon
    #[arg(long, requires = "reprovision_cmd")]
    pub in_place: bool,
    /// In place: reimages or updates one drained node and reboots it; runs with KILN_NODE,
    /// KILN_TARGET_BUNDLE, KILN_SELECTOR and KILN_BOOT_ID (its bootID before; no shell)
    #[arg(long, requires = "in_place")]
    pub reprovision_cmd: Option<Hook>,
    /// Replacements in flight at once (extra nodes above the pool's size) [default: 1; 0 in place]
    #[arg(long)]
    pub max_surge: Option<usize>,
    /// Nodes that may be out of service at once: drained before their replacement is Ready,
    /// or being reprovisioned in place [default: 0; 1 in place]
    #[arg(long)]
    pub max_unavailable: Option<usize>,
    /// How long a replacement (in place: the node itself) may take to become Ready; past it
    /// the roll halts
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// How long a command may run
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub command_timeout: Duration,
    #[command(flatten)]
    pub flags: DrainFlags,
    /// A drain still blocked at --timeout (or by a budget that never allows): `halt` the roll,
    /// the node left cordoned; `delete` the remaining pods as --disable-eviction does, their
    /// budgets notwithstanding, recorded in a DrainForced Event
    #[arg(long, value_enum, default_value_t = BlockedDrain::Halt)]
    pub on_blocked_drain: BlockedDrain,
    /// Roll this many nodes first, soak them, and only then the rest of the pool (0: no canary)
    #[arg(long, default_value_t = 0)]
    pub canary: usize,
    /// How long the canary nodes are watched (Ready throughout, no container restarts) before
    /// the rest follows
    #[arg(long, default_value = "5m", value_parser = parse_duration, requires = "canary")]
    pub soak: Duration,
    /// Run at the end of the soak with KILN_CANARY_NODES (comma-separated), KILN_TARGET_BUNDLE
    /// and KILN_SELECTOR (no shell); a non-zero exit halts the roll before the rest
    #[arg(long, requires = "canary")]
    pub soak_check: Option<Hook>,
    /// Serve the roll's Prometheus metrics at http://ADDR/metrics while it runs (nodes to roll,
    /// in flight, replaced, halted; paused, halted; drain durations): host:port, or :port for
    /// every address
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_bind_address)]
    pub metrics_bind_address: Option<std::net::SocketAddr>,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Namespace of the Lease that lets one roll at a time replace this pool
    #[arg(long, default_value = crate::lease::DEFAULT_NAMESPACE)]
    pub lease_namespace: String,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// A roll, or `roll status|pause|resume`.
pub async fn run(client: &kube::Client, cmd: RollCmd) -> anyhow::Result<ExitCode> {
    match cmd.action {
        Some(action) => control(client, action).await,
        None => roll(client, cmd.run).await,
    }
}

/// Roll the pool (or print its plan with `--dry-run`).
async fn roll(client: &kube::Client, run: RollRun) -> anyhow::Result<ExitCode> {
    let RollRun {
        selector,
        to_bundle,
        provision_cmd,
        decommission_cmd,
        in_place,
        reprovision_cmd,
        max_surge,
        max_unavailable,
        ready_timeout,
        command_timeout,
        flags,
        on_blocked_drain,
        canary,
        soak,
        soak_check,
        metrics_bind_address,
        dry_run,
        lease_namespace,
        output,
    } = run;

    if on_blocked_drain == BlockedDrain::Delete && flags.timeout.is_zero() {
        anyhow::bail!("--on-blocked-drain=delete needs a drain --timeout: without one a blocked drain waits forever");
    }
    let mut drain_args = flags.args(DryRun::None);
    drain_args.delete_when_blocked = on_blocked_drain == BlockedDrain::Delete;
    let args = RollArgs {
        selector: selector.expect("clap requires -l"),
        target: to_bundle.expect("clap requires --to-bundle"),
        max_surge: max_surge.unwrap_or(if in_place { 0 } else { 1 }),
        max_unavailable: max_unavailable.unwrap_or(if in_place { 1 } else { 0 }),
        ready_timeout,
        command_timeout,
        provision: provision_cmd,
        decommission: decommission_cmd,
        reprovision: reprovision_cmd,
        drain: drain_args,
        lease_namespace,
        canary,
        soak,
        soak_check,
        metrics_bind_address,
    };
    replace::validate(&args)?;
    if dry_run {
        let nodes = replace::pool(client, &args.selector).await?;
        let plan = replace::plan_roll(&nodes, &args.selector, &args.target, args.in_place())?;
        if output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print!("{}", plan.render(&args));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let started = std::time::Instant::now();
    let r = replace::roll(client, &args, &|l| {
        eprintln!("[{:>6.1}s] {l}", started.elapsed().as_secs_f64())
    })
    .await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for o in &r.nodes {
            print_outcome(o);
        }
        for d in &r.decommissioned {
            println!("{d}: decommissioned (left over from an interrupted roll)");
        }
        match &r.halted {
            Some(why) => println!("roll HALTED: {why}"),
            None => println!(
                "roll of {} to bundle {} done in {:.1}s",
                r.selector, r.target, r.seconds
            ),
        }
    }
    Ok(if r.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `roll status|pause|resume`.
async fn control(client: &kube::Client, action: RollAction) -> anyhow::Result<ExitCode> {
    match action {
        RollAction::Pause {
            selector,
            lease_namespace,
        } => {
            let who = crate::lease::identity();
            crate::lease::set_paused(client, &lease_namespace, &selector, Some(&who)).await?;
            println!("roll of {selector} paused");
            Ok(ExitCode::SUCCESS)
        }
        RollAction::Resume {
            selector,
            lease_namespace,
        } => {
            crate::lease::set_paused(client, &lease_namespace, &selector, None).await?;
            println!("roll of {selector} resumed");
            Ok(ExitCode::SUCCESS)
        }
        RollAction::Status {
            selector,
            lease_namespace,
            output,
        } => {
            let s = replace::roll_status(client, &selector, &lease_namespace).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", s.render());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
