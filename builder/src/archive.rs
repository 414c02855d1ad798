//! Unpacking source artifacts (tar.gz, tar.zst, .deb) into the content-addressed cache.
//!
//! An archive is read once: each regular member's bytes go into the cache by digest, and the member
//! list is stored beside them, so later builds never decompress it again. Members with absolute
//! paths or `..`, and links that leave the archive root, make the whole artifact refused. Sizes are
//! bounded, so a decompression bomb fails with an error instead of filling the disk.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use kiln_bundle::digest::Sha256;
use kiln_bundle::manifest::Format;
use kiln_bundle::path::{check_link_target, normalize_member, resolve_link};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;

/// Bounds on what one artifact may unpack to. A decompression bomb trips them with an error that
/// names the limit, instead of filling the disk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes, in all.
    pub max_bytes: u64,
    /// Most bytes per compressed byte; applies above `ratio_floor`.
    pub max_ratio: u64,
    /// Unpacked sizes up to this are always allowed, whatever the ratio.
    pub ratio_floor: u64,
    pub max_members: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // Release binaries compress 3:1, text 10:1; 250:1 is only reached by padding and bombs.
        Limits {
            max_bytes: 8 << 30,
            max_ratio: 250,
            ratio_floor: 64 << 20,
            max_members: 200_000,
        }
    }
}

impl Limits {
    /// The byte bound for an artifact of `compressed` bytes, and how to name it.
    fn bound(&self, compressed: u64) -> (u64, String) {
        let by_ratio = compressed.saturating_mul(self.max_ratio).max(self.ratio_floor);
        if by_ratio < self.max_bytes {
            (
                by_ratio,
                format!(
                    "{by_ratio} bytes ({}:1 of the {compressed}-byte artifact)",
                    self.max_ratio
                ),
            )
        } else {
            (self.max_bytes, format!("{} bytes", self.max_bytes))
        }
    }
}
/// Largest control member of a .deb.
const MAX_CONTROL_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Member {
    File { sha256: Sha256, size: u64, mode: u32 },
    Dir,
    Symlink { target: String },
    Hardlink { target: String },
}

/// The members of one artifact, by normalized path, plus the Debian version for a .deb.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Members {
    pub members: BTreeMap<String, Member>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deb_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deb_package: Option<String>,
}

impl Members {
    /// Follow symlinks and hard links inside the archive to a regular file.
    pub fn resolve(&self, path: &str) -> Result<(&str, &Member)> {
        let mut cur = path.to_string();
        for _ in 0..32 {
            let (key, m) = self
                .members
                .get_key_value(cur.as_str())
                .ok_or_else(|| anyhow!("no member `{cur}`"))?;
            match m {
                Member::Symlink { target } => cur = resolve_link(key, target),
                Member::Hardlink { target } => cur = target.clone(),
                _ => return Ok((key.as_str(), m)),
            }
        }
        Err(anyhow!("`{path}`: too many levels of links"))
    }
}

/// The member list of `artifact` (stored at `blob`), from the cache or by unpacking it once.
pub fn members(cache: &Cache, artifact: &Sha256, blob: &Path, format: Format, what: &str) -> Result<Members> {
    let cached = cache.members_path(artifact);
    if let Ok(bytes) = std::fs::read(&cached) {
        if let Ok(m) = serde_json::from_slice::<Members>(&bytes) {
            if m.members
                .values()
                .all(|m| !matches!(m, Member::File { sha256, .. } if !cache.has(sha256)))
            {
                return Ok(m);
            }
        }
    }
    let m = scan(cache, blob, format, Limits::default())
        .with_context(|| format!("{what}: cannot unpack {}", blob.display()))?;
    kiln_bundle::atomic::write_file(&cached, &serde_json::to_vec(&m)?, 0o644)?;
    Ok(m)
}

/// Unpack an artifact's members into the cache, within `limits`.
pub fn scan(cache: &Cache, blob: &Path, format: Format, limits: Limits) -> Result<Members> {
    let file = File::open(blob).with_context(|| format!("cannot open {}", blob.display()))?;
    let (bound, what) = limits.bound(file.metadata().map(|m| m.len()).unwrap_or(0));
    let f = BufReader::with_capacity(1 << 20, file);
    let lim = Limit {
        bound,
        what,
        members: limits.max_members,
    };
    match format {
        Format::Binary => Ok(Members::default()),
        Format::TarGz => scan_tar(cache, flate2::read::MultiGzDecoder::new(f), &lim),
        Format::TarZst => scan_tar(cache, zstd::stream::read::Decoder::with_buffer(f)?, &lim),
        Format::Deb => scan_deb(cache, f, &lim),
    }
}

struct Limit {
    bound: u64,
    what: String,
    members: usize,
}

/// A `.deb` is an `ar` archive of `debian-binary`, `control.tar.*` and `data.tar.*`.
fn scan_deb(cache: &Cache, r: impl Read, lim: &Limit) -> Result<Members> {
    let mut ar = ar::Archive::new(r);
    let mut control = None;
    let mut data = None;
    while let Some(entry) = ar.next_entry() {
        let entry = entry.context("corrupt .deb (ar archive)")?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        if let Some(kind) = name.strip_prefix("control.tar") {
            control = Some(read_control(decompress(kind, entry)?)?);
        } else if let Some(kind) = name.strip_prefix("data.tar") {
            data = Some(scan_tar(cache, decompress(kind, entry)?, lim)?);
        }
    }
    let mut members = data.ok_or_else(|| anyhow!("not a .deb: no data.tar member"))?;
    let fields = control.ok_or_else(|| anyhow!("not a .deb: no control.tar member"))?;
    members.deb_version = fields.get("Version").cloned();
    members.deb_package = fields.get("Package").cloned();
    Ok(members)
}

fn decompress<'a>(suffix: &str, r: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    Ok(match suffix {
        "" => Box::new(r),
        ".gz" => Box::new(flate2::read::MultiGzDecoder::new(r)),
        ".xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        ".zst" => Box::new(zstd::stream::read::Decoder::new(r)?),
        other => bail!("unsupported .deb member compression `{other}`"),
    })
}

/// The fields of a .deb's `control` file.
fn read_control(r: impl Read) -> Result<BTreeMap<String, String>> {
    let mut tar = tar::Archive::new(r);
    for entry in tar.entries()? {
        let entry = entry.context("corrupt control.tar")?;
        let path = entry.path_bytes().into_owned();
        if normalize_member(&String::from_utf8_lossy(&path))
            .ok()
            .flatten()
            .as_deref()
            == Some("control")
        {
            let mut text = String::new();
            entry
                .take(MAX_CONTROL_BYTES)
                .read_to_string(&mut text)
                .context("control is not UTF-8")?;
            return Ok(text
                .lines()
                .filter(|l| !l.starts_with([' ', '\t']))
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect());
        }
    }
    bail!("control.tar has no control file")
}

/// Counts bytes, failing past the unpacked-size bound.
struct Bounded<'a, R> {
    inner: R,
    total: u64,
    lim: &'a Limit,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        if self.total > self.lim.bound {
            return Err(io::Error::other(format!(
                "the archive unpacks to more than the limit of {}",
                self.lim.what
            )));
        }
        Ok(n)
    }
}

fn scan_tar(cache: &Cache, r: impl Read, lim: &Limit) -> Result<Members> {
    let mut tar = tar::Archive::new(Bounded {
        inner: r,
        total: 0,
        lim,
    });
    let mut out = Members::default();
    for entry in tar.entries().context("not a tar archive")? {
        let entry = entry.map_err(|e| anyhow!("corrupt or truncated tar archive: {e}"))?;
        if out.members.len() >= lim.members {
            bail!("the archive has more than the limit of {} members", lim.members);
        }
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = match normalize_member(&raw) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => bail!("refused: hostile archive member {e}"),
        };
        let kind = entry.header().entry_type();
        let member = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
                let (sha256, size) = cache
                    .insert(entry)
                    .with_context(|| format!("cannot unpack member `{path}`"))?;
                Member::File { sha256, size, mode }
            }
            tar::EntryType::Directory => Member::Dir,
            tar::EntryType::Symlink => {
                let target = link_name(&entry)?;
                check_link_target(&path, &target).map_err(|e| anyhow!("refused: hostile archive member: {e}"))?;
                Member::Symlink { target }
            }
            tar::EntryType::Link => {
                let target = link_name(&entry)?;
                let normalized = match normalize_member(&target) {
                    Ok(Some(t)) => t,
                    _ => bail!("refused: hostile archive member: hard link `{path}` -> `{target}` leaves the root"),
                };
                Member::Hardlink { target: normalized }
            }
            // PAX and GNU long-name records are consumed by the tar reader; devices and FIFOs are never
            // installed into a bundle, so they are passed over.
            other => {
                tracing::debug!("skipping member `{path}` of type {other:?}");
                continue;
            }
        };
        out.members.insert(path, member);
    }
    Ok(out)
}

fn link_name<R: Read>(entry: &tar::Entry<R>) -> Result<String> {
    let t = entry
        .link_name_bytes()
        .ok_or_else(|| anyhow!("a link member has no target"))?;
    Ok(String::from_utf8_lossy(&t).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_zst(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            t.append_data(&mut h, name, &data[..]).unwrap();
        }
        zstd::encode_all(&t.into_inner().unwrap()[..], 19).unwrap()
    }

    #[test]
    fn a_decompression_bomb_trips_the_ratio_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(dir.path().join("cache"))).unwrap();
        let bomb = tar_zst(&[("bin/x", vec![0u8; 32 << 20])]);
        let blob = dir.path().join("bomb.tar.zst");
        std::fs::write(&blob, &bomb).unwrap();
        let limits = Limits {
            ratio_floor: 1 << 20,
            ..Limits::default()
        };
        let e = format!("{:#}", scan(&cache, &blob, Format::TarZst, limits).unwrap_err());
        assert!(
            e.contains("unpacks to more than the limit of") && e.contains(":1 of the"),
            "{e}"
        );
        // The same archive within the default limits unpacks.
        scan(&cache, &blob, Format::TarZst, Limits::default()).unwrap();
    }

    #[test]
    fn too_many_members_is_an_error_naming_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(Some(dir.path().join("cache"))).unwrap();
        let members: Vec<(String, Vec<u8>)> = (0..20).map(|i| (format!("f{i}"), vec![1])).collect();
        let refs: Vec<(&str, Vec<u8>)> = members.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        let blob = dir.path().join("many.tar.zst");
        std::fs::write(&blob, tar_zst(&refs)).unwrap();
        let e = scan(
            &cache,
            &blob,
            Format::TarZst,
            Limits {
                max_members: 10,
                ..Limits::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("more than the limit of 10 members"), "{e}");
    }
}
