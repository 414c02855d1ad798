//! `kiln-firstboot`: argument parsing and the one-line failure; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kiln_firstboot::activate::{self, ModeRequest, Options, Outcome, Phase, Step};
use kiln_firstboot::adopt::{AdoptOptions, AdoptStep, Adopted};
use kiln_firstboot::datasource::Endpoints;
use kiln_firstboot::state::State;
use kiln_firstboot::system::{Host, Recording, System};
use kiln_firstboot::update::{At, Selection, Updated};

#[derive(Parser)]
#[command(
    name = "kiln-firstboot",
    version,
    about = "Verify and activate the node's kiln bundle"
)]
struct Cli {
    /// The root of the node's filesystem
    #[arg(long, global = true, default_value = "/")]
    root: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Activate the baked bundle (the default)
    Run(RunArgs),
    /// Deliver a new bundle to this running node: verify it (digest, and signature when the
    /// node configuration sets bundlePublicKey), stage it, and activate it now (health-gated,
    /// rolled back on failure) or at the next boot (a boot that never reaches the health check
    /// falls back)
    Update(UpdateArgs),
    /// Turn this running worker (set up by hand or by configuration management, Docker or a
    /// distribution containerd as its runtime) into a kiln node under its own name, node IP and
    /// kubelet identity: compare its kubelet settings with the bundle's, stop and mask the old
    /// runtime, activate the bundle health-gated, and put the worker back if it fails
    Adopt(AdoptArgs),
    /// Show what is active and the last result
    Status {
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(clap::Args)]
struct UpdateArgs {
    /// The bundle file, with its .sha256 (and .minisig, .verity) beside it
    bundle: PathBuf,
    /// `now`: activate at once, health-gated, with rollback; `next-boot`: stage it for the next
    /// boot's activation
    #[arg(long, value_enum, default_value_t = AtArg::Now)]
    at: AtArg,
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct AdoptArgs {
    /// The node bundle, with its .sha256 (and .minisig, .verity) beside it
    bundle: PathBuf,
    /// Adopt although the worker loses kubelet settings the bundle does not keep (listed in the
    /// report)
    #[arg(long)]
    accept_losses: bool,
    /// The old kubelet's systemd unit
    #[arg(long, default_value = "kubelet.service")]
    kubelet_unit: String,
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum AtArg {
    Now,
    NextBoot,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(clap::Args, Default, Clone)]
struct RunArgs {
    /// IMDS endpoint (EC2's by default)
    #[arg(long, default_value = "http://169.254.169.254")]
    imds_endpoint: String,
    /// kubelet health endpoint
    #[arg(long, default_value = "http://127.0.0.1:10248/healthz")]
    kubelet_healthz: String,
    /// Seconds to wait for containerd and kubelet to become healthy (at most a day)
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    health_timeout: u64,
    /// `host` manages the running system; `record` only records what it would do (activating into
    /// an image's root, or tests)
    #[arg(long, value_enum, default_value_t = SystemKind::Host)]
    system: SystemKind,
    /// Stop right after this step, as if killed there (crash-safety testing)
    #[arg(long, hide = true)]
    stop_after: Option<String>,
    /// `activate` queues the services and defers health checks to `health` (as the boot units do)
    #[arg(long, value_enum, default_value_t = PhaseArg::All)]
    phase: PhaseArg,
    /// `auto` mounts the bundle's verity image where it has one and the kernel can do dm-verity,
    /// and unpacks it otherwise; `verity` fails instead of unpacking
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
enum ModeArg {
    #[default]
    Auto,
    Verity,
    Unpack,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
enum PhaseArg {
    #[default]
    All,
    Activate,
    Health,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
enum SystemKind {
    #[default]
    Host,
    Record,
}

fn main() -> ExitCode {
    kiln_bundle::term::end_quietly_on_closed_pipe();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // No timestamps: journald adds its own.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(kiln_bundle::term::color_stderr())
        .try_init();
    // What a failure means for the node, after the failure's own words.
    let meaning = match cli.command {
        Some(Command::Update(_)) => "the update was not completed (see `kiln-firstboot status`)",
        Some(Command::Adopt(_)) => "the worker was not adopted",
        _ => "the node was not activated (see `kiln-firstboot status`)",
    };
    let result = match cli.command {
        Some(Command::Status { output }) => status(&cli.root, output),
        Some(Command::Run(args)) => run(&cli.root, &args),
        Some(Command::Update(args)) => update(&cli.root, &args),
        Some(Command::Adopt(args)) => adopt(&cli.root, &args),
        None => run(
            &cli.root,
            &RunArgs {
                imds_endpoint: "http://169.254.169.254".into(),
                kubelet_healthz: "http://127.0.0.1:10248/healthz".into(),
                health_timeout: 120,
                ..Default::default()
            },
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line for the journal and the console: what failed, and what to do. A tool's
            // quoted stderr may have several lines (systemctl's has two).
            let msg = format!("{e:#}");
            let msg: Vec<&str> = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            eprintln!("kiln-firstboot: FAILED: {}; {meaning}", msg.join(" "));
            ExitCode::from(1)
        }
    }
}

fn options(a: &RunArgs) -> anyhow::Result<Options> {
    let stop_after = match &a.stop_after {
        Some(s) => Some(Step::parse(s).ok_or_else(|| anyhow::anyhow!("--stop-after: unknown step `{s}`"))?),
        None => None,
    };
    Ok(Options {
        endpoints: Endpoints {
            imds: a.imds_endpoint.clone(),
            ..Default::default()
        },
        health_timeout: Duration::from_secs(a.health_timeout),
        stop_after,
        phase: match a.phase {
            PhaseArg::All => Phase::All,
            PhaseArg::Activate => Phase::Activate,
            PhaseArg::Health => Phase::Health,
        },
        mode: match a.mode {
            ModeArg::Auto => ModeRequest::Auto,
            ModeArg::Verity => ModeRequest::Verity,
            ModeArg::Unpack => ModeRequest::Unpack,
        },
    })
}

/// Run `f` with the system `a` asks for; a recording system keeps its services "active" and its
/// calls across runs in files under the root.
fn with_system<T>(
    root: &std::path::Path,
    a: &RunArgs,
    f: impl FnOnce(&mut dyn System) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut host = Host {
        kubelet_healthz: a.kubelet_healthz.clone(),
    };
    let mut rec = Recording::new(root);
    rec.active = std::fs::read_to_string(root.join("run/kiln-recorded-active"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    rec.unit_files = std::fs::read_to_string(root.join("run/kiln-recorded-unit-files"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(u, s)| (u.to_string(), s.to_string()))
        .collect();
    let sys: &mut dyn System = match a.system {
        SystemKind::Host => &mut host,
        SystemKind::Record => &mut rec,
    };
    let outcome = f(sys);
    if a.system == SystemKind::Record {
        let active: Vec<String> = rec.active.iter().cloned().collect();
        let _ = std::fs::create_dir_all(root.join("run"));
        std::fs::write(root.join("run/kiln-recorded-active"), active.join("\n"))?;
        let files: Vec<String> = rec.unit_files.iter().map(|(u, s)| format!("{u} {s}")).collect();
        std::fs::write(root.join("run/kiln-recorded-unit-files"), files.join("\n"))?;
        let mut log = std::fs::read_to_string(root.join("run/kiln-recorded-calls")).unwrap_or_default();
        for c in &rec.calls {
            log.push_str(c);
            log.push('\n');
        }
        std::fs::write(root.join("run/kiln-recorded-calls"), log)?;
    }
    outcome
}

fn run(root: &std::path::Path, a: &RunArgs) -> anyhow::Result<ExitCode> {
    let opts = options(a)?;
    match with_system(root, a, |sys| activate::run(root, sys, &opts))? {
        Outcome::AlreadyActive { version } => tracing::info!("bundle {version} is already active; nothing to do"),
        Outcome::Activated { version } => tracing::info!("bundle {version} activated"),
        Outcome::Stopped { after } => tracing::warn!("stopped after step {}", after.name()),
    }
    Ok(ExitCode::SUCCESS)
}

fn update(root: &std::path::Path, a: &UpdateArgs) -> anyhow::Result<ExitCode> {
    if a.run.phase != PhaseArg::All {
        anyhow::bail!("--phase is for `run`; `update --at next-boot` leaves the phases to the boot units");
    }
    let opts = options(&a.run)?;
    let at = match a.at {
        AtArg::Now => At::Now,
        AtArg::NextBoot => At::NextBoot,
    };
    let done = with_system(root, &a.run, |sys| {
        kiln_firstboot::update::update(root, sys, &a.bundle, at, &opts)
    })?;
    if a.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&done)?);
        return Ok(ExitCode::SUCCESS);
    }
    match done {
        Updated::AlreadyActive { version } => println!("bundle {version} is already active; nothing to do"),
        Updated::Staged { version, staged } => {
            println!("bundle {version} verified and staged at {staged}; the next boot activates it")
        }
        Updated::Activated {
            version,
            staged,
            previous,
        } => println!("bundle {version} active and healthy (was {previous}; staged at {staged})"),
        Updated::Stopped { version } => println!("stopped while activating bundle {version}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn adopt(root: &std::path::Path, a: &AdoptArgs) -> anyhow::Result<ExitCode> {
    if a.run.phase != PhaseArg::All {
        anyhow::bail!("--phase is for `run`; adoption runs both phases at once");
    }
    let stop_after = match a.run.stop_after.as_deref() {
        Some(s) => {
            Some(AdoptStep::parse(s).ok_or_else(|| anyhow::anyhow!("--stop-after: unknown adoption step `{s}`"))?)
        }
        None => None,
    };
    let opts = AdoptOptions {
        bundle: a.bundle.clone(),
        accept_losses: a.accept_losses,
        kubelet_unit: a.kubelet_unit.clone(),
        stop_after,
        run: options(&RunArgs {
            stop_after: None,
            ..a.run.clone()
        })?,
    };
    let done = with_system(root, &a.run, |sys| kiln_firstboot::adopt::adopt(root, sys, &opts))?;
    let (record, already) = match done {
        Adopted::Stopped { after } => {
            eprintln!("kiln-firstboot: stopped after adoption step {}", after.name());
            return Ok(ExitCode::SUCCESS);
        }
        Adopted::Done { record, already } => (record, already),
    };
    if a.output == Format::Json {
        let mut v = serde_json::to_value(&record)?;
        v["already"] = already.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if already {
        println!(
            "Node {} was adopted with bundle {} already; nothing to do",
            record.node, record.version
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Node {} adopted: bundle {} active and healthy",
        record.node, record.version
    );
    println!("read      {}", record.read.join(", "));
    println!("SETTING\tNODE\tBUNDLE\tVERDICT\tSOURCE");
    for c in &record.compared {
        println!(
            "{}\t{}\t{}\t{}\t{}{}",
            c.setting,
            c.node,
            c.bundle.as_deref().unwrap_or("-"),
            c.verdict,
            c.source,
            if c.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.detail)
            }
        );
    }
    for u in record.units.iter().filter(|u| u.action != "untouched") {
        println!(
            "unit      {} was {}{}: {}",
            u.unit,
            u.state,
            if u.active { " and active" } else { "" },
            u.action
        );
    }
    for s in record.saved.iter().filter(|s| s.existed) {
        println!(
            "saved     /{} ({})",
            s.path,
            if s.moved { "moved aside" } else { "replaced by kiln's" }
        );
    }
    println!(
        "images    Docker's image store (/var/lib/docker) is not carried over: pods pull their images again through containerd, or use the bundle's preloaded images"
    );
    println!(
        "restore   everything saved is in /{}",
        kiln_bundle::layout::root::ADOPTION_SAVED
    );
    Ok(ExitCode::SUCCESS)
}

fn status(root: &std::path::Path, output: Format) -> anyhow::Result<ExitCode> {
    let Some(s) = State::load(root)? else {
        anyhow::bail!(
            "no activation has run yet ({} does not exist)",
            root.join(kiln_firstboot::state::STATE).display()
        );
    };
    let sel = Selection::load(root)?;
    if output == Format::Json {
        let mut v = serde_json::to_value(&s)?;
        v["selection"] = serde_json::to_value(&sel)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("version   {}", s.version);
    println!("digest    {}", s.digest);
    println!("result    {}", s.result);
    match (&s.mode, &s.mode_reason) {
        (kiln_firstboot::state::Mode::Verity, _) => {
            println!("mode      verity (read-only erofs image through dm-verity)")
        }
        (m, Some(why)) => println!("mode      {m} ({why})"),
        (m, None) => println!("mode      {m}"),
    }
    if let Some(e) = &s.error {
        println!("error     {e}");
    }
    if let Some((v, _)) = &s.previous {
        println!("previous  {v}");
    }
    if let Some(b) = &sel.bundle {
        println!("boots     /{b} (delivered by an update)");
    }
    match &sel.trial {
        Some(t) if t.tries_left > 0 => {
            println!("trial     {} (/{}): the next activation takes it", t.version, t.bundle)
        }
        Some(t) => println!(
            "trial     {} (/{}): taken, waiting for its health check; a boot that finds it still so falls back",
            t.version, t.bundle
        ),
        None => {}
    }
    println!(
        "sources   {}",
        if s.sources.is_empty() {
            "none".to_string()
        } else {
            s.sources.join(", ")
        }
    );
    let total: f64 = s.steps.iter().map(|t| t.ms).sum();
    println!(
        "steps     {}",
        s.steps
            .iter()
            .map(|t| format!("{} {:.1}ms", t.step, t.ms))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("total     {total:.1}ms");
    Ok(if s.result == kiln_firstboot::state::Status::Ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
