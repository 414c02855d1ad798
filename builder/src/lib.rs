//! The kiln builder: turns a `NodeBundle` manifest into a pinned, verified, reproducible bundle.
//!
//! Sources are fetched into a content-addressed cache ([`cache`]), unpacked and checked
//! ([`archive`]), mapped into the bundle ([`plan`]) and written with the shared writer from
//! `kiln-bundle`. One file per command under [`commands`].

pub mod archive;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod fetch;
pub mod image;
pub mod lockfile;
pub use kiln_migrate as migrate;
pub mod mirror;
pub mod oci;
pub mod plan;
pub mod process;
pub mod render;
pub mod sbom;
pub mod signing;
pub mod verity;

/// `kiln <version>`, recorded in every bundle's build information.
pub fn tool_version() -> String {
    format!("kiln {}", env!("CARGO_PKG_VERSION"))
}

static INTERRUPTED: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();

/// Set by SIGINT/SIGTERM once [`install_signal_handlers`] ran. Long loops (downloads, the writer)
/// check it and stop with an error, so their temporary files are removed; a second signal exits
/// at once.
pub fn interrupted() -> &'static std::sync::atomic::AtomicBool {
    INTERRUPTED.get_or_init(Default::default)
}

pub fn install_signal_handlers() -> anyhow::Result<()> {
    use anyhow::Context;
    let flag = INTERRUPTED.get_or_init(Default::default);
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, std::sync::Arc::clone(flag))
            .context("cannot install the signal handler")?;
        signal_hook::flag::register(sig, std::sync::Arc::clone(flag)).context("cannot install the signal handler")?;
    }
    Ok(())
}

/// An error if a signal asked kiln to stop.
pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted().load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}
