//! `kubectl kiln replace OLD --with NEW`: wait until NEW is Ready on the bundle, then drain and
//! delete OLD.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::flags::{DrainFlags, Output};
use crate::drain::DryRun;
use crate::replace::{self, parse_duration, Hook, NodeOutcome, ReplaceArgs};

#[derive(Args)]
pub struct ReplaceCmd {
    pub old: String,
    /// The node that takes OLD's place
    #[arg(long = "with", value_name = "NEW")]
    pub new: String,
    /// The bundle version NEW must run (default: any kiln bundle)
    #[arg(long)]
    pub bundle: Option<String>,
    /// How long NEW may take to become Ready
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// Run after OLD is deleted, with KILN_NODE=OLD and KILN_REPLACEMENT=NEW (no shell)
    #[arg(long)]
    pub decommission_cmd: Option<Hook>,
    /// How long a command may run
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub command_timeout: Duration,
    #[command(flatten)]
    pub flags: DrainFlags,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub async fn run(client: &kube::Client, cmd: ReplaceCmd) -> anyhow::Result<ExitCode> {
    let args = ReplaceArgs {
        old: cmd.old,
        new: cmd.new,
        bundle: cmd.bundle,
        ready_timeout: cmd.ready_timeout,
        command_timeout: cmd.command_timeout,
        decommission: cmd.decommission_cmd,
        drain: cmd.flags.args(DryRun::None),
    };
    let o = replace::replace(client, &args, &|l| eprintln!("{l}")).await?;
    if cmd.output == Output::Json {
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

/// One node's outcome, a line (shared with `roll`).
pub fn print_outcome(o: &NodeOutcome) {
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
