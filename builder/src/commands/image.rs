//! `kiln image RECIPE --bundle BUNDLE -o OUT --format raw,qcow2,rootfs-tar,sysext`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cache::Cache;
use crate::cli::ImageArgs;
use crate::image::{self, Options};

pub fn run(a: &ImageArgs, cache: Option<PathBuf>) -> Result<ExitCode> {
    crate::install_signal_handlers()?;
    let cache = Cache::open(cache)?;
    let firstboot = match &a.firstboot {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find this kiln binary")?
            .with_file_name("kiln-firstboot"),
    };
    let opts = Options {
        recipe: a.recipe.clone(),
        bundle: a.bundle.clone(),
        out: a.out.clone(),
        formats: a.format.clone(),
        firstboot,
        overlay: a.overlay.clone(),
        source_date_epoch: a.source_date_epoch,
        sysext_os: a.sysext_os.clone(),
    };
    let built = image::build(&opts, &cache)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        for o in &built.outputs {
            println!("{}", o.display());
        }
        if !built.base.is_empty() {
            eprintln!(
                "kiln image: base rootfs {} ({:.1} s); {:.1} s in all",
                built.base, built.base_seconds, built.seconds
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
