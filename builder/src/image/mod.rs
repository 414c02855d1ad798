//! `kiln image`: node images with one bundle baked in, plus the first-boot activator, ready to boot
//! as a fresh node. Formats: a GPT disk (`raw`, following the Discoverable Partitions Specification,
//! with systemd-boot and a Boot Loader Specification type 1 entry on the ESP), `qcow2` converted
//! from it (and the cloud formats), a `rootfs-tar`, the `pxe` artifacts a netboot server serves
//! (`netboot.rs`), and a `sysext` image of the bundle alone.
//!
//! No loop mounts: `mkfs.ext4 -d`, `mkfs.vfat` + `mcopy`, `sfdisk` on a plain file and `dd` at the
//! partition offsets. Root is needed only for debootstrap (and for rootfs-tar and pxe, which carry
//! the files' real owners); without it the disk gets the base's owners and device nodes from
//! the tarball through debugfs. The base rootfs is cached by the digest of
//! the recipe's base, so a rebuild with a new bundle skips debootstrap. Timestamps are
//! SOURCE_DATE_EPOCH and every UUID is derived from the recipe and bundle digests.

mod cloud;
pub mod disk;
mod formats;
mod netboot;
pub mod recipe;

// fs-err: every error names the path, so a node image build that fails says which file.
use fs_err as fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::reader::{verify_file, Expect, VerifyOnly};
use kiln_bundle::verity::verity_path;
use kiln_bundle::writer::{minisig_path, read_sha256_beside, sha256_path};

use crate::cache::Cache;
use crate::process;
pub use recipe::Recipe;

/// Where the image carries its bundle; kiln-firstboot activates the one bundle found there.
pub use kiln_bundle::layout::root::BAKED;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Raw,
    Qcow2,
    /// Azure: a fixed VHD.
    Vhd,
    /// vSphere: a streamOptimized VMDK.
    Vmdk,
    /// vSphere: the VMDK with an OVF descriptor and manifest, in one tar.
    Ova,
    /// Compute Engine: `disk.raw` in a gzipped sparse tar.
    Gce,
    RootfsTar,
    /// Netboot: kernel, initrd, root image (the root filesystem, run from memory), kernel command
    /// line and an iPXE script.
    Pxe,
    Sysext,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub recipe: PathBuf,
    pub bundle: PathBuf,
    pub out: PathBuf,
    pub formats: Vec<Format>,
    /// The kiln-firstboot binary to install.
    pub firstboot: PathBuf,
    /// A directory copied over the root filesystem last (site files, test units).
    pub overlay: Option<PathBuf>,
    pub source_date_epoch: u64,
    /// `ID` or `ID:VERSION_ID` for the sysext's extension-release (`_any` matches every OS).
    pub sysext_os: String,
}

/// What was built, and how long the parts took.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Built {
    pub outputs: Vec<PathBuf>,
    /// The base rootfs: `given` (the recipe's tarball), `cached` or `built` (debootstrap).
    pub base: String,
    pub base_seconds: f64,
    pub seconds: f64,
}

/// A verified bundle: its file, digest, name and version.
pub struct Bundle {
    pub path: PathBuf,
    pub sha256: Sha256,
    pub name: String,
    pub version: String,
    pub arch: kiln_bundle::manifest::Arch,
    /// The verity image beside the bundle, checked against its index (`spec.verity`).
    pub verity: Option<PathBuf>,
}

/// ELF `e_machine` values (System V ABI).
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// The machine an ELF file is built for; `None` when `path` is not ELF (a script, say).
fn elf_machine(path: &Path) -> Result<Option<u16>> {
    let mut head = Vec::with_capacity(20);
    fs::File::open(path)?.take(20).read_to_end(&mut head)?;
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let bytes = [head[18], head[19]];
    Ok(Some(match head[5] {
        2 => u16::from_be_bytes(bytes),
        _ => u16::from_le_bytes(bytes),
    }))
}

/// Verify the bundle fully (outer digest from BUNDLE.sha256, every member against the index) before
/// it goes into an image.
pub fn verified_bundle(path: &Path) -> Result<Bundle> {
    let expected = read_sha256_beside(path)?.ok_or_else(|| {
        anyhow!(
            "{} not found: an image needs the bundle's digest beside it",
            sha256_path(path).display()
        )
    })?;
    let report = verify_file(
        path,
        &Expect {
            sha256: Some(expected),
            signature: None,
        },
        &mut VerifyOnly,
    )?;
    let report = report.into_result(&path.display().to_string())?;
    let index = report.index.ok_or_else(|| anyhow!("{}: no index", path.display()))?;
    let verity = index
        .verity
        .as_ref()
        .map(|v| crate::verity::check_beside(path, v))
        .transpose()?;
    Ok(Bundle {
        path: path.to_path_buf(),
        sha256: expected,
        name: index.name.clone(),
        version: index.version.clone(),
        arch: index.arch,
        verity,
    })
}

pub fn build(o: &Options, cache: &Cache) -> Result<Built> {
    let started = Instant::now();
    let (recipe, layout, bundle) = check_inputs(o)?;
    fs::create_dir_all(&o.out).with_context(|| format!("cannot create {}", o.out.display()))?;
    let stem = format!("{}-{}-{}", recipe.metadata.name, bundle.name, bundle.version);
    let work = tempfile::Builder::new()
        .prefix(".kiln-image-")
        .tempdir_in(&o.out)
        .with_context(|| format!("cannot create a work directory in {}", o.out.display()))?;
    let mut built = Built::default();
    let seed = Sha256::of(format!("{}{}", recipe.digest().hex(), bundle.sha256.hex()).as_bytes());

    let mut results: Vec<(PathBuf, PathBuf)> = Vec::new();
    if o.formats.contains(&Format::Sysext) {
        let name = format!("kiln-{}", bundle.name);
        let tmp = work.path().join(format!("{name}.raw"));
        sysext(&bundle, &name, &o.sysext_os, o.source_date_epoch, work.path(), &tmp)?;
        results.push((tmp, o.out.join(format!("{name}.raw"))));
    }
    if o.formats.iter().any(|f| *f != Format::Sysext) {
        let (root, meta) = unpack_base(&recipe, o, cache, work.path(), &mut built)?;
        let uuids = disk::Uuids::derive(&seed);
        customize(&root, &bundle, o, &uuids, &recipe.spec.network)?;
        if let Some(overlay) = &o.overlay {
            process::run(
                Command::new("cp")
                    .args(["-a", "--no-preserve=ownership"])
                    .arg(format!("{}/.", overlay.display()))
                    .arg(&root),
            )
            .with_context(|| format!("cannot copy the overlay {}", overlay.display()))?;
        }
        normalize_times(&root, o.source_date_epoch)?;
        crate::check_interrupted()?;
        if o.formats.contains(&Format::RootfsTar) {
            let tmp = work.path().join("rootfs.tar.zst");
            rootfs_tar(&root, o.source_date_epoch, &tmp)?;
            crate::check_interrupted()?;
            results.push((tmp, o.out.join(format!("{stem}.rootfs.tar.zst"))));
        }
        if o.formats.contains(&Format::Pxe) {
            results.extend(netboot::write(&netboot::Netboot {
                root: &root,
                work: work.path(),
                out: &o.out,
                stem: &stem,
                cmdline: &recipe.spec.kernel_command_line,
                epoch: o.source_date_epoch,
            })?);
            crate::check_interrupted()?;
        }
        if o.formats.iter().any(|f| formats::FROM_RAW.iter().any(|(g, _)| g == f)) {
            let raw = work.path().join("disk.raw");
            let cmdline = format!(
                "{} root=PARTUUID={} rootfstype=ext4 rw",
                recipe.spec.kernel_command_line.trim(),
                uuids.root_part
            );
            disk::build_raw(
                &root,
                &layout,
                &uuids,
                cmdline.trim(),
                o.source_date_epoch,
                meta.as_ref(),
                work.path(),
                &raw,
            )?;
            let from = formats::FromRaw {
                raw: &raw,
                work: work.path(),
                out: &o.out,
                stem: &stem,
                uuids: &uuids,
                epoch: o.source_date_epoch,
            };
            for (format, write) in formats::FROM_RAW {
                if o.formats.contains(format) {
                    results.extend(write(&from)?);
                    crate::check_interrupted()?;
                }
            }
        }
    }
    // Ctrl-C or SIGTERM up to here leaves nothing: the work directory goes with `work`.
    crate::check_interrupted()?;
    for (tmp, dest) in results {
        fs::rename(&tmp, &dest).with_context(|| format!("cannot move the image to {}", dest.display()))?;
        built.outputs.push(dest);
    }
    built.seconds = started.elapsed().as_secs_f64();
    Ok(built)
}

/// Everything checked before anything is written: the recipe and its disk layout, the bundle
/// (verified in full), and that both and kiln-firstboot are for the same architecture.
fn check_inputs(o: &Options) -> Result<(Recipe, recipe::Layout, Bundle)> {
    let origin = o.recipe.display().to_string();
    let text = fs::read_to_string(&o.recipe).with_context(|| format!("cannot read recipe {origin}"))?;
    let recipe = Recipe::parse(&text, &origin)?;
    let layout = recipe.layout()?;
    let bundle = verified_bundle(&o.bundle)?;
    // The root partition type, the EFI loader and the base are the recipe's architecture's.
    if bundle.arch != recipe.spec.architecture {
        bail!(
            "{}: the bundle is for {}, but recipe {origin} builds {} images (spec.architecture); \
             build the bundle with --arch {} or use a recipe for {}",
            o.bundle.display(),
            bundle.arch,
            recipe.spec.architecture,
            recipe.spec.architecture,
            bundle.arch
        );
    }
    if !o.firstboot.is_file() {
        bail!(
            "kiln-firstboot not found at {} (build it with `cargo build --release -p kiln-firstboot`, or pass --firstboot)",
            o.firstboot.display()
        );
    }
    if let Some(machine) = elf_machine(&o.firstboot)? {
        let (want, name) = match recipe.spec.architecture {
            kiln_bundle::manifest::Arch::Amd64 => (EM_X86_64, "x86-64"),
            kiln_bundle::manifest::Arch::Arm64 => (EM_AARCH64, "aarch64"),
        };
        if machine != want {
            let have = match machine {
                EM_X86_64 => "x86-64".to_string(),
                EM_AARCH64 => "aarch64".to_string(),
                m => format!("ELF machine {m}"),
            };
            bail!(
                "{}: kiln-firstboot is built for {have}, but recipe {origin} builds {} images: pass \
                 --firstboot with an {name} build of kiln-firstboot",
                o.firstboot.display(),
                recipe.spec.architecture
            );
        }
    }
    if o.formats.contains(&Format::RootfsTar) && !is_root() {
        bail!("--format rootfs-tar needs root: GNU tar writes the files' real owners and xattrs (raw, qcow2 and sysext do not need root)");
    }
    if o.formats.contains(&Format::Pxe) && !is_root() {
        bail!("--format pxe needs root: the root image carries the files' real owners (raw, qcow2 and sysext do not need root)");
    }
    Ok((recipe, layout, bundle))
}

/// The recipe's base (cached, built or given) unpacked into `work/rootfs`; without root, the
/// owners and device nodes the filesystem must get instead.
fn unpack_base(
    recipe: &Recipe,
    o: &Options,
    cache: &Cache,
    work: &Path,
    built: &mut Built,
) -> Result<(PathBuf, Option<disk::BaseMeta>)> {
    let t = Instant::now();
    let (base, source) = base_rootfs(recipe, &o.recipe, cache)?;
    built.base = match source {
        BaseSource::Given => "given",
        BaseSource::Cached => "cached",
        BaseSource::Built => "built",
    }
    .into();
    built.base_seconds = t.elapsed().as_secs_f64();
    crate::check_interrupted()?;
    let root = work.join("rootfs");
    fs::create_dir(&root)?;
    // As root, tar keeps owners, device nodes and xattrs and mkfs.ext4 copies them. Without
    // root, the base's owners and device nodes are read from the tarball and written into the
    // filesystem by debugfs instead.
    let meta = if is_root() {
        None
    } else {
        Some(disk::BaseMeta::read(&base)?)
    };
    let mut tar = Command::new("tar");
    tar.args(["-x", "-p", "--numeric-owner"]);
    match &meta {
        None => {
            tar.args(["--xattrs", "--xattrs-include=*"]);
        }
        Some(m) => {
            if m.xattrs > 0 {
                tracing::warn!("{} extended attributes in the base are not kept without root", m.xattrs);
            }
            let exclude = work.join("specials.exclude");
            fs::write(&exclude, m.exclude_list())?;
            tar.arg("--no-same-owner").arg("--exclude-from").arg(&exclude);
        }
    }
    process::run(tar.arg("-f").arg(&base).arg("-C").arg(&root))?;
    crate::check_interrupted()?;
    Ok((root, meta))
}

/// Where the base rootfs tarball came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaseSource {
    /// The recipe's `rootfsTar`.
    Given,
    /// The cache, from an earlier debootstrap.
    Cached,
    /// debootstrap, now.
    Built,
}

/// The base rootfs as a tarball: the recipe's own, or debootstrap's output in the cache keyed by
/// the base's digest (built when missing).
fn base_rootfs(recipe: &Recipe, recipe_path: &Path, cache: &Cache) -> Result<(PathBuf, BaseSource)> {
    let dir = cache.root().join("images");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(tar) = &recipe.spec.base.rootfs_tar {
        let path = recipe_path.parent().unwrap_or(Path::new(".")).join(tar);
        if !path.is_file() {
            bail!(
                "{}: spec.base.rootfsTar: {} does not exist",
                recipe_path.display(),
                path.display()
            );
        }
        return Ok((path, BaseSource::Given));
    }
    let d = recipe.spec.base.debootstrap.as_ref().expect("validated");
    let cached = dir.join(format!("base-{}.tar", recipe.base_digest(None).hex()));
    if cached.is_file() {
        tracing::info!("base rootfs cached: {}", cached.display());
        return Ok((cached, BaseSource::Cached));
    }
    // Concurrent builds sharing a cache (CI jobs, a pipeline's parallel images) debootstrap once:
    // the first holds the lock, the others wait and then find the base cached. The lock goes with
    // the process, so a killed build never leaves it held.
    let lock_path = cached.with_extension("lock");
    let lock = fs::File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        eprintln!(
            "kiln image: waiting for another build of this base ({})",
            lock_path.display()
        );
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    }
    if cached.is_file() {
        tracing::info!("base rootfs cached: {}", cached.display());
        return Ok((cached, BaseSource::Cached));
    }
    if !is_root() {
        bail!("building the base rootfs runs debootstrap, which needs root (it is cached afterwards)");
    }
    let work = tempfile::Builder::new()
        .prefix("debootstrap-")
        .tempdir_in(&dir)
        .context("cannot create a debootstrap directory")?;
    let target = work.path().join("root");
    eprintln!(
        "kiln image: debootstrap {} ({} packages) from {} ...",
        d.suite,
        d.packages.len(),
        d.mirror
    );
    let mut cmd = Command::new("debootstrap");
    cmd.arg(format!("--variant={}", d.variant))
        .arg(format!("--components={}", d.components.join(",")));
    let arch = recipe.spec.architecture;
    if Some(arch) != kiln_bundle::Arch::host() {
        // debootstrap's second stage runs the target's programs in a chroot.
        foreign_emulator(arch, Path::new(BINFMT_MISC))?;
        cmd.arg(format!("--arch={arch}"));
    }
    if !d.packages.is_empty() {
        cmd.arg(format!("--include={}", d.packages.join(",")));
    }
    cmd.arg(&d.suite).arg(&target).arg(&d.mirror);
    if let Err(e) = process::run(&mut cmd) {
        // debootstrap reports on stdout and in its own log, which goes with the work directory.
        let log = fs::read_to_string(target.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(anyhow!(e).context(format!(
            "debootstrap failed; the end of its log:\n  {}",
            tail.join("\n  ")
        )));
    }
    // Nothing downloaded belongs in an image.
    for junk in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let p = target.join(junk);
        if let Ok(entries) = fs::read_dir(&p) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    let tmp = work.path().join("base.tar");
    process::run(
        Command::new("tar")
            .args([
                "-c",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--sort=name",
                "-f",
            ])
            .arg(&tmp)
            .arg("-C")
            .arg(&target)
            .arg("."),
    )?;
    fs::rename(&tmp, &cached).with_context(|| format!("cannot store {}", cached.display()))?;
    Ok((cached, BaseSource::Built))
}

/// Where the kernel lists the interpreters it runs foreign binaries with.
const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// A foreign-architecture debootstrap needs the kernel to run `arch`'s programs through QEMU's user
/// emulator: a `qemu-<cpu>` handler in `binfmt_misc`, enabled, with the F flag (the interpreter is
/// opened when registered, so it works inside the chroot, where it does not exist). Debian's
/// qemu-user-static registers it so.
fn foreign_emulator(arch: kiln_bundle::Arch, binfmt_misc: &Path) -> Result<()> {
    let cpu = match arch {
        kiln_bundle::Arch::Amd64 => "x86_64",
        kiln_bundle::Arch::Arm64 => "aarch64",
    };
    let handler = binfmt_misc.join(format!("qemu-{cpu}"));
    let how = format!(
        "install Debian's qemu-user-static on this machine (it registers {} with binfmt_misc), or give an {arch} root filesystem as spec.base.rootfsTar",
        handler.display()
    );
    let text = std::fs::read_to_string(&handler).map_err(|_| {
        anyhow!(
            "spec.architecture is {arch} and this machine is {}: debootstrap must run {arch} programs, and {} does not exist: {how}",
            std::env::consts::ARCH,
            handler.display()
        )
    })?;
    if text.lines().next().is_none_or(|l| l.trim() != "enabled") {
        bail!("{} is disabled: {how}", handler.display());
    }
    let flags = text.lines().find_map(|l| l.strip_prefix("flags:")).unwrap_or_default();
    if !flags.contains('F') {
        bail!(
            "{} is registered without the F flag, so its interpreter is not found inside debootstrap's chroot: {how}",
            handler.display()
        );
    }
    Ok(())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Turn the base into a fresh kiln node: the bundle baked in, kiln-firstboot installed and enabled,
/// no machine identity (empty machine-id, no host keys, no hostname), and an fstab for the root.
fn customize(root: &Path, bundle: &Bundle, o: &Options, uuids: &disk::Uuids, net: &recipe::Network) -> Result<()> {
    let baked = root.join(BAKED);
    if baked.exists() {
        fs::remove_dir_all(&baked)?;
    }
    fs::create_dir_all(&baked)?;
    let file = bundle.path.file_name().expect("a file");
    copy(&bundle.path, &baked.join(file), 0o644)?;
    copy(&sha256_path(&bundle.path), &sha256_path(&baked.join(file)), 0o644)?;
    let sig = minisig_path(&bundle.path);
    if sig.is_file() {
        copy(&sig, &minisig_path(&baked.join(file)), 0o644)?;
    }
    if let Some(v) = &bundle.verity {
        copy(v, &verity_path(&baked.join(file)), 0o644)?;
    }
    copy(&o.firstboot, &root.join("usr/bin/kiln-firstboot"), 0o755)?;
    let units = root.join("usr/lib/systemd/system");
    fs::create_dir_all(&units)?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    for (name, text) in kiln_bundle::layout::units::FIRSTBOOT_UNITS {
        write(&units.join(name), text.as_bytes(), 0o644)?;
        let link = wants.join(name);
        let _ = fs::remove_file(&link);
        fs::os::unix::fs::symlink(format!("/usr/lib/systemd/system/{name}"), &link)?;
    }
    // systemd's first-boot semantics: an empty machine-id is filled in at boot.
    write(&root.join("etc/machine-id"), b"", 0o444)?;
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if dbus_id.symlink_metadata().is_ok() {
        fs::remove_file(&dbus_id)?;
        fs::os::unix::fs::symlink("/etc/machine-id", &dbus_id)?;
    }
    if let Ok(entries) = fs::read_dir(root.join("etc/ssh")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path())?;
            }
        }
    }
    let _ = fs::remove_file(root.join("etc/hostname"));
    network(root, net)?;
    write(
        &root.join("etc/fstab"),
        format!("# kiln image\nPARTUUID={} / ext4 defaults 0 1\n", uuids.root_part).as_bytes(),
        0o644,
    )?;
    let info = serde_json::json!({
        "bundle": file.to_string_lossy(),
        "bundleSha256": bundle.sha256.hex(),
        "bundleVersion": bundle.version,
        "architecture": bundle.arch,
        "recipe": o.recipe.file_name().map(|f| f.to_string_lossy().into_owned()),
        "kiln": crate::tool_version(),
    });
    write(
        &root.join("usr/lib/kiln/image.json"),
        serde_json::to_string_pretty(&info)?.as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// The `.network` file of a recipe with `network.dhcp` (veths and bridges that CNI plugins create
/// are not named `en*`/`eth*`, so networkd leaves them alone).
pub const DHCP_NETWORK: &str = "\
# kiln image: DHCP on every Ethernet interface (recipe spec.network.dhcp).
[Match]
Name=en* eth*
Type=ether

[Network]
DHCP=yes
";

/// Bring the network up at boot with systemd-networkd, and give the image its own resolver
/// configuration instead of the build machine's `/etc/resolv.conf` (which debootstrap copies in):
/// systemd-resolved's list of the DHCP-provided servers when the base has resolved, else none.
fn network(root: &Path, net: &recipe::Network) -> Result<()> {
    let resolv = root.join("etc/resolv.conf");
    let _ = fs::remove_file(&resolv);
    if root.join("usr/lib/systemd/systemd-resolved").exists() || root.join("lib/systemd/systemd-resolved").exists() {
        // The upstream servers rather than the 127.0.0.53 stub: kubelet hands this file to pods
        // with dnsPolicy Default, and the stub is not reachable from their network namespace.
        fs::os::unix::fs::symlink("../run/systemd/resolve/resolv.conf", &resolv)?;
        enable(root, "systemd-resolved.service", "multi-user.target.wants")?;
    } else {
        write(
            &resolv,
            b"# kiln image: no resolver configured (the base has no systemd-resolved)\n",
            0o644,
        )?;
    }
    if !net.dhcp {
        return Ok(());
    }
    let networkd = [
        "usr/lib/systemd/system/systemd-networkd.service",
        "lib/systemd/system/systemd-networkd.service",
    ];
    if !networkd.iter().any(|p| root.join(p).exists()) {
        bail!(
            "recipe spec.network.dhcp: the base has no systemd-networkd (add the systemd package, or set dhcp: false)"
        );
    }
    write(
        &root.join("etc/systemd/network/80-kiln-dhcp.network"),
        DHCP_NETWORK.as_bytes(),
        0o644,
    )?;
    enable(root, "systemd-networkd.service", "multi-user.target.wants")?;
    enable(root, "systemd-networkd.socket", "sockets.target.wants")?;
    enable(
        root,
        "systemd-networkd-wait-online.service",
        "network-online.target.wants",
    )?;
    Ok(())
}

/// `systemctl enable` by hand: the unit's link in `etc/systemd/system/<wants>/`.
fn enable(root: &Path, unit: &str, wants: &str) -> Result<()> {
    let source = ["usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .find(|d| root.join(d).join(unit).exists())
        .ok_or_else(|| anyhow!("the base has no {unit}"))?;
    let dir = root.join("etc/systemd/system").join(wants);
    fs::create_dir_all(&dir)?;
    let link = dir.join(unit);
    let _ = fs::remove_file(&link);
    fs::os::unix::fs::symlink(format!("/{source}/{unit}"), &link).with_context(|| format!("cannot enable {unit}"))?;
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(p) = to.parent() {
        fs::create_dir_all(p)?;
    }
    fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(p) = to.parent() {
        fs::create_dir_all(p)?;
    }
    let _ = fs::remove_file(to);
    fs::File::create(to)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("cannot write {}", to.display()))?;
    fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}

/// Every file, directory and link in the tree gets the same mtime and atime (links not followed).
pub fn normalize_times(root: &Path, epoch: u64) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
            normalize_times_file(&e.path(), epoch)?;
        }
    }
    normalize_times_file(root, epoch)
}

/// One file's mtime and atime.
pub fn normalize_times_file(path: &Path, epoch: u64) -> Result<()> {
    let t = rustix::fs::Timespec {
        tv_sec: epoch as i64,
        tv_nsec: 0,
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .with_context(|| format!("cannot set the times of {}", path.display()))?;
    Ok(())
}

/// `tar.zst` of the root filesystem: sorted, owners and xattrs kept, fixed times.
fn rootfs_tar(root: &Path, epoch: u64, out: &Path) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut tar = Command::new("tar")
        .args(["-c", "--sort=name", "--numeric-owner", "--xattrs", "--xattrs-include=*"])
        .arg(format!("--mtime=@{epoch}"))
        .arg("--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime")
        .arg("-C")
        .arg(root)
        .args(["-f", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let stdout = tar.stdout.take().expect("piped");
    let zstd = Command::new("zstd")
        .args(["-q", "-T0", "-3", "-c"])
        .stdin(stdout)
        .stdout(file.into_file())
        .status()
        .context("cannot run zstd")?;
    let t = tar.wait()?;
    if !t.success() || !zstd.success() {
        bail!("cannot write {}: tar {t}, zstd {zstd}", out.display());
    }
    Ok(())
}

/// A systemd-sysext image (squashfs) of the bundle alone: the bundle file where kiln-firstboot looks
/// for it, its binaries under /usr/bin, and `extension-release.NAME`.
fn sysext(bundle: &Bundle, name: &str, os: &str, epoch: u64, work: &Path, out: &Path) -> Result<()> {
    let tree = work.join("sysext");
    let usr = tree.join("usr");
    let unpacked = work.join("sysext-bundle");
    fs::create_dir_all(&unpacked)?;
    process::run(
        Command::new("tar")
            .args(["-x", "--zstd", "--no-same-owner", "-f"])
            .arg(&bundle.path)
            .arg("-C")
            .arg(&unpacked),
    )?;
    let bin = unpacked.join("bin");
    for e in fs::read_dir(&bin).with_context(|| format!("{}: the bundle has no bin/", bundle.path.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            copy(&e.path(), &usr.join("bin").join(e.file_name()), 0o755)?;
        }
    }
    let file = bundle.path.file_name().expect("a file");
    let baked = tree.join(BAKED);
    copy(&bundle.path, &baked.join(file), 0o644)?;
    copy(&sha256_path(&bundle.path), &sha256_path(&baked.join(file)), 0o644)?;
    if let Some(v) = &bundle.verity {
        copy(v, &verity_path(&baked.join(file)), 0o644)?;
    }
    let (id, version_id) = match os.split_once(':') {
        Some((id, v)) => (id, Some(v)),
        None => (os, None),
    };
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
        bail!("--sysext-os {os:?}: expected ID or ID:VERSION_ID (for example _any, debian:12, flatcar)");
    }
    let mut release = format!("ID={id}\n");
    if let Some(v) = version_id {
        release.push_str(&format!("VERSION_ID={v}\n"));
    }
    release.push_str(&format!(
        "EXTENSION_RELOAD_MANAGER=1\nKILN_BUNDLE={}\nKILN_BUNDLE_VERSION={}\nKILN_BUNDLE_SHA256={}\n",
        bundle.name,
        bundle.version,
        bundle.sha256.hex()
    ));
    write(
        &usr.join(format!("lib/extension-release.d/extension-release.{name}")),
        release.as_bytes(),
        0o644,
    )?;
    normalize_times(&tree, epoch)?;
    process::run(
        Command::new("mksquashfs")
            .arg(&tree)
            .arg(out)
            .args(["-noappend", "-all-root", "-no-xattrs", "-quiet", "-no-progress"])
            .args(["-mkfs-time", &epoch.to_string(), "-all-time", &epoch.to_string()]),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_debootstrap_needs_qemu_registered_with_the_f_flag() {
        let dir = tempfile::tempdir().unwrap();
        let arm64 = kiln_bundle::Arch::Arm64;
        let e = foreign_emulator(arm64, dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("qemu-aarch64 does not exist") && e.contains("qemu-user-static") && e.contains("rootfsTar"),
            "{e}"
        );
        let handler = dir.path().join("qemu-aarch64");
        // As the kernel lists a handler: state, interpreter, flags, offset, magic, mask.
        let entry = |state: &str, flags: &str| {
            format!("{state}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n")
        };
        std::fs::write(&handler, entry("disabled", "POCF")).unwrap();
        assert!(foreign_emulator(arm64, dir.path())
            .unwrap_err()
            .to_string()
            .contains("is disabled"));
        std::fs::write(&handler, entry("enabled", "POC")).unwrap();
        assert!(foreign_emulator(arm64, dir.path())
            .unwrap_err()
            .to_string()
            .contains("without the F flag"));
        std::fs::write(&handler, entry("enabled", "POCF")).unwrap();
        foreign_emulator(arm64, dir.path()).unwrap();
    }
}
