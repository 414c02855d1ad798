//! `kubectl kiln status`: nodes with their bundle, runtime and kubelet versions.

use std::process::ExitCode;

use clap::Args;

use super::flags::Output;

#[derive(Args)]
pub struct StatusCmd {
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub async fn run(client: &kube::Client, cmd: StatusCmd) -> anyhow::Result<ExitCode> {
    let s = crate::status::status(client, cmd.selector.as_deref()).await?;
    if cmd.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", crate::status::render(&s, cmd.output == Output::Wide));
    }
    Ok(ExitCode::SUCCESS)
}
