//! One module per `kubectl kiln` verb, each with its own arguments; [`run`] dispatches.

pub mod cordon;
pub mod drain;
pub mod flags;
pub mod replace;
pub mod roll;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kubectl-kiln", version, about = "Drain, replace and roll kiln nodes")]
pub struct Cli {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config)
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Record Kubernetes Events (events.k8s.io/v1) on the nodes drained, replaced and rolled
    #[arg(long, global = true, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub events: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Cordon nodes and evict their pods (kubectl drain semantics)
    Drain(drain::DrainCmd),
    /// Cordon nodes
    Cordon(cordon::NodesCmd),
    /// Make nodes schedulable again
    Uncordon(cordon::NodesCmd),
    /// Nodes with their bundle, runtime and kubelet versions, and the version skew
    Status(status::StatusCmd),
    /// Wait until NEW is Ready on the expected bundle, then drain and delete OLD
    Replace(replace::ReplaceCmd),
    /// Replace every node of a pool that is not on the target bundle, surge-first; or, with
    /// --in-place, reprovision each node under its own name. `roll status|pause|resume -l SEL`
    /// show and steer a pool's roll from anywhere
    Roll(Box<roll::RollCmd>),
}

impl Command {
    fn verb(&self) -> &'static str {
        match self {
            Command::Drain(_) => "drain",
            Command::Cordon(_) => "cordon",
            Command::Uncordon(_) => "uncordon",
            Command::Status(_) => "status",
            Command::Replace(_) => "replace",
            Command::Roll(_) => "roll",
        }
    }

    /// The nodes a verb that needs at least one names.
    fn named_nodes(&self) -> Option<&[String]> {
        match self {
            Command::Drain(d) => Some(&d.nodes),
            Command::Cordon(c) | Command::Uncordon(c) => Some(&c.nodes),
            _ => None,
        }
    }

    /// Whether the verb changes nodes (and so records Events).
    fn writes(&self) -> bool {
        matches!(self, Command::Drain(_) | Command::Replace(_) | Command::Roll(_))
    }
}

/// kubectl's answer to a command that names no node: its usage line, exit 1.
fn usage(verb: &str) -> ExitCode {
    eprintln!("error: USAGE: kubectl kiln {verb} NODE [flags]\nSee 'kubectl kiln {verb} -h' for help and examples");
    ExitCode::from(1)
}

/// Run the verb, with the Event recorder around the verbs that change nodes.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.command.named_nodes().is_some_and(|n| n.is_empty()) {
        return Ok(usage(cli.command.verb()));
    }
    let client = crate::client(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
    let recorder = (cli.events && cli.command.writes())
        .then(|| crate::events::start(&client))
        .flatten();
    let code = match cli.command {
        Command::Cordon(c) => cordon::run(&client, c, true).await,
        Command::Uncordon(c) => cordon::run(&client, c, false).await,
        Command::Status(s) => status::run(&client, s).await,
        Command::Drain(d) => drain::run(&client, d).await,
        Command::Replace(r) => replace::run(&client, r).await,
        Command::Roll(r) => roll::run(&client, *r).await,
    };
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
