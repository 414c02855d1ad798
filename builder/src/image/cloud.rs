//! Disk formats clouds import, written from the raw disk and byte-reproducible like it:
//! - `vhd`: Azure's fixed VHD (Microsoft's "Virtual Hard Disk Image Format Specification"): the raw
//!   disk, its size rounded up to a whole MiB as Azure requires, then a 512-byte footer. The footer's
//!   time stamp is SOURCE_DATE_EPOCH and its unique id is the disk's GUID, so the same inputs give the
//!   same bytes (`qemu-img convert -O vpc` writes the current time and a random id).
//! - `vmdk`: vSphere's streamOptimized VMDK (what an OVA carries and what vSphere imports),
//!   written by `qemu-img` with an LSI Logic adapter; its descriptor's content id (CID), random in
//!   qemu-img's output, is taken from the disk's GUID.
//! - `ova`: the streamOptimized VMDK with an OVF 1.0 descriptor and a SHA256 manifest in a tar, as
//!   vSphere deploys it: UEFI firmware (kiln's disks boot systemd-boot), 2 vCPUs, 4 GiB, an LSI Logic
//!   SCSI controller and a VMXNET3 adapter on "VM Network"; each is changed at deployment.
//! - `gce`: Compute Engine's import format: the disk named `disk.raw` in a gzipped GNU tar
//!   (`--format=oldgnu`, sparse), owners, mode and time fixed, gzip without a name or time stamp.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use fs_err as fs;

use crate::process;

const MIB: u64 = 1 << 20;
/// 2000-01-01T00:00:00Z, the VHD time stamp's origin, in Unix time.
const VHD_EPOCH: u64 = 946_684_800;

/// Copy `raw` to `out` as a fixed VHD. `guid` is the disk's GUID (36 characters with dashes).
pub fn vhd(raw: &Path, out: &Path, guid: &str, source_date_epoch: u64) -> Result<()> {
    let size = fs::metadata(raw)?.len().div_ceil(MIB) * MIB;
    process::run(Command::new("cp").arg("--sparse=always").arg(raw).arg(out))?;
    let mut f = fs::OpenOptions::new().write(true).open(out)?;
    f.set_len(size)?;
    f.seek(SeekFrom::Start(size))?;
    f.write_all(&vhd_footer(size, guid, source_date_epoch)?)?;
    f.sync_all()?;
    Ok(())
}

/// The 512-byte footer of a fixed disk of `size` bytes.
pub fn vhd_footer(size: u64, guid: &str, source_date_epoch: u64) -> Result<[u8; 512]> {
    let id = hex::decode(guid.replace('-', "")).context("the disk GUID is not hex")?;
    anyhow::ensure!(id.len() == 16, "the disk GUID `{guid}` is not 16 bytes");
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none for a fixed disk
    let stamp = u32::try_from(source_date_epoch.saturating_sub(VHD_EPOCH)).unwrap_or(u32::MAX);
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"kiln");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // creator version
    f[36..40].copy_from_slice(b"Wi2k"); // creator host OS, as Azure's own tools write it
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
    let (c, h, s) = chs(size / 512);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(&id);
    let sum = f.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    Ok(f)
}

/// Cylinders, heads and sectors per track for `sectors`, by the specification's algorithm.
fn chs(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(65535 * 16 * 255);
    let (spt, heads, cth) = if total >= 65535 * 16 * 63 {
        (255, 16, total / 255)
    } else {
        let mut spt = 17;
        let mut cth = total / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
        (spt, heads, cth)
    };
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// `raw` as a streamOptimized VMDK at `out`. The descriptor names its extent by the file name,
/// so `out` must already have the name the image ships under.
pub fn vmdk(raw: &Path, out: &Path, guid: &str) -> Result<()> {
    process::run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "vmdk"])
            .args(["-o", "subformat=streamOptimized,adapter_type=lsilogic"])
            .arg(raw)
            .arg(out),
    )?;
    let cid = &guid.replace('-', "")[..8];
    let mut f = fs::OpenOptions::new().read(true).write(true).open(out)?;
    // The embedded descriptor sits in the first sectors after the 512-byte header.
    let mut head = Vec::new();
    (&mut f).take(64 * 1024).read_to_end(&mut head)?;
    let (at, text) =
        with_cid(&head, cid).with_context(|| format!("{}: no `CID=` line in the VMDK descriptor", out.display()))?;
    f.seek(SeekFrom::Start(at as u64))?;
    f.write_all(&text)?;
    f.sync_all()?;
    Ok(())
}

/// The embedded descriptor with its `CID=` line (not `parentCID=`) set to `cid`: its offset in
/// `head` and its new text. qemu-img writes the CID without leading zeros, so the new line may be
/// longer: the descriptor is NUL-padded to its sectors, and the text may grow into that padding.
fn with_cid(head: &[u8], cid: &str) -> Option<(usize, Vec<u8>)> {
    let start = find(head, b"# Disk DescriptorFile")?;
    let len = head[start..].iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&head[start..start + len]).ok()?;
    let mut found = false;
    let mut new = String::with_capacity(len + 8);
    for line in text.split_inclusive('\n') {
        match line.strip_prefix("CID=") {
            Some(v) if !found && v.trim_end().bytes().all(|b| b.is_ascii_hexdigit()) => {
                found = true;
                new.push_str(&format!("CID={cid}\n"));
            }
            _ => new.push_str(line),
        }
    }
    // The text may only grow into zeros of the padding, never over the next structure.
    let room = head[start + len..].iter().take_while(|&&b| b == 0).count();
    (found && new.len() <= len + room.saturating_sub(1)).then(|| (start, new.into_bytes()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An OVA at `out` of the streamOptimized `vmdk` (named `<name>.vmdk`) for a disk of `capacity`
/// bytes: the descriptor `<name>.ovf` first, then the manifest `<name>.mf`, then the disk, as the OVF
/// specification orders them, in a tar with fixed owners, modes and times.
pub fn ova(vmdk: &Path, name: &str, capacity: u64, out: &Path, work: &Path, source_date_epoch: u64) -> Result<()> {
    let dir = work.join("ova");
    fs::create_dir_all(&dir)?;
    let disk = format!("{name}.vmdk");
    let disk_size = fs::metadata(vmdk)?.len();
    let ovf = ovf_descriptor(name, &disk, disk_size, capacity);
    let (disk_sum, _) = kiln_bundle::digest::hash_file(vmdk)?;
    let manifest = format!(
        "SHA256({name}.ovf)= {}\nSHA256({disk})= {}\n",
        kiln_bundle::digest::Sha256::of(ovf.as_bytes()),
        disk_sum
    );
    fs::write(dir.join(format!("{name}.ovf")), &ovf)?;
    fs::write(dir.join(format!("{name}.mf")), &manifest)?;
    if fs::hard_link(vmdk, dir.join(&disk)).is_err() {
        fs::copy(vmdk, dir.join(&disk))?;
    }
    let members = [format!("{name}.ovf"), format!("{name}.mf"), disk];
    fixed_tar(&["--format=ustar"], &dir, &members, out, source_date_epoch)?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The OVF 1.0 descriptor of a one-disk kiln node named `name`. `name` comes from the recipe and
/// bundle names, which are DNS-label-like, so it needs no XML escaping; it is escaped anyway.
pub fn ovf_descriptor(name: &str, disk: &str, disk_size: u64, capacity: u64) -> String {
    let name = xml_escape(name);
    let disk = xml_escape(disk);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- kiln image: a kiln node for vSphere. It boots with UEFI; CPUs, memory and the network are defaults to change at deployment. -->
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{disk}" ovf:id="file1" ovf:size="{disk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The node's network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A kiln node</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest">
      <Info>Linux, 64-bit</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPUs</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>4096 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>4096</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tar at `out` of `members` of `dir`, in that order, with `format` options, owners 0/0, mode
/// 0644 and every time `source_date_epoch`, so the same files give the same bytes.
fn fixed_tar(format: &[&str], dir: &Path, members: &[String], out: &Path, source_date_epoch: u64) -> Result<()> {
    process::run(
        Command::new("tar")
            .args(format)
            .args(["--numeric-owner", "--owner=0", "--group=0", "--mode=0644"])
            .arg(format!("--mtime=@{source_date_epoch}"))
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(out)
            .args(members),
    )?;
    Ok(())
}

/// `raw` as `disk.raw` in a gzipped sparse tar at `out`, as Compute Engine imports it.
pub fn gce(raw: &Path, out: &Path, work: &Path, source_date_epoch: u64) -> Result<()> {
    let dir = work.join("gce");
    fs::create_dir_all(&dir)?;
    let disk = dir.join("disk.raw");
    // A hard link: the tar member must be named disk.raw, and copying gigabytes is not needed.
    if fs::hard_link(raw, &disk).is_err() {
        process::run(Command::new("cp").arg("--sparse=always").arg(raw).arg(&disk))?;
    }
    let tar = work.join("disk.tar");
    fixed_tar(
        &["--format=oldgnu", "--sparse"],
        &dir,
        &["disk.raw".to_string()],
        &tar,
        source_date_epoch,
    )?;
    let gz = fs::File::create(out)?;
    process::run(Command::new("gzip").args(["-n", "-c"]).arg(&tar).stdout(gz.into_file()))?;
    fs::remove_file(&tar)?;
    fs::remove_file(&disk)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_footer_follows_the_specification() {
        let guid = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0ff";
        let f = vhd_footer(512 * MIB, guid, VHD_EPOCH + 10).unwrap();
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(u32::from_be_bytes(f[24..28].try_into().unwrap()), 10);
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 512 * MIB);
        assert_eq!(u32::from_be_bytes(f[60..64].try_into().unwrap()), 2);
        // The checksum is the one's complement of the sum of the other bytes.
        let mut zeroed = f;
        zeroed[64..68].fill(0);
        let sum = zeroed.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
        assert_eq!(u32::from_be_bytes(f[64..68].try_into().unwrap()), !sum);
        assert_eq!(hex::encode(&f[68..84]), guid.replace('-', ""));
        // 512 MiB: 1048576 sectors -> 17 spt gives 61680 cylinders x heads > 16, so 31 spt, then
        // 63 spt: 16 heads, 1040 cylinders.
        assert_eq!(chs(512 * MIB / 512), (1040, 16, 63));
        // Past the CHS limit, the geometry is capped.
        assert_eq!(chs(u64::MAX / 512), (65535, 16, 255));
        assert!(vhd_footer(MIB, "not-a-guid", 0).is_err());
    }

    #[test]
    fn the_vmdk_cid_is_set_whatever_its_length() {
        let head = b"KDMV\0\0# Disk DescriptorFile\nversion=1\nCID=58ab03\nparentCID=ffffffff\n\0\0\0\0\0\0\0\0";
        let (at, text) = with_cid(head, "0f1e2d3c").unwrap();
        assert_eq!(at, 6);
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "# Disk DescriptorFile\nversion=1\nCID=0f1e2d3c\nparentCID=ffffffff\n"
        );
        assert!(with_cid(b"# Disk DescriptorFile\nparentCID=ffffffff\n\0\0", "0f1e2d3c").is_none());
        // No padding to grow into: refused rather than overwriting what follows.
        assert!(with_cid(b"# Disk DescriptorFile\nCID=1\n\0X", "0f1e2d3c").is_none());
    }
}
