//! The bundle index, `kiln-bundle.json`: the first member of every bundle. It lists every other
//! member with its mode, size and digest, so a reader can verify each file as it streams past.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::error::{Error, Result};
use crate::manifest::Arch;
use crate::mode::Mode;
use crate::path::{check_link_target, check_relative, parents};
use crate::verity::VerityRecord;

/// Name of the index member, always first in the archive.
pub const INDEX_NAME: &str = "kiln-bundle.json";
/// Path of the SPDX SBOM inside the bundle.
pub const SBOM_PATH: &str = "sbom.spdx.json";
/// Current index schema version. Readers refuse newer ones.
pub const SCHEMA_VERSION: u32 = 1;
/// Largest index a reader accepts: a bundle lists hundreds of files, not millions.
pub const MAX_INDEX_BYTES: u64 = 16 << 20;
/// Most files an index may list.
pub const MAX_FILES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    pub name: String,
    pub version: String,
    pub arch: Arch,
    pub kubernetes_version: String,
    pub components: Vec<ComponentRecord>,
    /// Every member but the index itself, sorted by path.
    pub files: Vec<FileRecord>,
    /// Node-specific placeholders (`@kiln:NAME@`) in rendered files, substituted at first boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placeholders: Vec<PlaceholderRecord>,
    /// Files the manifest declares setuid/setgid (`spec.setid`), sorted. Any other file with such a
    /// bit is refused: node runtimes never need one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setid: Vec<String>,
    pub build: BuildInfo,
    /// The read-only runtime layer beside the bundle (`spec.verity`), if it was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<VerityRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlaceholderRecord {
    pub name: String,
    /// Secret values are written 0600 and never logged.
    #[serde(default)]
    pub secret: bool,
    /// Bundle files that contain it, sorted.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ComponentRecord {
    pub name: String,
    pub version: String,
    /// The URL (before any mirror rewrite) or `apt:<package>=<version>`.
    pub source: String,
    pub source_sha256: Sha256,
    pub format: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileRecord {
    pub path: String,
    pub kind: EntryKind,
    pub mode: Mode,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The component the file came from; absent for kiln's own files (SBOM, extra files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuildInfo {
    /// `kiln <version>` that wrote the bundle.
    pub tool: String,
    /// The mtime of every member (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u64,
    pub compression: String,
}

impl Index {
    /// A bundle without kubelet is a container-runtime bundle.
    pub fn has_kubelet(&self) -> bool {
        self.components.iter().any(|c| c.name == "kubelet")
    }

    pub fn flavor(&self) -> &'static str {
        if self.has_kubelet() {
            "node (container runtime + kubelet)"
        } else {
            "container runtime (no kubelet)"
        }
    }

    pub fn file_name(&self) -> String {
        crate::bundle_file_name(&self.name, &self.version, self.arch)
    }

    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The index as the verity image holds it (`kiln-bundle.json` inside): everything but the
    /// image's own record.
    pub fn without_verity(&self) -> Index {
        Index {
            verity: None,
            ..self.clone()
        }
    }

    pub fn file(&self, path: &str) -> Option<&FileRecord> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }

    /// Directories implied by the files' paths, sorted.
    pub fn directories(&self) -> BTreeSet<&str> {
        self.files.iter().flat_map(|f| parents(&f.path)).collect()
    }

    /// Canonical serialization: the writer and every reader agree on these bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("index serializes");
        v.push(b'\n');
        v
    }

    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Index> {
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(Error::bundle(
                origin,
                format!("{INDEX_NAME} is larger than {MAX_INDEX_BYTES} bytes"),
            ));
        }
        let index: Index = serde_json::from_slice(bytes).map_err(|e| Error::Parse {
            origin: format!("{origin}: {INDEX_NAME}"),
            line: e.line() as u64,
            column: e.column() as u64,
            message: e.to_string(),
        })?;
        index.validate(origin)?;
        Ok(index)
    }

    /// Structural checks: safe unique sorted paths, digests on files, confined link targets, no file
    /// where another needs a directory.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| Error::bundle(origin, format!("{INDEX_NAME}: {msg}"));
        if self.schema_version != SCHEMA_VERSION {
            return Err(bad(format!(
                "schema version {} is not supported (this kiln reads {SCHEMA_VERSION})",
                self.schema_version
            )));
        }
        if self.files.len() > MAX_FILES {
            return Err(bad(format!(
                "lists {} files, more than the limit of {MAX_FILES}",
                self.files.len()
            )));
        }
        for pair in self.files.windows(2) {
            if pair[0].path >= pair[1].path {
                return Err(bad(format!("files are not sorted and unique at `{}`", pair[1].path)));
            }
        }
        let dirs = self.directories();
        for f in &self.files {
            check_relative(&f.path).map_err(|e| bad(e.to_string()))?;
            if f.path == INDEX_NAME {
                return Err(bad(format!("lists itself as `{}`", f.path)));
            }
            if dirs.contains(f.path.as_str()) {
                return Err(bad(format!("`{}` is a file but also a parent directory", f.path)));
            }
            match f.kind {
                EntryKind::File => {
                    if f.sha256.is_none() || f.target.is_some() {
                        return Err(bad(format!("`{}`: a file needs a sha256 and no target", f.path)));
                    }
                    if f.mode.is_setid() && self.setid.binary_search(&f.path).is_err() {
                        return Err(bad(format!(
                            "`{}` is setuid/setgid (mode {}): a node bundle never needs that; a manifest that means it lists the file in spec.setid",
                            f.path, f.mode
                        )));
                    }
                }
                EntryKind::Symlink => {
                    let target = f
                        .target
                        .as_deref()
                        .ok_or_else(|| bad(format!("`{}`: a symlink needs a target", f.path)))?;
                    check_link_target(&f.path, target).map_err(|e| bad(e.to_string()))?;
                    if f.sha256.is_some() || f.size != 0 {
                        return Err(bad(format!("`{}`: a symlink has no size or digest", f.path)));
                    }
                }
            }
        }
        for pair in self.setid.windows(2) {
            if pair[0] >= pair[1] {
                return Err(bad(format!("setid is not sorted and unique at `{}`", pair[1])));
            }
        }
        for p in &self.setid {
            if !self.file(p).is_some_and(|f| f.kind == EntryKind::File) {
                return Err(bad(format!("setid names `{p}`, which is not a file in the bundle")));
            }
        }
        for p in &self.placeholders {
            if !crate::placeholder::is_known(&p.name) {
                return Err(bad(format!("unknown placeholder `{}`", p.name)));
            }
            for f in &p.files {
                if self.file(f).is_none() {
                    return Err(bad(format!(
                        "placeholder `{}` names `{f}`, which is not in the bundle",
                        p.name
                    )));
                }
            }
        }
        if let Some(v) = &self.verity {
            v.validate(&format!("{origin}: {INDEX_NAME}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Index {
        Index {
            schema_version: SCHEMA_VERSION,
            name: "t".into(),
            version: "1".into(),
            arch: Arch::Amd64,
            kubernetes_version: "1.36.4".into(),
            components: vec![],
            files: vec![
                FileRecord {
                    path: "bin/a".into(),
                    kind: EntryKind::File,
                    mode: Mode::EXEC,
                    size: 1,
                    sha256: Some(Sha256::of(b"a")),
                    target: None,
                    component: Some("runc".into()),
                },
                FileRecord {
                    path: "bin/b".into(),
                    kind: EntryKind::Symlink,
                    mode: Mode(0o777),
                    size: 0,
                    sha256: None,
                    target: Some("a".into()),
                    component: None,
                },
            ],
            placeholders: vec![],
            setid: vec![],
            build: BuildInfo {
                tool: "kiln test".into(),
                source_date_epoch: 0,
                compression: "zstd-3".into(),
            },
            verity: None,
        }
    }

    #[test]
    fn setuid_files_must_be_declared_and_declared_ones_must_exist() {
        let mut i = sample();
        i.files[0].mode = Mode(0o4755);
        let e = i.validate("b").unwrap_err().to_string();
        assert!(e.contains("`bin/a` is setuid/setgid (mode 4755)"), "{e}");
        i.setid = vec!["bin/a".into()];
        i.validate("b").unwrap();
        i.setid = vec!["bin/a".into(), "bin/nope".into()];
        let e = i.validate("b").unwrap_err().to_string();
        assert!(e.contains("setid names `bin/nope`"), "{e}");
        i.files[0].mode = Mode(0o2755);
        i.setid = vec![];
        assert!(i.validate("b").is_err(), "setgid too");
    }

    #[test]
    fn round_trips() {
        let i = sample();
        let back = Index::from_json(&i.to_json(), "t").unwrap();
        assert_eq!(back, i);
        assert!(back.file("bin/a").is_some());
        assert!(back.file("bin/c").is_none());
        assert_eq!(back.directories().into_iter().collect::<Vec<_>>(), vec!["bin"]);
    }

    #[test]
    fn refuses_escaping_links_and_unsorted_files() {
        let mut i = sample();
        i.files[1].target = Some("../../etc/shadow".into());
        assert!(Index::from_json(&i.to_json(), "t")
            .unwrap_err()
            .to_string()
            .contains("leaves the root"));
        let mut i = sample();
        i.files.swap(0, 1);
        assert!(Index::from_json(&i.to_json(), "t")
            .unwrap_err()
            .to_string()
            .contains("not sorted"));
        let mut i = sample();
        i.files[0].path = "../x".into();
        assert!(Index::from_json(&i.to_json(), "t").is_err());
    }

    #[test]
    fn refuses_unknown_fields_and_future_schema() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["extra"] = 1.into();
        assert!(Index::from_json(&serde_json::to_vec(&v).unwrap(), "t")
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
        let mut i = sample();
        i.schema_version = 99;
        assert!(Index::from_json(&i.to_json(), "t")
            .unwrap_err()
            .to_string()
            .contains("schema version 99"));
    }
}
