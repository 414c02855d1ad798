//! `kiln-vm`: QEMU "machines" for `kubectl kiln roll` in tests, and an example of the provision and
//! decommission commands a roll runs (README, "kubectl kiln"). Each machine is a QEMU VM booted
//! from the node image of a bundle version with a fresh NoCloud seed, its only network a restricted
//! user-mode network forwarding 10.0.2.100:6443 to the API server on the host's loopback.
//!
//! `kiln-vm provision --images DIR --state DIR --user-data FILE --api-port PORT [--name N]
//! [--bundle V]`: boots `DIR/<V>.raw` as node N (default: `$KILN_NODE` with a suffix derived from
//! `$KILN_TARGET_BUNDLE`, so a rerun for the same node and target finds the same machine), with the
//! user data template FILE (`{name}` replaced), and prints N. Idempotent: a machine already
//! running is left alone.
//!
//! `kiln-vm decommission --state DIR [--name N]`: stops the machine of N (default `$KILN_NODE`)
//! by PID and waits until it is gone. A machine that is not running is not an error.
//!
//! `kiln-vm reimage --images DIR --state DIR --user-data FILE --api-port PORT [--name N]
//! [--bundle V]`: an in-place roll's reprovision command, as a PXE or replace-root-volume reimage
//! would do it: stops the machine of N (default `$KILN_NODE`) and boots it again, under the same
//! name, from a fresh copy of `DIR/<V>.raw` (default `$KILN_TARGET_BUNDLE`) with a fresh seed. The
//! node comes back under its existing Node object.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use kiln_testkit::qemu::{self, Net};

#[derive(Parser)]
#[command(name = "kiln-vm")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Provision {
        #[command(flatten)]
        boot: Boot,
        #[arg(long)]
        name: Option<String>,
    },
    Decommission {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    Reimage {
        #[command(flatten)]
        boot: Boot,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(clap::Args)]
struct Boot {
    #[arg(long)]
    images: PathBuf,
    #[arg(long)]
    state: PathBuf,
    #[arg(long)]
    user_data: PathBuf,
    #[arg(long)]
    api_port: u16,
    #[arg(long, env = "KILN_TARGET_BUNDLE")]
    bundle: String,
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
}

fn pid_file(state: &Path, name: &str) -> PathBuf {
    state.join(format!("{name}.pid"))
}

/// The PID in `pid_file` if that process is alive (a zombie waiting to be reaped is not).
fn running(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

fn node_name(explicit: Option<String>) -> Result<String> {
    explicit
        .or_else(|| std::env::var("KILN_NODE").ok())
        .ok_or_else(|| anyhow!("no node: give --name or set KILN_NODE"))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-vm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Provision { boot, name } => {
            let name = match name {
                Some(n) => n,
                None => {
                    let old = node_name(None)?;
                    let suffix = &kiln_testkit::sha256_hex(boot.bundle.as_bytes())[..5];
                    // A node that replaced another carries such a suffix already: swap it.
                    let base = match old.rsplit_once('-') {
                        Some((b, s)) if s.len() == 5 && s.bytes().all(|c| c.is_ascii_hexdigit()) => b,
                        _ => old.as_str(),
                    };
                    format!("{base}-{suffix}")
                }
            };
            if running(&pid_file(&boot.state, &name)).is_some() {
                eprintln!("kiln-vm: {name} is already running");
                println!("{name}");
                return Ok(());
            }
            start(&boot, &name)?;
            println!("{name}");
            Ok(())
        }
        Cmd::Decommission { state, name } => stop(&state, &node_name(name)?),
        Cmd::Reimage { boot, name } => {
            let name = node_name(name)?;
            image_of(&boot)?;
            stop(&boot.state, &name)?;
            start(&boot, &name)
        }
    }
}

fn image_of(boot: &Boot) -> Result<PathBuf> {
    let image = boot.images.join(format!("{}.raw", boot.bundle));
    if !image.is_file() {
        bail!(
            "no image for bundle {}: {} does not exist",
            boot.bundle,
            image.display()
        );
    }
    Ok(image)
}

/// Boot machine `name` from the image of `boot.bundle` (a copy-on-write view: the image is never
/// written) with a fresh NoCloud seed.
fn start(boot: &Boot, name: &str) -> Result<()> {
    let image = image_of(boot)?;
    let state = &boot.state;
    std::fs::create_dir_all(state).with_context(|| state.display().to_string())?;
    let template = std::fs::read_to_string(&boot.user_data).with_context(|| boot.user_data.display().to_string())?;
    let seed = qemu::nocloud_seed(
        state,
        name,
        &template.replace("{name}", name),
        &format!("instance-id: {name}\n"),
    );
    let opts = qemu::Options {
        memory_mib: boot.memory,
        cpus: boot.cpus,
        net: Net::Restricted {
            forwards: vec![(qemu::GUEST_API.into(), boot.api_port)],
        },
    };
    let out = qemu::command(state, name, &image, &seed, &opts)
        .arg("-daemonize")
        .arg("-pidfile")
        .arg(pid_file(state, name))
        .output()
        .context("cannot start qemu-system-x86_64")?;
    if !out.status.success() {
        bail!(
            "qemu for {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    eprintln!("kiln-vm: {name} booting from {}", image.display());
    Ok(())
}

/// Stop machine `name` by PID and wait until it is gone; one not running is not an error.
fn stop(state: &Path, name: &str) -> Result<()> {
    let pidf = pid_file(state, name);
    let Some(pid) = running(&pidf) else {
        eprintln!("kiln-vm: {name} is not running");
        return Ok(());
    };
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| anyhow!("bad pid {pid}"))?;
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(&pidf).is_some() {
        if Instant::now() > deadline {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&pidf);
    eprintln!("kiln-vm: {name} stopped");
    Ok(())
}
