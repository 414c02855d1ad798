//! The output formats written from the raw disk image, as a table: each takes the raw disk and
//! returns its files (in the work directory) and where they go.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use fs_err as fs;

use super::{cloud, disk, Format};
use crate::process;

/// What a format made from the raw disk needs.
pub struct FromRaw<'a> {
    pub raw: &'a Path,
    pub work: &'a Path,
    pub out: &'a Path,
    /// `<recipe>-<bundle>-<version>`: every file's name.
    pub stem: &'a str,
    pub uuids: &'a disk::Uuids,
    pub epoch: u64,
}

/// The files a format wrote (in the work directory) and their final paths.
type Written = Vec<(PathBuf, PathBuf)>;

/// Writes one format from the raw disk.
type Writer = fn(&FromRaw) -> Result<Written>;

/// The formats made from the raw disk, in the order they are written; the raw disk itself last,
/// since the others read it.
pub const FROM_RAW: &[(Format, Writer)] = &[
    (Format::Qcow2, qcow2),
    (Format::Vhd, vhd),
    (Format::Ova, ova),
    (Format::Vmdk, vmdk),
    (Format::Gce, gce),
    (Format::Raw, raw),
];

fn qcow2(f: &FromRaw) -> Result<Written> {
    let tmp = f.work.join("disk.qcow2");
    process::run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(f.raw)
            .arg(&tmp),
    )?;
    Ok(vec![(tmp, f.out.join(format!("{}.qcow2", f.stem)))])
}

fn vhd(f: &FromRaw) -> Result<Written> {
    let tmp = f.work.join("disk.vhd");
    cloud::vhd(f.raw, &tmp, &f.uuids.disk, f.epoch)?;
    Ok(vec![(tmp, f.out.join(format!("{}.vhd", f.stem)))])
}

/// The stream-optimized VMDK, written once for `vmdk` and `ova`, in a directory of its own: the
/// descriptor names the extent by the final file name.
fn vmdk_file(f: &FromRaw) -> Result<(PathBuf, String)> {
    let name = format!("{}.vmdk", f.stem);
    let dir = f.work.join("vmdk");
    let path = dir.join(&name);
    if !path.exists() {
        fs::create_dir_all(&dir)?;
        cloud::vmdk(f.raw, &path, &f.uuids.disk)?;
    }
    Ok((path, name))
}

fn vmdk(f: &FromRaw) -> Result<Written> {
    let (path, name) = vmdk_file(f)?;
    Ok(vec![(path, f.out.join(name))])
}

fn ova(f: &FromRaw) -> Result<Written> {
    let (vmdk, _) = vmdk_file(f)?;
    let tmp = f.work.join("disk.ova");
    let capacity = fs::metadata(f.raw)?.len();
    cloud::ova(&vmdk, f.stem, capacity, &tmp, f.work, f.epoch)?;
    Ok(vec![(tmp, f.out.join(format!("{}.ova", f.stem)))])
}

fn gce(f: &FromRaw) -> Result<Written> {
    let tmp = f.work.join("disk.tar.gz");
    cloud::gce(f.raw, &tmp, f.work, f.epoch)?;
    Ok(vec![(tmp, f.out.join(format!("{}.gce.tar.gz", f.stem)))])
}

fn raw(f: &FromRaw) -> Result<Written> {
    Ok(vec![(f.raw.to_path_buf(), f.out.join(format!("{}.raw", f.stem)))])
}
