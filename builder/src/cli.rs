//! Command-line definitions (clap derive) and dispatch to [`crate::commands`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build pinned, verified, reproducible Kubernetes node bundles"
)]
pub struct Cli {
    /// Cache directory for downloaded artifacts [default: ~/.cache/kiln]
    #[arg(long, global = true, env = "KILN_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build bundles from a manifest
    Build(BuildArgs),
    /// Resolve every artifact of a manifest and write MANIFEST.lock
    Lock(LockArgs),
    /// Verify a bundle: outer digest, signature, and every file against the index
    Verify(VerifyArgs),
    /// Show a bundle's components, versions, sizes and digests
    Inspect(InspectArgs),
    /// List components and files added, removed and changed between two bundles
    Diff(DiffArgs),
    /// Generate a minisign key pair for signing bundles
    Keygen(KeygenArgs),
    /// Turn dockershim-era kubelet settings into a manifest `config:` section, with a report
    Migrate(MigrateArgs),
    /// Bake a bundle into a bootable node image (raw, qcow2, vhd, vmdk, ova, gce, rootfs-tar), netboot artifacts (pxe) or a sysext image
    Image(ImageArgs),
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The image recipe (images/*.yaml)
    pub recipe: PathBuf,
    /// The bundle to bake in (its .sha256 must be beside it)
    #[arg(long, value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// Output directory
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,
    /// Formats to produce (repeatable, or comma-separated)
    #[arg(long, value_enum, value_delimiter = ',', default_value = "raw")]
    pub format: Vec<crate::image::Format>,
    /// The kiln-firstboot binary to install [default: next to this kiln]
    #[arg(long, value_name = "PATH")]
    pub firstboot: Option<PathBuf>,
    /// A directory copied over the root filesystem after everything else
    #[arg(long, value_name = "DIR")]
    pub overlay: Option<PathBuf>,
    /// The sysext's extension-release: ID or ID:VERSION_ID (_any: every OS)
    #[arg(long, value_name = "ID[:VERSION_ID]", default_value = "_any")]
    pub sysext_os: String,
    /// Timestamps in the image (seconds since 1970)
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    pub source_date_epoch: u64,
    /// Print what was built as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Old settings, one or more, later ones winning as the kubelet would see them: a YAML map of
    /// kubelet flags, a kubelet or dockerd command line, systemd units and their drop-ins,
    /// environment files (kubeadm-flags.env, /etc/default/kubelet), Docker's daemon.json (- for stdin)
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// The old KubeletConfiguration (the file --config named): its fields are checked against the
    /// target version and merged into spec.config.kubelet.settings
    #[arg(long, value_name = "FILE")]
    pub kubelet_config: Option<PathBuf>,
    /// The Kubernetes version the new bundle targets
    #[arg(long, value_name = "VERSION")]
    pub kubernetes_version: String,
    /// table: the config section (YAML) on stdout and the report on stderr; json: both on stdout
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Rewrite URLs starting with FROM to start with TO instead (repeatable)
    #[arg(long = "mirror", value_name = "FROM=TO")]
    pub mirrors: Vec<String>,
    /// Never use the network; every artifact must be in the cache
    #[arg(long)]
    pub offline: bool,
    /// Retries for transient download failures
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The NodeBundle manifest
    pub manifest: PathBuf,
    /// Output directory
    #[arg(short, long, default_value = "out")]
    pub output: PathBuf,
    /// Build only these architectures (default: every one the manifest lists)
    #[arg(long = "arch", value_name = "ARCH")]
    pub archs: Vec<String>,
    /// Refuse to build unless MANIFEST.lock exists and agrees with the manifest
    #[arg(long)]
    pub locked: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Sign each bundle with this minisign secret key (writes BUNDLE.minisig)
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Environment variable holding the secret key's password, for encrypted keys
    #[arg(long, value_name = "VAR")]
    pub key_password_env: Option<String>,
    /// Timestamp of every member [default: 0]
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<u64>,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The NodeBundle manifest
    pub manifest: PathBuf,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle (.kiln.tar.zst)
    pub bundle: PathBuf,
    /// minisign public key; the signature is then required
    #[arg(long, value_name = "PUB")]
    pub key: Option<PathBuf>,
    /// Signature file [default: BUNDLE.minisig]
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// Expected sha256 (hex) or a sha256sum file [default: BUNDLE.sha256 when present]
    #[arg(long, value_name = "HEX|FILE")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    pub bundle: PathBuf,
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// List every file, not only the components
    #[arg(long)]
    pub files: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write PREFIX.key (secret, 0600) and PREFIX.pub
    #[arg(short, long, value_name = "PREFIX")]
    pub output: PathBuf,
    /// Encrypt the secret key with the password in this environment variable
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
    /// Overwrite existing key files
    #[arg(long)]
    pub force: bool,
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(kiln_bundle::term::color_stderr())
        .with_target(false)
        .try_init();
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Build(a) => commands::build::run(&a, cli.cache),
        Command::Lock(a) => commands::lock::run(&a, cli.cache),
        Command::Verify(a) => commands::verify::run(&a),
        Command::Inspect(a) => commands::inspect::run(&a),
        Command::Diff(a) => commands::diff::run(&a),
        Command::Keygen(a) => commands::keygen::run(&a),
        Command::Migrate(a) => commands::migrate::run(&a),
        Command::Image(a) => commands::image::run(&a, cli.cache),
    }
}

/// Read a password from the environment variable named by a flag.
pub fn password_from_env(var: Option<&str>) -> Result<Option<String>> {
    match var {
        None => Ok(None),
        Some(v) => std::env::var(v)
            .map(Some)
            .map_err(|_| anyhow::anyhow!("environment variable {v} (the key password) is not set")),
    }
}
