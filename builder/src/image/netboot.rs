//! The `pxe` format: what a netboot server hands out, written from the customized root tree.
//!
//! - `STEM.pxe.vmlinuz` and `STEM.pxe.initrd`: the image's own kernel and initramfs-tools initrd,
//!   unchanged.
//! - `STEM.pxe.root`: the root image, loaded by the boot loader as a second initrd. A zstd newc
//!   archive holding the whole root filesystem as one uncompressed archive (`kiln/root.cpio`) and
//!   initramfs-tools' boot script `scripts/kiln-netboot`. With `boot=kiln-netboot`, the initrd
//!   mounts a tmpfs as the root, unpacks the archive into it and switches to it: the node runs
//!   from memory, with no disk. (A tmpfs rather than the initramfs itself: runc's `pivot_root`
//!   fails on the initramfs, so containers could not start.)
//! - `STEM.pxe.cmdline`: the kernel command line (the recipe's, `boot=kiln-netboot`).
//! - `STEM.pxe.ipxe`: an iPXE script that loads the three by relative name, so it works from
//!   whichever HTTP or TFTP directory serves them. Per-node arguments (`ds=nocloud;s=URL`,
//!   `kiln.config=URL`) come from the iPXE setting `kiln-args`, which a per-node script sets before
//!   it chains this one.
//!
//! Everything is reproducible: entries in name order, inode numbers counted, times already
//! normalized. Owners are the tree's own, so this format needs root, like `rootfs-tar`. Extended
//! attributes (file capabilities) are not carried: newc has no field for them.

use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fs_err as fs;

/// The initramfs-tools boot script's name (`boot=` on the command line) and its path in the root
/// image.
pub const BOOT_SCRIPT: &str = "kiln-netboot";

/// Where the root image puts the root filesystem's archive in the initramfs.
const ROOT_ARCHIVE: &str = "kiln/root.cpio";

/// initramfs-tools sources `/scripts/$BOOT` and calls `mountroot`; the `mount_*` hooks are its
/// other entry points. klibc's `cpio -i` unpacks into the current directory with owners and
/// modes; the archive is removed once unpacked, so its memory is free before the switch.
const SCRIPT: &str = r#"# kiln netboot (initramfs-tools boot script): the root filesystem in memory, unpacked from
# the root image the boot loader loaded as a second initrd.
mount_top() { :; }
mount_premount() { :; }
mount_bottom() { :; }

mountroot()
{
	[ -f /kiln/root.cpio ] || panic "kiln netboot: no /kiln/root.cpio in the initramfs: the boot loader must load the image's .pxe.root after its .pxe.initrd"
	mount -t tmpfs -o "mode=0755,size=${kiln_rootsize:-75%}" kiln-root "${rootmnt}" || panic "kiln netboot: cannot mount a tmpfs on ${rootmnt}"
	log_begin_msg "kiln netboot: unpacking the root filesystem into memory"
	(cd "${rootmnt}" && cpio -i < /kiln/root.cpio) || panic "kiln netboot: cannot unpack /kiln/root.cpio (out of memory? kiln.rootsize= sets the tmpfs size, default 75% of memory)"
	rm -f /kiln/root.cpio
	log_end_msg
}

for x in $(cat /proc/cmdline); do
	case "$x" in
	kiln.rootsize=*) kiln_rootsize="${x#kiln.rootsize=}" ;;
	esac
done
"#;

/// `/etc/fstab` on a netbooted node: no root device to check or remount.
const FSTAB: &str = "# kiln image (netboot): the root filesystem is a tmpfs unpacked at boot; nothing to mount\n";

/// What the `pxe` format needs.
pub struct Netboot<'a> {
    /// The customized root tree.
    pub root: &'a Path,
    pub work: &'a Path,
    pub out: &'a Path,
    pub stem: &'a str,
    /// The recipe's kernel command line.
    pub cmdline: &'a str,
    pub epoch: u64,
}

/// Writes the five files (in the work directory) and returns where each goes.
pub fn write(n: &Netboot) -> Result<Vec<(PathBuf, PathBuf)>> {
    let (vmlinuz, initrd, _) = super::disk::kernel(n.root)?;
    let name = |ext: &str| format!("{}.pxe.{ext}", n.stem);
    let mut written = Vec::new();
    let mut put = |ext: &str, tmp: PathBuf| written.push((tmp, n.out.join(name(ext))));

    let tmp = n.work.join("pxe.vmlinuz");
    fs::copy(&vmlinuz, &tmp)?;
    put("vmlinuz", tmp);
    let tmp = n.work.join("pxe.initrd");
    fs::copy(&initrd, &tmp)?;
    put("initrd", tmp);

    let inner = n.work.join("pxe-root.cpio");
    root_archive(n.root, n.epoch, &inner)?;
    crate::check_interrupted()?;
    let tmp = n.work.join("pxe.root");
    root_image(&inner, n.epoch, &tmp)?;
    fs::remove_file(&inner)?;
    put("root", tmp);

    let cmdline = format!("{} boot={BOOT_SCRIPT} rw", n.cmdline.trim());
    let tmp = n.work.join("pxe.cmdline");
    fs::write(&tmp, format!("{cmdline}\n"))?;
    put("cmdline", tmp);
    let tmp = n.work.join("pxe.ipxe");
    fs::write(&tmp, ipxe_script(n.stem, &cmdline))?;
    put("ipxe", tmp);
    for (tmp, _) in &written {
        super::normalize_times_file(tmp, n.epoch)?;
    }
    Ok(written)
}

/// The iPXE script: kernel, initrd and root image by relative name; `initrd=` names them for the
/// kernel's EFI stub when iPXE runs as UEFI firmware's network driver.
pub fn ipxe_script(stem: &str, cmdline: &str) -> String {
    format!(
        "#!ipxe\n\
         # kiln netboot: {stem}. Serve this directory over HTTP or TFTP and point DHCP's boot file at\n\
         # this script, or chain it from a per-node script that sets kiln-args first, for example\n\
         #   set kiln-args kiln.config=http://10.0.0.1/nodes/${{net0/mac:hexhyp}}.yaml\n\
         kernel {stem}.pxe.vmlinuz initrd={stem}.pxe.initrd initrd={stem}.pxe.root {cmdline} ${{kiln-args}}\n\
         initrd {stem}.pxe.initrd\n\
         initrd {stem}.pxe.root\n\
         boot\n"
    )
}

/// The root image: a zstd newc archive with the boot script and the root archive.
fn root_image(inner: &Path, epoch: u64, out: &Path) -> Result<()> {
    let file = fs::File::create(out)?;
    let mut z = zstd::stream::write::Encoder::new(BufWriter::new(file), 6)?;
    for (ino, name) in [(1, "kiln"), (2, "scripts")] {
        entry(name, ino, 0o040755, 0, 0, epoch).write(&mut z, 0).finish()?;
    }
    let mut w = entry(&format!("scripts/{BOOT_SCRIPT}"), 3, 0o100755, 0, 0, epoch).write(&mut z, SCRIPT.len() as u32);
    w.write_all(SCRIPT.as_bytes())?;
    w.finish()?;
    let len = fs::metadata(inner)?.len();
    let len = u32::try_from(len)
        .with_context(|| format!("the root filesystem's archive is {len} bytes; newc holds at most 4 GiB per file"))?;
    let mut w = entry(ROOT_ARCHIVE, 4, 0o100644, 0, 0, epoch).write(&mut z, len);
    std::io::copy(&mut fs::File::open(inner)?, &mut w)?;
    w.finish()?;
    let z = cpio::newc::trailer(z)?;
    z.finish()?.flush()?;
    Ok(())
}

fn entry(name: &str, ino: u32, mode: u32, uid: u32, gid: u32, mtime: u64) -> cpio::newc::Builder {
    cpio::newc::Builder::new(name)
        .ino(ino)
        .mode(mode)
        .uid(uid)
        .gid(gid)
        .nlink(1)
        .mtime(mtime as u32)
}

/// The whole root tree as one uncompressed newc archive, in name order, with its own `/etc/fstab`
/// and without `/boot`'s contents (the kernel and initrd are files of their own).
pub fn root_archive(root: &Path, epoch: u64, out: &Path) -> Result<()> {
    let mut w = BufWriter::new(fs::File::create(out)?);
    let mut ino = 0u32;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        // A directory's entries in name order, then its subdirectories' (first name first): every
        // directory comes before what it holds.
        let mut subdirs = Vec::new();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_socket() {
                continue;
            }
            let Some(name) = rel.to_str() else {
                bail!("{}: a file name that is not UTF-8", path.display());
            };
            ino += 1;
            let mut e = entry(name, ino, meta.mode(), meta.uid(), meta.gid(), epoch);
            if ft.is_block_device() || ft.is_char_device() {
                let (major, minor) = dev_numbers(meta.rdev());
                e = e.rdev_major(major).rdev_minor(minor);
            }
            if ft.is_dir() {
                e.write(&mut w, 0).finish()?;
                if rel != Path::new("boot") {
                    subdirs.push(rel);
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)?;
                let target = target.as_os_str().as_encoded_bytes();
                let mut f = e.write(&mut w, target.len() as u32);
                f.write_all(target)?;
                f.finish()?;
            } else if ft.is_file() {
                let body: Box<dyn Read> = if rel == Path::new("etc/fstab") {
                    Box::new(FSTAB.as_bytes())
                } else {
                    Box::new(fs::File::open(&path)?)
                };
                let len = if rel == Path::new("etc/fstab") {
                    FSTAB.len() as u64
                } else {
                    meta.len()
                };
                let len = u32::try_from(len)
                    .with_context(|| format!("{}: over 4 GiB, more than newc holds", path.display()))?;
                let mut f = e.write(&mut w, len);
                let copied = std::io::copy(&mut body.take(u64::from(len)), &mut f)?;
                if copied != u64::from(len) {
                    bail!("{}: changed size while it was archived", path.display());
                }
                f.finish()?;
            } else {
                // FIFOs: the header is the file.
                e.write(&mut w, 0).finish()?;
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    cpio::newc::trailer(w)?.flush()?;
    Ok(())
}

/// A device number's major and minor, as glibc's `major()` and `minor()` split it.
fn dev_numbers(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive's entries as `name mode uid size` lines, read back with the crate's reader.
    fn listing(archive: &Path) -> Vec<String> {
        let mut f = std::fs::File::open(archive).unwrap();
        let mut out = Vec::new();
        loop {
            let r = cpio::newc::Reader::new(f).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            out.push(format!("{} {:o} {} {}", e.name(), e.mode(), e.uid(), e.file_size()));
            f = r.finish().unwrap();
        }
        out
    }

    #[test]
    fn the_root_archive_lists_parents_first_in_name_order_without_boot_and_with_its_own_fstab() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        for d in ["etc", "boot", "usr/bin", "a"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/fstab"), "PARTUUID=x / ext4 defaults 0 1\n").unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0-1-amd64"), "kernel").unwrap();
        std::fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        super::super::normalize_times(&root, 1).unwrap();
        let a = tmp.path().join("a.cpio");
        root_archive(&root, 1, &a).unwrap();
        let uid = std::fs::metadata(&root).unwrap().uid();
        assert_eq!(
            listing(&a),
            [
                format!("a 40755 {uid} 0"),
                format!("bin 120777 {uid} 7"),
                format!("boot 40755 {uid} 0"),
                format!("etc 40755 {uid} 0"),
                format!("usr 40755 {uid} 0"),
                format!("etc/fstab 100644 {uid} {}", FSTAB.len()),
                format!("usr/bin 40755 {uid} 0"),
                format!("usr/bin/tool 100644 {uid} 10"),
            ]
        );
        // The same tree gives the same bytes.
        let b = tmp.path().join("b.cpio");
        root_archive(&root, 1, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    }

    #[test]
    fn the_ipxe_script_loads_kernel_initrd_and_root_by_relative_name_with_per_node_arguments() {
        let s = ipxe_script("n-b-1", "console=ttyS0 boot=kiln-netboot rw");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains(
            "\nkernel n-b-1.pxe.vmlinuz initrd=n-b-1.pxe.initrd initrd=n-b-1.pxe.root console=ttyS0 boot=kiln-netboot rw ${kiln-args}\n"
        ));
        let initrds: Vec<&str> = s.lines().filter(|l| l.starts_with("initrd ")).collect();
        assert_eq!(initrds, ["initrd n-b-1.pxe.initrd", "initrd n-b-1.pxe.root"]);
        assert!(s.ends_with("\nboot\n"));
    }

    #[test]
    fn device_numbers_split_as_glibc_does() {
        assert_eq!(dev_numbers(0x0501), (5, 1)); // /dev/console
        assert_eq!(dev_numbers(0x0103), (1, 3)); // /dev/null
                                                 // glibc's makedev for a major and a minor past the old 8-bit fields.
        let makedev = |major: u64, minor: u64| {
            ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
        };
        assert_eq!(dev_numbers(makedev(4100, 70000)), (4100, 70000));
    }
}
