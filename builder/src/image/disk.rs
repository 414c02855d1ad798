//! The raw GPT disk, without loop mounts: an ESP built with `mkfs.vfat` and filled with `mcopy`
//! (systemd-boot, the kernel and initrd, a Boot Loader Specification type 1 entry), a root
//! filesystem built with `mkfs.ext4 -d`, a partition table written by `sfdisk` on a plain file, and
//! both filesystems placed with `dd` at their offsets. Partition types follow the Discoverable
//! Partitions Specification.

// fs-err: every error names the path, so a node image build that fails says which file.
use fs_err as fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::manifest::Arch;

use super::recipe::Layout;
use crate::process;

/// The EFI System Partition type.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Where Debian's systemd-boot-efi package puts systemd-boot, in the base or on the build host.
pub const SYSTEMD_BOOT_DIR: &str = "usr/lib/systemd/boot/efi";

/// What an architecture decides in the disk layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Efi {
    /// The root partition's type and name (Discoverable Partitions Specification).
    pub root_type: &'static str,
    pub root_name: &'static str,
    /// systemd-boot's file name in [`SYSTEMD_BOOT_DIR`].
    pub systemd_boot: &'static str,
    /// The removable-media loader path firmware boots (UEFI specification).
    pub default_loader: &'static str,
}

pub fn efi(arch: Arch) -> Efi {
    match arch {
        Arch::Amd64 => Efi {
            root_type: "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            root_name: "root-x86-64",
            systemd_boot: "systemd-bootx64.efi",
            default_loader: "EFI/BOOT/BOOTX64.EFI",
        },
        Arch::Arm64 => Efi {
            root_type: "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
            root_name: "root-arm64",
            systemd_boot: "systemd-bootaa64.efi",
            default_loader: "EFI/BOOT/BOOTAA64.EFI",
        },
    }
}

/// systemd-boot for `arch`: the base's own (its systemd-boot-efi package) when it has one, else
/// the build host's.
fn systemd_boot(root: &Path, arch: Arch) -> Result<PathBuf> {
    let file = efi(arch).systemd_boot;
    let in_base = root.join(SYSTEMD_BOOT_DIR).join(file);
    if in_base.is_file() {
        return Ok(in_base);
    }
    let on_host = Path::new("/").join(SYSTEMD_BOOT_DIR).join(file);
    if on_host.is_file() {
        return Ok(on_host);
    }
    bail!(
        "no {arch} systemd-boot: neither the base nor this machine has /{SYSTEMD_BOOT_DIR}/{file} \
         (add systemd-boot-efi to the base's packages, or install Debian's systemd-boot-efi{} here)",
        if Some(arch) == Arch::host() {
            String::new()
        } else {
            format!(":{arch}")
        }
    )
}

const MIB: u64 = 1 << 20;

/// What a build without root cannot take from the extracted base: each path's owner, and the
/// device nodes and FIFOs it cannot create. Read from the base tarball.
#[derive(Debug, Default)]
pub struct BaseMeta {
    /// Path (relative, no `./`) to (uid, gid).
    pub owners: std::collections::BTreeMap<String, (u64, u64)>,
    /// Device nodes and FIFOs: path, debugfs type (`c`, `b`, `p`), major, minor, permission bits.
    pub specials: Vec<(String, char, u32, u32, u32)>,
    /// Entries carrying extended attributes (not kept without root).
    pub xattrs: usize,
}

fn rel_name(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.trim_start_matches("./").trim_end_matches('/').to_string()
}

impl BaseMeta {
    pub fn read(tarball: &Path) -> Result<BaseMeta> {
        let mut f = fs::File::open(tarball).with_context(|| format!("cannot open {}", tarball.display()))?;
        let mut magic = [0u8; 4];
        let n = std::io::Read::read(&mut f, &mut magic)?;
        drop(f);
        let file = fs::File::open(tarball)?;
        let reader: Box<dyn std::io::Read> = match &magic[..n] {
            [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(file)),
            [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::Decoder::new(file)?),
            _ => Box::new(file),
        };
        let mut meta = BaseMeta::default();
        let mut archive = tar::Archive::new(reader);
        for entry in archive
            .entries()
            .with_context(|| format!("cannot read {}", tarball.display()))?
        {
            let mut e = entry.with_context(|| format!("cannot read {}", tarball.display()))?;
            let path = rel_name(&e.path()?);
            let h = e.header();
            let (uid, gid) = (h.uid()?, h.gid()?);
            let kind = match h.entry_type() {
                tar::EntryType::Char => Some('c'),
                tar::EntryType::Block => Some('b'),
                tar::EntryType::Fifo => Some('p'),
                _ => None,
            };
            if let Some(k) = kind {
                let major = h.device_major()?.unwrap_or(0);
                let minor = h.device_minor()?.unwrap_or(0);
                meta.specials.push((path.clone(), k, major, minor, h.mode()? & 0o7777));
            }
            if e.pax_extensions()?
                .is_some_and(|mut x| x.any(|x| x.is_ok_and(|x| x.key().is_ok_and(|k| k.starts_with("SCHILY.xattr.")))))
            {
                meta.xattrs += 1;
            }
            meta.owners.insert(path, (uid, gid));
        }
        Ok(meta)
    }

    /// `tar --exclude-from` lines for the special files (they are made by debugfs instead).
    pub fn exclude_list(&self) -> String {
        self.specials
            .iter()
            .flat_map(|(p, ..)| [format!("./{p}\n"), format!("{p}\n")])
            .collect()
    }
}

/// Every identifier of the disk, derived from one seed (the recipe and bundle digests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uuids {
    pub disk: String,
    pub esp_part: String,
    pub root_part: String,
    pub root_fs: String,
    /// The FAT volume ID (8 hex digits).
    pub esp_volume: String,
}

fn uuid(seed: &Sha256, role: &str) -> String {
    let h = Sha256::of(format!("{}:{role}", seed.hex()).as_bytes());
    let mut b: [u8; 16] = h.0[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

impl Uuids {
    pub fn derive(seed: &Sha256) -> Uuids {
        Uuids {
            disk: uuid(seed, "disk"),
            esp_part: uuid(seed, "esp"),
            root_part: uuid(seed, "root"),
            root_fs: uuid(seed, "rootfs"),
            esp_volume: uuid(seed, "esp-volume")[..8].to_string(),
        }
    }
}

/// The kernel and initrd in the rootfs's /boot (the newest, by version order of their names).
pub(super) fn kernel(root: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let boot = root.join("boot");
    let mut kernels: Vec<String> = fs::read_dir(&boot)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vmlinuz-"))
        .collect();
    kernels.sort_by_key(|k| version_order(k));
    let Some(k) = kernels.pop() else {
        bail!("the base has no kernel in /boot: add a kernel package (for example linux-image-amd64) to the recipe");
    };
    let version = k.trim_start_matches("vmlinuz-").to_string();
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.is_file() {
        bail!("the base has kernel {k} but no /boot/initrd.img-{version}");
    }
    Ok((boot.join(&k), initrd, version))
}

/// A name as `sort -V` orders it: runs of digits compare as numbers (6.9 before 6.10), the rest as
/// text.
fn version_order(name: &str) -> Vec<VersionPart> {
    let mut parts = Vec::new();
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        let digit = c.is_ascii_digit();
        let end = rest.find(|c: char| c.is_ascii_digit() != digit).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        parts.push(match run.parse::<u128>() {
            Ok(n) if digit => VersionPart::Number(n),
            _ => VersionPart::Text(run.to_string()),
        });
        rest = tail;
    }
    parts
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum VersionPart {
    Number(u128),
    Text(String),
}

/// The ESP as a FAT32 image: systemd-boot as the default EFI loader, the kernel and initrd, and one
/// Boot Loader Specification type 1 entry that boots immediately.
fn esp_image(
    root: &Path,
    arch: Arch,
    size: u64,
    uuids: &Uuids,
    cmdline: &str,
    epoch: u64,
    work: &Path,
) -> Result<PathBuf> {
    let (vmlinuz, initrd, version) = kernel(root)?;
    let boot = systemd_boot(root, arch)?;
    let e = efi(arch);
    let img = work.join("esp.img");
    fs::File::create(&img)?.set_len(size)?;
    process::run(
        Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "KILN-ESP", "-i", &uuids.esp_volume, "--invariant"])
            .arg(&img),
    )?;
    let files = work.join("esp-files");
    fs::create_dir_all(&files)?;
    let loader = "default kiln.conf\ntimeout 0\nconsole-mode keep\neditor no\n";
    let entry = format!(
        "title kiln node\nversion {version}\nlinux /kiln/vmlinuz\ninitrd /kiln/initrd.img\noptions {cmdline}\n"
    );
    fs::write(files.join("loader.conf"), loader)?;
    fs::write(files.join("kiln.conf"), entry)?;
    let placed: [(PathBuf, &str); 6] = [
        (boot.clone(), &format!("::/{}", e.default_loader)),
        (boot, &format!("::/EFI/systemd/{}", e.systemd_boot)),
        (files.join("loader.conf"), "::/loader/loader.conf"),
        (files.join("kiln.conf"), "::/loader/entries/kiln.conf"),
        (vmlinuz, "::/kiln/vmlinuz"),
        (initrd, "::/kiln/initrd.img"),
    ];
    let mut mmd = Command::new("mmd");
    mmd.arg("-i").arg(&img);
    for d in [
        "::/EFI",
        "::/EFI/BOOT",
        "::/EFI/systemd",
        "::/loader",
        "::/loader/entries",
        "::/kiln",
    ] {
        mmd.arg(d);
    }
    process::run(mmd.env("SOURCE_DATE_EPOCH", epoch.to_string()))?;
    for (from, to) in placed {
        let staged = work.join("esp-stage");
        fs::copy(&from, &staged).with_context(|| format!("cannot read {}", from.display()))?;
        super::normalize_times_file(&staged, epoch)?;
        process::run(
            Command::new("mcopy")
                .arg("-m")
                .arg("-i")
                .arg(&img)
                .arg(&staged)
                .arg(to)
                .env("SOURCE_DATE_EPOCH", epoch.to_string()),
        )?;
    }
    Ok(img)
}

/// The root filesystem: ext4 made from the directory, with fixed UUID, hash seed and times.
fn root_image(
    root: &Path,
    size: u64,
    uuids: &Uuids,
    epoch: u64,
    meta: Option<&BaseMeta>,
    work: &Path,
) -> Result<PathBuf> {
    let img = work.join("root.img");
    fs::File::create(&img)?.set_len(size)?;
    process::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "kiln-root", "-T", "default", "-U", &uuids.root_fs])
            .arg("-E")
            .arg(format!("hash_seed={},root_owner=0:0", uuids.root_fs))
            .arg("-d")
            .arg(root)
            .arg(&img)
            // e2fsprogs ignores a fake time of 0.
            .env("E2FSPROGS_FAKE_TIME", epoch.max(1).to_string()),
    )
    .context("cannot make the root filesystem (is spec.rootfs.size large enough?)")?;
    fix_inodes(root, &img, epoch, meta, work)?;
    Ok(img)
}

/// `mkfs.ext4 -d` (e2fsprogs 1.47.0) copies each file's change time from the staging tree, which no
/// one can set, and its access time, which reading the tree just moved; debugfs sets both to the
/// epoch so the filesystem does not depend on when it was staged. Without root (`meta`), it also
/// gives every file its owner from the base (root for what kiln added) and makes the base's device
/// nodes and FIFOs.
fn fix_inodes(root: &Path, img: &Path, epoch: u64, meta: Option<&BaseMeta>, work: &Path) -> Result<()> {
    let mut script = format!("sif / ctime {epoch}\nsif / atime {epoch}\n");
    let owner = |rel: &str| meta.map(|m| m.owners.get(rel).copied().unwrap_or((0, 0)));
    if let Some((uid, gid)) = owner("") {
        script.push_str(&format!("sif / uid {uid}\nsif / gid {gid}\n"));
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            // debugfs takes a double-quoted name literally (backslashes included, as in systemd's
            // `\x2d` unit names); a quote or newline cannot be written.
            if rel.contains(['"', '\n']) {
                bail!("cannot put {rel:?} in the image: its name has a double quote or a newline");
            }
            // Reading the tree moved its access times too.
            script.push_str(&format!("sif \"/{rel}\" ctime {epoch}\nsif \"/{rel}\" atime {epoch}\n"));
            if let Some((uid, gid)) = owner(&rel) {
                script.push_str(&format!("sif \"/{rel}\" uid {uid}\nsif \"/{rel}\" gid {gid}\n"));
            }
            if e.file_type()?.is_dir() {
                stack.push(path);
            }
        }
    }
    for (rel, kind, major, minor, perm) in meta.map(|m| m.specials.as_slice()).unwrap_or_default() {
        if rel.contains(['"', '\n']) {
            bail!("cannot put {rel:?} in the image: its name has a double quote or a newline");
        }
        let (uid, gid) = owner(rel).unwrap_or((0, 0));
        let type_bits = match kind {
            'c' => 0o020000,
            'b' => 0o060000,
            _ => 0o010000,
        };
        // debugfs's mknod names the new inode in its current directory.
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let args = if *kind == 'p' {
            "p".to_string()
        } else {
            format!("{kind} {major} {minor}")
        };
        script.push_str(&format!("cd \"/{parent}\"\nmknod \"{name}\" {args}\ncd /\n"));
        script.push_str(&format!(
            "sif \"/{rel}\" mode 0{:o}\nsif \"/{rel}\" uid {uid}\nsif \"/{rel}\" gid {gid}\n",
            type_bits | perm
        ));
        for field in ["ctime", "atime", "mtime", "crtime"] {
            script.push_str(&format!("sif \"/{rel}\" {field} {epoch}\n"));
        }
    }
    let file = work.join("debugfs.cmds");
    fs::write(&file, script)?;
    let out = process::run(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&file)
            .arg(img)
            .env("E2FSPROGS_FAKE_TIME", epoch.max(1).to_string()),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = stderr
        .lines()
        .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
    {
        bail!("debugfs could not finish the root filesystem: {line}");
    }
    Ok(())
}

/// Build the raw GPT disk at `out`.
#[allow(clippy::too_many_arguments)]
pub fn build_raw(
    root: &Path,
    layout: &Layout,
    uuids: &Uuids,
    cmdline: &str,
    epoch: u64,
    meta: Option<&BaseMeta>,
    work: &Path,
    out: &Path,
) -> Result<()> {
    let esp = esp_image(root, layout.arch, layout.esp, uuids, cmdline, epoch, work)?;
    let rootfs = root_image(root, layout.root, uuids, epoch, meta, work)?;
    // 1 MiB for the primary table, the partitions, 1 MiB for the backup table.
    let total = MIB + layout.esp + layout.root + MIB;
    let (first, second) = if layout.esp_first {
        ((&esp, layout.esp), (&rootfs, layout.root))
    } else {
        ((&rootfs, layout.root), (&esp, layout.esp))
    };
    let _ = fs::remove_file(out);
    fs::File::create(out)?.set_len(total)?;
    let part = |img: &PathBuf, start: u64, size: u64| {
        let (ty, uuid, name) = if img == &esp {
            (ESP_TYPE, &uuids.esp_part, "esp")
        } else {
            (efi(layout.arch).root_type, &uuids.root_part, efi(layout.arch).root_name)
        };
        format!(
            "start={}, size={}, type={ty}, uuid={uuid}, name=\"{name}\"\n",
            start / 512,
            size / 512
        )
    };
    let script = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n{}{}",
        uuids.disk,
        part(first.0, MIB, first.1),
        part(second.0, MIB + first.1, second.1)
    );
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run sfdisk")?;
    sfdisk.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let o = sfdisk.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "{}",
            kiln_bundle::process::failed("sfdisk (writing the partition table)", o.status, &o.stderr)
        );
    }
    for (img, offset) in [(first.0, MIB), (second.0, MIB + first.1)] {
        process::run(
            Command::new("dd")
                .arg(format!("if={}", img.display()))
                .arg(format!("of={}", out.display()))
                .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
                .arg(format!("seek={}", offset / MIB)),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_newest_kernel_is_chosen_by_version_not_by_text() {
        let tmp = tempfile::tempdir().unwrap();
        let boot = tmp.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        for v in ["6.1.0-28-amd64", "6.10.0-1-amd64", "6.9.12-amd64"] {
            std::fs::write(boot.join(format!("vmlinuz-{v}")), "k").unwrap();
            std::fs::write(boot.join(format!("initrd.img-{v}")), "i").unwrap();
        }
        let (_, initrd, version) = kernel(tmp.path()).unwrap();
        assert_eq!(version, "6.10.0-1-amd64");
        assert!(initrd.ends_with("initrd.img-6.10.0-1-amd64"));
        assert!(version_order("6.1.0-9-amd64") < version_order("6.1.0-10-amd64"));
    }

    use super::*;

    #[test]
    fn uuids_are_stable_distinct_and_well_formed() {
        let a = Uuids::derive(&Sha256::of(b"recipe+bundle"));
        assert_eq!(a, Uuids::derive(&Sha256::of(b"recipe+bundle")));
        assert_ne!(a.root_part, Uuids::derive(&Sha256::of(b"other")).root_part);
        let all = [&a.disk, &a.esp_part, &a.root_part, &a.root_fs];
        for u in all {
            assert_eq!(u.len(), 36);
            assert_eq!(&u[14..15], "4");
            assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        }
        let set: std::collections::BTreeSet<_> = all.into_iter().collect();
        assert_eq!(set.len(), 4);
        assert_eq!(a.esp_volume.len(), 8);
    }
}
