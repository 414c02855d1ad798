//! `kubectl-kiln` (run as `kubectl kiln ...`): parse, then run the verb from the library
//! ([`kiln_rollout::commands`]); errors worded and exit codes as kubectl's.

use std::process::ExitCode;

use clap::Parser;
use kiln_rollout::commands::{self, Cli};

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
    match rt.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", kiln_rollout::kubectl_error(&e));
            ExitCode::from(1)
        }
    }
}
