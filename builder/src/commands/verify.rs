//! `kiln verify BUNDLE`: the outer digest, the signature when a key is given, and every file against
//! the index, in one streaming pass. Every problem found is reported.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_bundle::digest::{parse_sha256sum, Sha256};
use kiln_bundle::reader::{verify_file, Expect, VerifyOnly};
use kiln_bundle::signature;
use kiln_bundle::writer::{minisig_path, read_sha256_beside, sha256_path};

use crate::cli::VerifyArgs;

pub fn run(a: &VerifyArgs) -> Result<ExitCode> {
    let expected = expected_digest(&a.bundle, a.sha256.as_deref())?;
    let key = a.key.as_deref().map(signature::load_public_key).transpose()?;
    let sig = match &key {
        Some(_) => {
            let p = a.signature.clone().unwrap_or_else(|| minisig_path(&a.bundle));
            Some(signature::load_signature(&p)?)
        }
        None => None,
    };
    let expect = Expect {
        sha256: expected,
        signature: key.as_ref().zip(sig.as_ref()),
    };
    let report = verify_file(&a.bundle, &expect, &mut VerifyOnly)?;
    for p in &report.problems {
        eprintln!("{}: {p}", a.bundle.display());
    }
    if !report.is_ok() {
        bail!(
            "{}: verification failed with {} problem(s)",
            a.bundle.display(),
            report.problems.len().max(1)
        );
    }
    let index = report.index.expect("ok report has an index");
    println!("{}: OK", a.bundle.display());
    println!(
        "  sha256     {}{}",
        report.sha256,
        if expected.is_some() {
            " (matches)"
        } else {
            " (no .sha256 to compare)"
        }
    );
    if key.is_some() {
        println!("  signature  valid");
    }
    println!("  files      {} verified against the index", index.files.len());
    if let Some(v) = &index.verity {
        let path = crate::verity::check_beside(&a.bundle, v)?;
        println!(
            "  verity     {} matches the index (dm-verity root hash {})",
            path.display(),
            v.root_hash
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn expected_digest(bundle: &Path, flag: Option<&str>) -> Result<Option<Sha256>> {
    match flag {
        Some(s) => match s.parse::<Sha256>() {
            Ok(d) => Ok(Some(d)),
            Err(_) => {
                let text = std::fs::read_to_string(s)
                    .with_context(|| format!("--sha256 {s}: neither a digest nor a readable file"))?;
                Ok(Some(parse_sha256sum(&text).map_err(|e| anyhow::anyhow!("{s}: {e}"))?))
            }
        },
        None => {
            let found = read_sha256_beside(bundle)?;
            if found.is_none() {
                tracing::warn!(
                    "{} not found; the outer digest is not checked",
                    sha256_path(bundle).display()
                );
            }
            Ok(found)
        }
    }
}
