//! `kiln keygen`: a minisign key pair for signing bundles.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{password_from_env, KeygenArgs};

pub fn run(a: &KeygenArgs) -> Result<ExitCode> {
    let password = password_from_env(a.password_env.as_deref())?;
    let (sk, pk) = crate::signing::keygen(&a.output, password, a.force)?;
    println!("secret key: {}", sk.display());
    println!("public key: {}", pk.display());
    Ok(ExitCode::SUCCESS)
}
