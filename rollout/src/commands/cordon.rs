//! `kubectl kiln cordon|uncordon NODE...`.

use std::process::ExitCode;

use clap::Args;

use crate::drain;

/// The nodes a cordon or uncordon names.
#[derive(Args)]
pub struct NodesCmd {
    pub nodes: Vec<String>,
}

/// Mark every node unschedulable (`cordon`) or schedulable again, once all of them exist.
pub async fn run(client: &kube::Client, cmd: NodesCmd, unschedulable: bool) -> anyhow::Result<ExitCode> {
    drain::check_nodes(client, &cmd.nodes).await?;
    let done = if unschedulable { "cordoned" } else { "uncordoned" };
    for n in cmd.nodes {
        drain::set_unschedulable(client, &n, unschedulable).await?;
        println!("node/{n} {done}");
    }
    Ok(ExitCode::SUCCESS)
}
