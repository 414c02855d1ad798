//! `kiln`: the bundle builder's command line. Arguments are parsed here; everything else lives in
//! the library, and the exit code and the one-line error come from one place.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    kiln_bundle::term::end_quietly_on_closed_pipe();
    let cli = kiln_builder::cli::Cli::parse();
    kiln_builder::cli::init_logging(cli.verbose);
    match kiln_builder::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
