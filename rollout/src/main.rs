//! `kubectl-kiln` (run as `kubectl kiln ...`): arguments and exit codes; the work is in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kiln_rollout::drain::{self, DrainArgs};
use kiln_rollout::plan::DrainOptions;

#[derive(Parser)]
#[command(name = "kubectl-kiln", version, about = "Drain, replace and roll kiln nodes")]
struct Cli {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config)
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Wide,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Cordon nodes and evict their pods (kubectl drain semantics)
    Drain {
        nodes: Vec<String>,
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
        /// Give up after this many seconds (0: no limit)
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// Give up on one pod after this many seconds
        #[arg(long)]
        pod_timeout: Option<u64>,
        /// Only pods matching this label selector
        #[arg(long)]
        pod_selector: Option<String>,
        /// Skip pods whose deletion started more than this many seconds ago
        #[arg(long, default_value_t = 0)]
        skip_wait_for_delete_timeout: i64,
        /// Delete pods instead of evicting them (ignores PodDisruptionBudgets)
        #[arg(long)]
        disable_eviction: bool,
        /// Only print what would happen
        #[arg(long)]
        dry_run: bool,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kubectl-kiln: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = kiln_rollout::client(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
    match cli.command {
        Command::Cordon { nodes } => {
            for n in nodes {
                drain::set_unschedulable(&client, &n, true).await?;
                println!("node/{n} cordoned");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Uncordon { nodes } => {
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
            ignore_daemonsets,
            delete_emptydir_data,
            force,
            grace_period,
            timeout,
            pod_timeout,
            pod_selector,
            skip_wait_for_delete_timeout,
            disable_eviction,
            dry_run,
            output,
        } => {
            let args = DrainArgs {
                options: DrainOptions {
                    ignore_daemonsets,
                    delete_emptydir_data,
                    force,
                    skip_wait_for_delete_timeout,
                },
                grace_period,
                timeout: if timeout == 0 {
                    Duration::from_secs(u64::MAX / 4)
                } else {
                    Duration::from_secs(timeout)
                },
                pod_timeout: pod_timeout.map(Duration::from_secs),
                pod_selector,
                disable_eviction,
                dry_run,
            };
            let live = std::io::stderr().is_terminal();
            let progress = move |line: &str| {
                if live {
                    eprintln!("{line}");
                }
            };
            let mut reports = Vec::new();
            for n in &nodes {
                reports.push(drain::drain(&client, n, &args, &progress).await?);
            }
            let ok = reports.iter().all(|r| r.ok());
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    for d in &r.skipped {
                        println!("{}: skipped {} ({})", r.node, d.pod, d.reason);
                    }
                    for d in &r.evicted {
                        let verb = if dry_run { "would evict" } else { "evicted" };
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
                    }
                }
            }
            // Never a success while a pod is still there.
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
