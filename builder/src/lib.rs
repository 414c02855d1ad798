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
pub mod lockfile;
pub mod mirror;
pub mod plan;
pub mod process;
pub mod sbom;
pub mod signing;

/// `kiln <version>`, recorded in every bundle's build information.
pub fn tool_version() -> String {
    format!("kiln {}", env!("CARGO_PKG_VERSION"))
}
