//! Image recipes (`images/*.yaml`): the base operating system, the root filesystem, the partition
//! layout and the kernel command line of a node image.

use anyhow::{bail, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::manifest::Arch;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Recipe {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// The machines the image boots on (default amd64): the root partition's type, the EFI loader,
    /// and the only bundle architecture the image accepts.
    #[serde(default = "amd64")]
    pub architecture: Arch,
    pub base: Base,
    pub rootfs: RootFs,
    pub partitions: Vec<Partition>,
    #[serde(default)]
    pub kernel_command_line: String,
    /// How the node brings its network up.
    #[serde(default)]
    pub network: Network,
}

/// The image's network configuration (systemd-networkd). A node must reach its API server before
/// kubelet can bootstrap, and `nodeIP: auto` needs a default route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    /// DHCP (IPv4 and IPv6) on every Ethernet interface named `en*` or `eth*` (default true).
    /// Off, the image brings its own `.network` files (`--overlay`), or user data writes them.
    #[serde(default = "yes")]
    pub dhcp: bool,
}

impl Default for Network {
    fn default() -> Self {
        Network { dhcp: true }
    }
}

fn amd64() -> Arch {
    Arch::Amd64
}

fn yes() -> bool {
    true
}

/// Exactly one of: a debootstrap suite with packages, or an existing rootfs tarball.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Base {
    #[serde(default)]
    pub debootstrap: Option<Debootstrap>,
    /// A rootfs tarball (tar, tar.gz, tar.zst), relative to the recipe.
    #[serde(default)]
    pub rootfs_tar: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Debootstrap {
    pub suite: String,
    pub mirror: String,
    #[serde(default = "minbase")]
    pub variant: String,
    #[serde(default = "main")]
    pub components: Vec<String>,
    #[serde(default)]
    pub packages: Vec<String>,
}

fn minbase() -> String {
    "minbase".into()
}

fn main() -> Vec<String> {
    vec!["main".into()]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RootFs {
    /// Only `ext4`.
    #[serde(rename = "type")]
    pub fs_type: String,
    /// `2GiB`, `1536MiB`.
    pub size: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionType {
    /// EFI system partition (FAT32): systemd-boot, the kernel and the initrd.
    Esp,
    /// The root filesystem, typed for its architecture per the Discoverable Partitions Specification.
    Root,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Partition {
    pub name: String,
    #[serde(rename = "type")]
    pub part_type: PartitionType,
    /// Required for the ESP; the root partition takes `rootfs.size`.
    #[serde(default)]
    pub size: Option<String>,
}

/// `512MiB`, `2GiB`, `4096KiB`, or bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
    ]
    .iter()
    .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    match num.trim().parse::<u64>() {
        Ok(n) if n > 0 => n
            .checked_mul(mult)
            .ok_or_else(|| anyhow::anyhow!("size {s:?} is too large")),
        _ => bail!("invalid size {s:?}: expected a number with KiB, MiB, GiB or TiB"),
    }
}

/// Sizes of the ESP and root partitions, in bytes (whole MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub arch: Arch,
    pub esp: u64,
    pub root: u64,
    /// The ESP comes first on the disk.
    pub esp_first: bool,
}

impl Recipe {
    pub fn parse(text: &str, origin: &str) -> Result<Recipe> {
        let r: Recipe = kiln_bundle::yaml::from_str(text, origin)?;
        r.validate(origin)?;
        Ok(r)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        if self.kind != "ImageRecipe" {
            bail!("{origin}: kind is {:?}, expected ImageRecipe", self.kind);
        }
        if !self.api_version.starts_with("kiln.dev/") {
            bail!("{origin}: apiVersion {:?} is not kiln.dev/…", self.api_version);
        }
        let name = &self.metadata.name;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            bail!("{origin}: metadata.name {name:?} must be letters, digits, '-', '.', '_'");
        }
        match (&self.spec.base.debootstrap, &self.spec.base.rootfs_tar) {
            (Some(_), Some(_)) => bail!("{origin}: spec.base: give debootstrap or rootfsTar, not both"),
            (None, None) => bail!("{origin}: spec.base: needs debootstrap (suite, mirror, packages) or rootfsTar"),
            (Some(d), None) => {
                for p in &d.packages {
                    if p.is_empty() || p.starts_with('-') || p.contains([',', ' ']) {
                        bail!("{origin}: spec.base.debootstrap.packages: {p:?} is not a package name");
                    }
                }
                if d.suite.is_empty() || d.suite.starts_with('-') || d.suite.contains('/') {
                    bail!(
                        "{origin}: spec.base.debootstrap.suite {:?} is not a suite name",
                        d.suite
                    );
                }
                if !(d.mirror.starts_with("http://")
                    || d.mirror.starts_with("https://")
                    || d.mirror.starts_with("file:/"))
                {
                    bail!(
                        "{origin}: spec.base.debootstrap.mirror {:?} is not an http(s) or file URL",
                        d.mirror
                    );
                }
            }
            (None, Some(_)) => {}
        }
        if self.spec.rootfs.fs_type != "ext4" {
            bail!(
                "{origin}: spec.rootfs.type {:?}: only ext4 is supported",
                self.spec.rootfs.fs_type
            );
        }
        self.layout().map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        if self.spec.kernel_command_line.contains("root=") {
            bail!("{origin}: spec.kernelCommandLine sets root=; kiln adds root=PARTUUID=… itself");
        }
        Ok(())
    }

    /// The partition sizes, checked: exactly one ESP (with a size of at least 64 MiB) and one root.
    pub fn layout(&self) -> Result<Layout> {
        let root = parse_size(&self.spec.rootfs.size).map_err(|e| anyhow::anyhow!("spec.rootfs.size: {e}"))?;
        let esps: Vec<&Partition> = self
            .spec
            .partitions
            .iter()
            .filter(|p| p.part_type == PartitionType::Esp)
            .collect();
        let roots = self
            .spec
            .partitions
            .iter()
            .filter(|p| p.part_type == PartitionType::Root)
            .count();
        if esps.len() != 1 || roots != 1 || self.spec.partitions.len() != 2 {
            bail!("spec.partitions: an image has exactly one esp and one root partition");
        }
        let esp = parse_size(esps[0].size.as_deref().unwrap_or(""))
            .map_err(|e| anyhow::anyhow!("spec.partitions[{}].size: {e}", esps[0].name))?;
        if esp < 64 << 20 {
            bail!(
                "spec.partitions[{}].size: the ESP needs at least 64MiB (FAT32)",
                esps[0].name
            );
        }
        if root < 256 << 20 {
            bail!("spec.rootfs.size: at least 256MiB");
        }
        let mib = |b: u64| b.div_ceil(1 << 20) << 20;
        Ok(Layout {
            arch: self.spec.architecture,
            esp: mib(esp),
            root: mib(root),
            esp_first: self.spec.partitions[0].part_type == PartitionType::Esp,
        })
    }

    /// The digest of the base alone: the key of the cached base rootfs.
    pub fn base_digest(&self, tarball: Option<&Sha256>) -> Sha256 {
        // The architecture too: the same debootstrap section gives another base for arm64.
        let json = serde_json::to_vec(&(&self.spec.base, self.spec.architecture, tarball.map(|t| t.hex())))
            .expect("serializable");
        Sha256::of(&json)
    }

    /// The digest of the whole recipe.
    pub fn digest(&self) -> Sha256 {
        Sha256::of(&serde_json::to_vec(self).expect("serializable"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: kiln.dev/v1alpha1\nkind: ImageRecipe\nmetadata: {name: t}\nspec:\n  base:\n    debootstrap: {suite: bookworm, mirror: 'http://deb.debian.org/debian', packages: [systemd]}\n  rootfs: {type: ext4, size: 2GiB}\n  partitions:\n    - {name: esp, type: esp, size: 256MiB}\n    - {name: root, type: root}\n  kernelCommandLine: console=ttyS0\n";

    #[test]
    fn parses_and_lays_out() {
        let r = Recipe::parse(GOOD, "t.yaml").unwrap();
        let l = r.layout().unwrap();
        assert_eq!(
            l,
            Layout {
                arch: Arch::Amd64,
                esp: 256 << 20,
                root: 2 << 30,
                esp_first: true
            }
        );
        assert_eq!(
            r.base_digest(None),
            Recipe::parse(&GOOD.replace("2GiB", "3GiB"), "t")
                .unwrap()
                .base_digest(None)
        );
        assert_ne!(
            r.digest(),
            Recipe::parse(&GOOD.replace("2GiB", "3GiB"), "t").unwrap().digest()
        );
    }

    #[test]
    fn refuses_bad_recipes_with_the_field() {
        for (from, to, msg) in [
            ("type: ext4", "type: btrfs", "only ext4"),
            ("size: 256MiB", "size: 16MiB", "at least 64MiB"),
            ("packages: [systemd]", "packages: ['-oops']", "not a package name"),
            ("console=ttyS0", "root=/dev/sda1", "kiln adds root="),
            (
                "{name: root, type: root}",
                "{name: root, type: esp, size: 1GiB}",
                "exactly one esp and one root",
            ),
            ("size: 2GiB", "size: lots", "invalid size"),
            ("kind: ImageRecipe", "kind: NodeBundle", "expected ImageRecipe"),
            ("suite: bookworm", "sweet: bookworm", "sweet"),
        ] {
            let text = GOOD.replace(from, to);
            let e = format!("{:#}", Recipe::parse(&text, "images/t.yaml").unwrap_err());
            assert!(e.contains(msg) && e.contains("images/t.yaml"), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("0GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }
}
