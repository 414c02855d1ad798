//! `kubectl-kiln` (run as `kubectl kiln ...`): arguments and exit codes; the work is in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kiln_rollout::drain::{self, DrainArgs, DryRun};
use kiln_rollout::plan::DrainOptions;
use kiln_rollout::replace::{self, parse_duration, Hook, NodeOutcome, ReplaceArgs, RollArgs};

#[derive(Parser)]
#[command(name = "kubectl-kiln", version, about = "Drain, replace and roll kiln nodes")]
struct Cli {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config)
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use
    #[arg(long, global = true)]
    context: Option<String>,
    /// Record Kubernetes Events (events.k8s.io/v1) on the nodes drained, replaced and rolled
    #[arg(long, global = true, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    events: bool,
    #[command(subcommand)]
    command: Command,
}

/// `--dry-run=none|client|server`, as kubectl spells it.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DryRunFlag {
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

/// What a roll does with a drain that stays blocked.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum BlockedDrain {
    Halt,
    Delete,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Wide,
    Json,
}

/// How pods leave a node: `kubectl drain`'s flags.
#[derive(Args, Clone)]
struct DrainFlags {
    /// Leave DaemonSet-managed pods alone
    #[arg(long)]
    ignore_daemonsets: bool,
    /// Evict pods with emptyDir volumes (their data is lost)
    #[arg(long)]
    delete_emptydir_data: bool,
    /// Evict pods that no controller manages
    #[arg(long)]
    force: bool,
    /// Seconds each pod gets to terminate (default: the pod's own)
    #[arg(long)]
    grace_period: Option<i64>,
    /// Give up on the drain after this long: 90, 90s, 5m (0: no limit)
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    timeout: Duration,
    /// Give up on one pod after this long
    #[arg(long, value_parser = parse_duration)]
    pod_timeout: Option<Duration>,
    /// Only pods matching this label selector
    #[arg(long)]
    pod_selector: Option<String>,
    /// Skip pods whose deletion started more than this many seconds ago
    #[arg(long, default_value_t = 0)]
    skip_wait_for_delete_timeout: i64,
    /// Delete pods instead of evicting them (ignores PodDisruptionBudgets)
    #[arg(long)]
    disable_eviction: bool,
}

impl DrainFlags {
    fn args(&self, dry_run: DryRun) -> DrainArgs {
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

#[derive(Subcommand)]
enum Command {
    /// Cordon nodes and evict their pods (kubectl drain semantics)
    Drain {
        nodes: Vec<String>,
        #[command(flatten)]
        flags: DrainFlags,
        /// none: drain; client: only print what would happen; server: the API server checks
        /// the cordon and every eviction (PodDisruptionBudgets apply) and nothing changes.
        /// `--dry-run` alone is `client`.
        #[arg(long, value_enum, default_value_t = DryRunFlag::None, num_args = 0..=1, default_missing_value = "client", require_equals = true)]
        dry_run: DryRunFlag,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Cordon nodes
    Cordon { nodes: Vec<String> },
    /// Make nodes schedulable again
    Uncordon { nodes: Vec<String> },
    /// Nodes with their bundle, runtime and kubelet versions, and the version skew
    Status {
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Wait until NEW is Ready on the expected bundle, then drain and delete OLD
    Replace {
        old: String,
        /// The node that takes OLD's place
        #[arg(long = "with", value_name = "NEW")]
        new: String,
        /// The bundle version NEW must run (default: any kiln bundle)
        #[arg(long)]
        bundle: Option<String>,
        /// How long NEW may take to become Ready
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        ready_timeout: Duration,
        /// Run after OLD is deleted, with KILN_NODE=OLD and KILN_REPLACEMENT=NEW (no shell)
        #[arg(long)]
        decommission_cmd: Option<Hook>,
        /// How long a command may run
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        command_timeout: Duration,
        #[command(flatten)]
        flags: DrainFlags,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Replace every node of a pool that is not on the target bundle, surge-first; or, with
    /// --in-place, reprovision each node under its own name. `roll status|pause|resume -l SEL`
    /// show and steer a pool's roll from anywhere
    Roll(Box<RollCmd>),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct RollCmd {
    #[command(subcommand)]
    action: Option<RollAction>,
    #[command(flatten)]
    run: RollRun,
}

#[derive(Subcommand)]
enum RollAction {
    /// The pool's roll from the cluster alone: who holds its Lease, whether it is paused, each
    /// node's phase, for how long, and why a halted node stopped
    Status {
        #[arg(short = 'l', long)]
        selector: String,
        #[arg(long, default_value = kiln_rollout::lease::DEFAULT_NAMESPACE)]
        lease_namespace: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Pause the pool's roll wherever it runs: nodes in flight finish, no new node starts (a roll
    /// started later starts paused)
    Pause {
        #[arg(short = 'l', long)]
        selector: String,
        #[arg(long, default_value = kiln_rollout::lease::DEFAULT_NAMESPACE)]
        lease_namespace: String,
    },
    /// Let a paused roll go on
    Resume {
        #[arg(short = 'l', long)]
        selector: String,
        #[arg(long, default_value = kiln_rollout::lease::DEFAULT_NAMESPACE)]
        lease_namespace: String,
    },
}

#[derive(Args)]
struct RollRun {
    /// The pool: a node label selector
    #[arg(short = 'l', long, required = true)]
    selector: Option<String>,
    /// The bundle version (kiln.dev/bundle-version) the pool moves to
    #[arg(long, required = true)]
    to_bundle: Option<String>,
    /// Creates one replacement node; runs with KILN_NODE (the old node), KILN_TARGET_BUNDLE and
    /// KILN_SELECTOR (no shell). If its last output line is a node name, that node is awaited.
    #[arg(long)]
    provision_cmd: Option<Hook>,
    /// Run after an old node is deleted, with KILN_NODE and KILN_REPLACEMENT (no shell)
    #[arg(long)]
    decommission_cmd: Option<Hook>,
    /// Keep every node: cordon, drain, run --reprovision-cmd, wait until the same Node is
    /// Ready on the target bundle after a new boot (its bootID changed), uncordon
    #[arg(long, requires = "reprovision_cmd")]
    in_place: bool,
    /// In place: reimages or updates one drained node and reboots it; runs with KILN_NODE,
    /// KILN_TARGET_BUNDLE, KILN_SELECTOR and KILN_BOOT_ID (its bootID before; no shell)
    #[arg(long, requires = "in_place")]
    reprovision_cmd: Option<Hook>,
    /// Replacements in flight at once (extra nodes above the pool's size) [default: 1; 0 in place]
    #[arg(long)]
    max_surge: Option<usize>,
    /// Nodes that may be out of service at once: drained before their replacement is Ready,
    /// or being reprovisioned in place [default: 0; 1 in place]
    #[arg(long)]
    max_unavailable: Option<usize>,
    /// How long a replacement (in place: the node itself) may take to become Ready; past it
    /// the roll halts
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    ready_timeout: Duration,
    /// How long a command may run
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    command_timeout: Duration,
    #[command(flatten)]
    flags: DrainFlags,
    /// A drain still blocked at --timeout (or by a budget that never allows): `halt` the roll,
    /// the node left cordoned; `delete` the remaining pods as --disable-eviction does, their
    /// budgets notwithstanding, recorded in a DrainForced Event
    #[arg(long, value_enum, default_value_t = BlockedDrain::Halt)]
    on_blocked_drain: BlockedDrain,
    /// Roll this many nodes first, soak them, and only then the rest of the pool (0: no canary)
    #[arg(long, default_value_t = 0)]
    canary: usize,
    /// How long the canary nodes are watched (Ready throughout, no container restarts) before
    /// the rest follows
    #[arg(long, default_value = "5m", value_parser = parse_duration, requires = "canary")]
    soak: Duration,
    /// Run at the end of the soak with KILN_CANARY_NODES (comma-separated), KILN_TARGET_BUNDLE
    /// and KILN_SELECTOR (no shell); a non-zero exit halts the roll before the rest
    #[arg(long, requires = "canary")]
    soak_check: Option<Hook>,
    /// Serve the roll's Prometheus metrics at http://ADDR/metrics while it runs (nodes to roll,
    /// in flight, replaced, halted; paused, halted; drain durations): host:port, or :port for
    /// every address
    #[arg(long, value_name = "ADDR", value_parser = kiln_rollout::metrics::parse_bind_address)]
    metrics_bind_address: Option<std::net::SocketAddr>,
    /// Print the plan and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Namespace of the Lease that lets one roll at a time replace this pool
    #[arg(long, default_value = kiln_rollout::lease::DEFAULT_NAMESPACE)]
    lease_namespace: String,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

fn main() -> ExitCode {
    kiln_bundle::term::end_quietly_on_closed_pipe();
    let cli = Cli::parse();
    // Quiet like kubectl: kube-rs's own error logs would repeat the one error line below.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kiln_rollout=warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(kiln_bundle::term::color_stderr())
        .with_env_filter(filter)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", kiln_rollout::kubectl_error(&e));
            ExitCode::from(1)
        }
    }
}

/// kubectl's answer to a command that names no node: its usage line, exit 1.
fn usage(verb: &str) -> ExitCode {
    eprintln!("error: USAGE: kubectl kiln {verb} NODE [flags]\nSee 'kubectl kiln {verb} -h' for help and examples");
    ExitCode::from(1)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verb = match &cli.command {
        Command::Drain { .. } => "drain",
        Command::Cordon { .. } => "cordon",
        Command::Uncordon { .. } => "uncordon",
        Command::Status { .. } => "status",
        Command::Replace { .. } => "replace",
        Command::Roll(_) => "roll",
    };
    if let Command::Drain { nodes, .. } | Command::Cordon { nodes } | Command::Uncordon { nodes } = &cli.command {
        if nodes.is_empty() {
            return Ok(usage(verb));
        }
    }
    let client = kiln_rollout::client(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
    let writes = matches!(
        cli.command,
        Command::Drain { .. } | Command::Replace { .. } | Command::Roll(_)
    );
    let recorder = (cli.events && writes)
        .then(|| kiln_rollout::events::start(&client))
        .flatten();
    let code = run_verb(cli.command, &client).await;
    if let Some(r) = recorder {
        let st = r.finish(Duration::from_secs(10)).await;
        if st.failed > 0 {
            eprintln!(
                "warning: {} of {} Events could not be written (see the messages above); the nodes are as reported",
                st.failed,
                st.failed + st.written
            );
        }
    }
    code
}

async fn run_verb(command: Command, client: &kube::Client) -> anyhow::Result<ExitCode> {
    let client = client.clone();
    match command {
        Command::Cordon { nodes } => {
            drain::check_nodes(&client, &nodes).await?;
            for n in nodes {
                drain::set_unschedulable(&client, &n, true).await?;
                println!("node/{n} cordoned");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Uncordon { nodes } => {
            drain::check_nodes(&client, &nodes).await?;
            for n in nodes {
                drain::set_unschedulable(&client, &n, false).await?;
                println!("node/{n} uncordoned");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { selector, output } => {
            let s = kiln_rollout::status::status(&client, selector.as_deref()).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", kiln_rollout::status::render(&s, output == Output::Wide));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain {
            nodes,
            flags,
            dry_run,
            output,
        } => {
            let dry_run = DryRun::from(dry_run);
            let args = flags.args(dry_run);
            let mut reports = Vec::new();
            for n in &nodes {
                let live = Live::new(n);
                reports.push(drain::drain(&client, n, &args, &|l| live.line(l)).await?);
                live.done();
            }
            let ok = reports.iter().all(|r| r.ok());
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    print_drain(r, dry_run != DryRun::None, flags.disable_eviction);
                }
            }
            // Never a success while a pod is still there.
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Replace {
            old,
            new,
            bundle,
            ready_timeout,
            decommission_cmd,
            command_timeout,
            flags,
            output,
        } => {
            let args = ReplaceArgs {
                old,
                new,
                bundle,
                ready_timeout,
                command_timeout,
                decommission: decommission_cmd,
                drain: flags.args(DryRun::None),
            };
            let o = replace::replace(&client, &args, &|l| eprintln!("{l}")).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&o)?);
            } else {
                print_outcome(&o);
            }
            Ok(if o.result == replace::Outcome::Replaced {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Roll(roll) => match *roll {
            RollCmd {
                action: Some(action), ..
            } => roll_control(&client, action).await,
            RollCmd {
                action: None,
                run:
                    RollRun {
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
                    },
            } => {
                if on_blocked_drain == BlockedDrain::Delete && flags.timeout.is_zero() {
                    anyhow::bail!(
                        "--on-blocked-drain=delete needs a drain --timeout: without one a blocked drain waits forever"
                    );
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
                    let nodes = replace::pool(&client, &args.selector).await?;
                    let plan = replace::plan_roll(&nodes, &args.selector, &args.target, args.in_place())?;
                    if output == Output::Json {
                        println!("{}", serde_json::to_string_pretty(&plan)?);
                    } else {
                        print!("{}", plan.render(&args));
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                let started = std::time::Instant::now();
                let r = replace::roll(&client, &args, &|l| {
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
        },
    }
}

/// `roll status|pause|resume`.
async fn roll_control(client: &kube::Client, action: RollAction) -> anyhow::Result<ExitCode> {
    match action {
        RollAction::Pause {
            selector,
            lease_namespace,
        } => {
            let who = kiln_rollout::lease::identity();
            kiln_rollout::lease::set_paused(client, &lease_namespace, &selector, Some(&who)).await?;
            println!("roll of {selector} paused");
            Ok(ExitCode::SUCCESS)
        }
        RollAction::Resume {
            selector,
            lease_namespace,
        } => {
            kiln_rollout::lease::set_paused(client, &lease_namespace, &selector, None).await?;
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

fn print_outcome(o: &NodeOutcome) {
    let with = match (&o.replacement, o.result) {
        (Some(r), replace::Outcome::Replaced) => format!(" by {r}"),
        (Some(r), _) => format!(" (replacement {r})"),
        (None, _) => match &o.boot_id {
            Some(b) => format!(" (bootID {b})"),
            None => String::new(),
        },
    };
    let msg = o.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
    println!("{}: {}{with}{msg}", o.node, o.result.as_str());
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
