//! The `NodeBundle` manifest (`apiVersion: kiln.dev/v1alpha1`): what goes into a bundle, pinned.
//!
//! Parsing is strict: unknown fields, wrong types and missing fields are errors naming the file,
//! line, column and field. [`Manifest::validate`] then checks what YAML types cannot express.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::error::{Error, Result};
use crate::mode::Mode;
use crate::path::check_relative;

pub const API_VERSION: &str = "kiln.dev/v1alpha1";
pub const KIND: &str = "NodeBundle";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Manifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Target architectures; `kiln build` writes one bundle per architecture.
    pub architectures: Vec<Arch>,
    pub kubernetes_version: String,
    pub components: Components,
    /// Extra files placed into the bundle as they are.
    #[serde(default)]
    pub files: Vec<ExtraFile>,
    /// OCI image archives carried in the bundle and imported into containerd's `k8s.io`
    /// namespace before kubelet starts: the sandbox image and DaemonSet images of clusters
    /// without registry access.
    #[serde(default)]
    pub images: Vec<PreloadedImage>,
    /// Bundle paths allowed to keep a setuid/setgid bit. Empty by default: kiln refuses such bits
    /// everywhere else, in the build and in the verifier on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub setid: Vec<String>,
    /// Also build the read-only runtime layer: the bundle's files in an erofs image with a dm-verity
    /// hash tree (`BUNDLE.verity`), whose root hash the index records. kiln-firstboot mounts it
    /// instead of unpacking where the node can do dm-verity. Needs mkfs.erofs and veritysetup.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verity: bool,
    /// Node configuration compiled into the bundle; every field has a default.
    #[serde(default)]
    pub config: NodeConfig,
}

/// The `spec.config` section: containerd, kubelet and CNI settings rendered at build time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    #[serde(default)]
    pub containerd: ContainerdConfig,
    #[serde(default)]
    pub kubelet: KubeletConfig,
    #[serde(default)]
    pub cni: CniConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerdConfig {
    /// The pod sandbox (pause) image, pinned.
    #[serde(default = "default_sandbox_image")]
    pub sandbox_image: String,
    /// runc uses the systemd cgroup driver (and kubelet `cgroupDriver: systemd`).
    #[serde(default = "yes")]
    pub systemd_cgroup: bool,
    /// CRI's `restrict_oom_score_adj`, for hosts where containerd may not lower oom_score_adj
    /// (containers, VMs without CAP_SYS_RESOURCE).
    #[serde(default)]
    pub restrict_oom_score_adj: bool,
    /// The snapshotter CRI unpacks images with (`overlayfs`; `native`, `btrfs`, `zfs`, `devmapper`
    /// need the filesystem or device on the node).
    #[serde(default = "default_snapshotter")]
    pub snapshotter: String,
    /// Per registry host (`registry.example.com:5000`, `docker.io`, or `_default` for every host
    /// without its own entry): rendered as containerd's `certs.d/<host>/hosts.toml`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, Registry>,
    /// Merged into the rendered config.toml last: tables merge key by key, other values replace.
    #[serde(default)]
    pub overrides: BTreeMap<String, serde_json::Value>,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            sandbox_image: default_sandbox_image(),
            systemd_cgroup: true,
            restrict_oom_score_adj: false,
            snapshotter: default_snapshotter(),
            registries: BTreeMap::new(),
            overrides: BTreeMap::new(),
        }
    }
}

fn default_snapshotter() -> String {
    "overlayfs".into()
}

/// One registry host's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Registry {
    /// The registry's own URL; `https://HOST` by default (`https://registry-1.docker.io` for
    /// `docker.io`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Hosts tried before the server, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// A CA certificate (PEM) for the server, relative to the manifest; carried in the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Skip verifying the server's certificate (test registries only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_verify: bool,
    /// The server needs credentials: they are node-specific secrets, never in the bundle, filled at
    /// first boot from the node configuration's `registryAuth.<host>` (the file is then 0600).
    #[serde(default, skip_serializing_if = "is_false")]
    pub auth: bool,
}

/// A mirror of a registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mirror {
    /// `https://mirror.example.com` (or `http://` for a plain-HTTP mirror).
    pub host: String,
    /// What the mirror may do: `pull`, `resolve` (turn a tag into a digest), `push`.
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_verify: bool,
}

fn default_capabilities() -> Vec<String> {
    vec!["pull".into(), "resolve".into()]
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_sandbox_image() -> String {
    "registry.k8s.io/pause:3.10".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeletConfig {
    /// KubeletConfiguration (kubelet.config.k8s.io/v1beta1) fields, merged over kiln's defaults.
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Extra command-line flags, without the leading `--`; checked against the target version.
    #[serde(default)]
    pub flags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CniConfig {
    /// `bridge`: kiln's bridge + host-local + portmap conflist and a loopback config; `none`: the
    /// cluster brings its own CNI (Cilium, Calico) and kiln installs no network configuration.
    #[serde(default)]
    pub mode: CniMode,
    #[serde(default = "default_subnet")]
    pub subnet: String,
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// The bridge's MTU (for overlay or tunnelled node networks); the kernel's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            mode: CniMode::Bridge,
            subnet: default_subnet(),
            bridge: default_bridge(),
            mtu: None,
        }
    }
}

fn default_subnet() -> String {
    "10.88.0.0/16".into()
}

fn default_bridge() -> String {
    "cni0".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CniMode {
    #[default]
    Bridge,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The architecture of the machine running kiln, in Debian/Go naming.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that names no architecture kiln builds for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown architecture `{0}` (expected amd64 or arm64)")]
pub struct UnknownArch(pub String);

impl std::str::FromStr for Arch {
    type Err = UnknownArch;
    fn from_str(s: &str) -> Result<Self, UnknownArch> {
        match s {
            "amd64" => Ok(Arch::Amd64),
            "arm64" => Ok(Arch::Arm64),
            _ => Err(UnknownArch(s.to_string())),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Components {
    pub runc: Component,
    pub containerd: Component,
    pub cni_plugins: Component,
    #[serde(default)]
    pub kubelet: Option<Component>,
    #[serde(default)]
    pub crictl: Option<Component>,
    #[serde(default)]
    pub nerdctl: Option<Component>,
    /// kube-proxy as a systemd service (as the seed's workers run it), with its configuration and
    /// kubeconfig rendered; its token comes from the node configuration (`kubeProxyToken`).
    #[serde(default)]
    pub kube_proxy: Option<Component>,
    /// Extra OCI runtimes, by handler name (`crun`, `runsc`): each is installed like a component,
    /// rendered as a containerd runtime handler, and offered to pods as a RuntimeClass of the same
    /// name (the bundle's `runtimeclasses/<name>.yaml`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runtimes: BTreeMap<String, Runtime>,
}

/// An extra OCI runtime: the artifact, as for a component, and how containerd runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Runtime {
    pub version: String,
    pub source: Source,
    pub install: Vec<Install>,
    /// containerd's runtime type: `io.containerd.runc.v2` (the default: runc's shim driving
    /// another OCI runtime binary, e.g. crun) or a shim of the runtime's own
    /// (`io.containerd.runsc.v1`, whose `containerd-shim-runsc-v1` must be installed under `bin/`).
    #[serde(default = "default_runtime_type")]
    pub runtime_type: String,
    /// The OCI runtime binary, a bundle path (`bin/crun`): runc's shim runs it as `BinaryName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// More options for the runtime's shim (`options` of the containerd runtime handler).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, serde_json::Value>,
}

fn default_runtime_type() -> String {
    RUNC_SHIM.into()
}

/// runc's shim, which also drives other OCI runtimes through `BinaryName`.
pub const RUNC_SHIM: &str = "io.containerd.runc.v2";

impl Runtime {
    /// The artifact part, as a component.
    pub fn component(&self) -> Component {
        Component {
            version: self.version.clone(),
            source: self.source.clone(),
            install: self.install.clone(),
        }
    }
}

/// The prefix of an extra runtime's component name (`runtime/crun`), which keeps runtimes apart from
/// the fixed components in the lock, the index and messages.
pub const RUNTIME_PREFIX: &str = "runtime/";

impl Components {
    /// The components present, by their bundle name, in a fixed order; extra runtimes last, by
    /// name, as `runtime/<name>`.
    pub fn iter(&self) -> Vec<(String, Component)> {
        let mut v = vec![
            ("runc".to_string(), self.runc.clone()),
            ("containerd".to_string(), self.containerd.clone()),
            ("cni-plugins".to_string(), self.cni_plugins.clone()),
        ];
        for (name, c) in [
            ("kubelet", &self.kubelet),
            ("crictl", &self.crictl),
            ("nerdctl", &self.nerdctl),
            ("kube-proxy", &self.kube_proxy),
        ] {
            if let Some(c) = c {
                v.push((name.to_string(), c.clone()));
            }
        }
        for (name, r) in &self.runtimes {
            v.push((format!("{RUNTIME_PREFIX}{name}"), r.component()));
        }
        v
    }

    /// The manifest key of a component name (`cni-plugins` is `cniPlugins`, `runtime/crun` is
    /// `runtimes.crun`).
    pub fn key(name: &str) -> String {
        match name {
            "cni-plugins" => "cniPlugins".into(),
            "kube-proxy" => "kubeProxy".into(),
            _ => match name.strip_prefix(RUNTIME_PREFIX) {
                Some(r) => format!("runtimes.{r}"),
                None => name.into(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Component {
    pub version: String,
    pub source: Source,
    pub install: Vec<Install>,
}

/// Where an artifact comes from: exactly one of `url` or `apt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// `https://`, `http://`, `file://` or a path relative to the manifest. `{version}` and `{arch}`
    /// are replaced.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub apt: Option<AptSource>,
    /// Artifact kind; inferred from the URL's extension when absent (`.deb` for `apt`).
    #[serde(default)]
    pub format: Option<Format>,
    /// Expected digest of the artifact, per architecture. Required for `url`; optional for `apt`,
    /// whose repository signatures already apply (the lock then pins the digest).
    #[serde(default)]
    pub sha256: BTreeMap<Arch, Sha256>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AptSource {
    pub package: String,
    /// Exact Debian version; the candidate version when absent (recorded in the lock).
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    #[serde(rename = "binary")]
    Binary,
    #[serde(rename = "tar.gz", alias = "tgz")]
    TarGz,
    #[serde(rename = "tar.zst")]
    TarZst,
    #[serde(rename = "deb")]
    Deb,
}

impl Format {
    pub fn infer(url: &str) -> Format {
        let path = url.split(['?', '#']).next().unwrap_or(url);
        if path.ends_with(".tar.gz") || path.ends_with(".tgz") {
            Format::TarGz
        } else if path.ends_with(".tar.zst") {
            Format::TarZst
        } else if path.ends_with(".deb") {
            Format::Deb
        } else {
            Format::Binary
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Binary => "binary",
            Format::TarGz => "tar.gz",
            Format::TarZst => "tar.zst",
            Format::Deb => "deb",
        }
    }
}

/// One install rule: artifact member `from` goes to bundle path `to`.
///
/// A `from` ending in `/` copies that directory's regular files (recursively) under `to`, which then
/// must end in `/` too. A raw binary artifact has no members, so `from` is omitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Install {
    #[serde(default)]
    pub from: Option<String>,
    pub to: String,
    /// Mode of the installed file(s); by default 0755 for raw binaries and executable members,
    /// 0644 otherwise.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// An OCI image archive (an OCI image layout in a tar, as `ctr images export` or `skopeo copy
/// oci-archive:` write it) preloaded on the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PreloadedImage {
    /// The reference pods use, e.g. `registry.k8s.io/pause:3.10`; the archive must name the
    /// image so (its `io.containerd.image.name` or `org.opencontainers.image.ref.name`
    /// annotation), since that is the name containerd gives it on import.
    pub name: String,
    /// `https://`, `http://`, `file://` or a path relative to the manifest; `{arch}` is replaced.
    pub url: String,
    /// The archive's digest, per architecture.
    pub sha256: BTreeMap<Arch, Sha256>,
}

/// A file placed into the bundle from the manifest itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtraFile {
    pub path: String,
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Inline content.
    #[serde(default)]
    pub content: Option<String>,
    /// A file relative to the manifest's directory.
    #[serde(default)]
    pub from: Option<String>,
}

impl Manifest {
    /// Parse and validate manifest text; `origin` names it in errors (usually the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Manifest> {
        let m: Manifest = crate::yaml::from_str(text, origin)?;
        m.validate(origin)?;
        Ok(m)
    }

    pub fn has_kubelet(&self) -> bool {
        self.spec.components.kubelet.is_some()
    }

    /// Checks that the types cannot express. Errors name the field by its path in the document.
    pub fn validate(&self, origin: &str) -> Result<()> {
        self.problem().map_err(|(field, m)| Error::invalid(origin, &field, m))
    }

    /// The first problem, as (field path, message).
    fn problem(&self) -> std::result::Result<(), Problem> {
        self.check_header()?;
        // Every file path the bundle installs, with what installs it: two writers of one path is an error.
        let mut targets: BTreeMap<String, String> = BTreeMap::new();
        for (name, c) in self.spec.components.iter() {
            let at = format!("spec.components.{}", Components::key(&name));
            if c.version.trim().is_empty() {
                return Err(err(&format!("{at}.version"), "must not be empty".into()));
            }
            self.check_source(&at, &c.source)?;
            self.check_install(&at, &name, &c, &mut targets)?;
        }
        self.check_files(&mut targets)?;
        self.check_images()?;
        self.check_runtimes()?;
        self.spec.config.validate()
    }

    /// apiVersion, kind, metadata, the Kubernetes version and the architectures.
    fn check_header(&self) -> std::result::Result<(), Problem> {
        if self.api_version != API_VERSION {
            return Err(err(
                "apiVersion",
                format!("`{}` is not supported (expected `{API_VERSION}`)", self.api_version),
            ));
        }
        if self.kind != KIND {
            return Err(err(
                "kind",
                format!("`{}` is not supported (expected `{KIND}`)", self.kind),
            ));
        }
        check_name_like(&self.metadata.name).map_err(|m| err("metadata.name", m.to_string()))?;
        check_name_like(&self.metadata.version).map_err(|m| err("metadata.version", m.to_string()))?;
        check_version(&self.spec.kubernetes_version).map_err(|m| err("spec.kubernetesVersion", m.to_string()))?;
        if self.spec.architectures.is_empty() {
            return Err(err(
                "spec.architectures",
                "at least one architecture is required".into(),
            ));
        }
        let archs: BTreeSet<_> = self.spec.architectures.iter().collect();
        if archs.len() != self.spec.architectures.len() {
            return Err(err("spec.architectures", "an architecture is listed twice".into()));
        }

        Ok(())
    }

    /// A component's source: a pinned URL for every architecture, or a Debian package.
    fn check_source(&self, at: &str, s: &Source) -> std::result::Result<(), Problem> {
        match (&s.url, &s.apt) {
            (Some(_), Some(_)) => {
                return Err(err(
                    &format!("{at}.source"),
                    "give either `url` or `apt`, not both".into(),
                ))
            }
            (None, None) => return Err(err(&format!("{at}.source"), "one of `url` or `apt` is required".into())),
            (Some(url), None) => {
                check_template(url).map_err(|m| err(&format!("{at}.source.url"), m.to_string()))?;
                for arch in &self.spec.architectures {
                    if !s.sha256.contains_key(arch) {
                        return Err(err(
                            &format!("{at}.source.sha256"),
                            format!("no digest for `{arch}`; every URL artifact is pinned by its sha256"),
                        ));
                    }
                }
            }
            (None, Some(apt)) => {
                if apt.package.is_empty()
                    || !apt
                        .package
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                {
                    return Err(err(
                        &format!("{at}.source.apt.package"),
                        format!("`{}` is not a Debian package name", apt.package),
                    ));
                }
                if let Some(v) = &apt.version {
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.~:".contains(&b)) {
                        return Err(err(
                            &format!("{at}.source.apt.version"),
                            format!("`{v}` is not a Debian version"),
                        ));
                    }
                }
                if matches!(s.format, Some(f) if f != Format::Deb) {
                    return Err(err(
                        &format!("{at}.source.format"),
                        "an `apt` source is always a .deb".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A component's install rules: relative targets, members only for archives, one writer per path.
    fn check_install(
        &self,
        at: &str,
        name: &str,
        c: &Component,
        targets: &mut BTreeMap<String, String>,
    ) -> std::result::Result<(), Problem> {
        if c.install.is_empty() {
            return Err(err(
                &format!("{at}.install"),
                "at least one install rule is required".into(),
            ));
        }
        let format = self.format_of(c);
        for (i, rule) in c.install.iter().enumerate() {
            let at = format!("{at}.install[{i}]");
            let tree = rule.to.ends_with('/');
            check_relative(rule.to.trim_end_matches('/')).map_err(|e| err(&format!("{at}.to"), e.to_string()))?;
            match (&rule.from, format) {
                (Some(_), Format::Binary) => {
                    return Err(err(
                        &format!("{at}.from"),
                        "a raw binary has no members; omit `from`".into(),
                    ))
                }
                (None, Format::Binary) if tree => {
                    return Err(err(
                        &format!("{at}.to"),
                        "a raw binary installs to a file path, not a directory".into(),
                    ))
                }
                (None, Format::Binary) => {}
                (None, _) => {
                    return Err(err(
                        &format!("{at}.from"),
                        "an archive rule needs the member to install".into(),
                    ))
                }
                (Some(from), _) => {
                    if from.ends_with('/') != tree {
                        return Err(err(
                            &at,
                            "`from` and `to` must both be directories (ending in `/`) or both files".into(),
                        ));
                    }
                    let f = from.trim_start_matches("./").trim_end_matches('/');
                    if !f.is_empty() {
                        check_relative(f).map_err(|e| err(&format!("{at}.from"), e.to_string()))?;
                    }
                }
            }
            if !tree {
                if let Some(prev) = targets.insert(rule.to.clone(), name.to_string()) {
                    return Err(err(
                        &format!("{at}.to"),
                        format!("`{}` is already installed by {prev}", rule.to),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `spec.files`: relative paths, one of `content` or `from`, no path installed twice.
    fn check_files(&self, targets: &mut BTreeMap<String, String>) -> std::result::Result<(), Problem> {
        for (i, f) in self.spec.files.iter().enumerate() {
            let at = format!("spec.files[{i}]");
            check_relative(&f.path).map_err(|e| err(&format!("{at}.path"), e.to_string()))?;
            if f.content.is_some() == f.from.is_some() {
                return Err(err(&at, "give exactly one of `content` or `from`".into()));
            }
            if let Some(prev) = targets.insert(f.path.clone(), "spec.files".into()) {
                return Err(err(
                    &format!("{at}.path"),
                    format!("`{}` is already installed by {prev}", f.path),
                ));
            }
        }
        Ok(())
    }

    /// `spec.images`: names as the registry spells them, each once, pinned for every architecture.
    fn check_images(&self) -> std::result::Result<(), Problem> {
        let mut image_names = BTreeSet::new();
        for (i, img) in self.spec.images.iter().enumerate() {
            let at = format!("spec.images[{i}]");
            check_image_name(&img.name).map_err(|m| err(&format!("{at}.name"), m.to_string()))?;
            if !image_names.insert(img.name.as_str()) {
                return Err(err(&format!("{at}.name"), format!("`{}` is listed twice", img.name)));
            }
            check_template(&img.url).map_err(|m| err(&format!("{at}.url"), m.to_string()))?;
            for arch in &self.spec.architectures {
                if !img.sha256.contains_key(arch) {
                    return Err(err(
                        &format!("{at}.sha256"),
                        format!("no digest for `{arch}`; every image archive is pinned by its sha256"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `spec.components.runtimes`: handler names, runtime types, and the binary runc's shim runs.
    fn check_runtimes(&self) -> std::result::Result<(), Problem> {
        for (name, r) in &self.spec.components.runtimes {
            let at = format!("spec.components.runtimes.{name}");
            let name_ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !name_ok {
                return Err(err(
                    &at,
                    format!(
                        "`{name}` is not a handler name (lowercase letters, digits and `-`: it names the RuntimeClass)"
                    ),
                ));
            }
            if name == "runc" {
                return Err(err(&at, "`runc` is the default runtime handler already".into()));
            }
            if r.runtime_type.is_empty() || !r.runtime_type.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
                return Err(err(
                    &format!("{at}.runtimeType"),
                    format!(
                        "`{}` is not a containerd runtime type such as io.containerd.runc.v2",
                        r.runtime_type
                    ),
                ));
            }
            match (&r.binary, r.runtime_type == RUNC_SHIM) {
                (Some(b), _) => {
                    check_relative(b).map_err(|e| err(&format!("{at}.binary"), e.to_string()))?;
                    let installed = r
                        .install
                        .iter()
                        .any(|i| i.to == *b || (i.to.ends_with('/') && b.starts_with(&i.to)));
                    if !installed {
                        return Err(err(
                            &format!("{at}.binary"),
                            format!("`{b}` is not a path this runtime's install rules write"),
                        ));
                    }
                }
                (None, true) => {
                    return Err(err(
                        &format!("{at}.binary"),
                        format!("required with {RUNC_SHIM}: the OCI runtime binary runc's shim runs (e.g. bin/crun)"),
                    ))
                }
                (None, false) => {}
            }
        }
        Ok(())
    }

    /// The artifact format of a component: explicit, `.deb` for apt, or inferred from the URL.
    pub fn format_of(&self, c: &Component) -> Format {
        match (&c.source.format, &c.source.url) {
            (Some(f), _) => *f,
            (None, Some(url)) => Format::infer(url),
            (None, None) => Format::Deb,
        }
    }
}

/// A validation problem: the field's path in the document and what is wrong with it.
type Problem = (String, String);

fn err(field: &str, msg: String) -> Problem {
    (field.to_string(), msg)
}

impl NodeConfig {
    /// What types cannot say: registry hosts and URLs, capabilities, file paths, the MTU.
    fn validate(&self) -> std::result::Result<(), (String, String)> {
        if let Some(mtu) = self.cni.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err((
                    "spec.config.cni.mtu".into(),
                    format!("{mtu} is not an MTU between 576 and 65535"),
                ));
            }
        }
        for (host, r) in &self.containerd.registries {
            let at = format!("spec.config.containerd.registries[{host}]");
            check_registry_host(host).map_err(|m| (at.clone(), m.to_string()))?;
            if let Some(server) = &r.server {
                check_registry_url(server).map_err(|m| (format!("{at}.server"), m.to_string()))?;
            }
            if r.auth && host == "_default" {
                return Err((
                    format!("{at}.auth"),
                    "credentials belong to one registry host, not to `_default`".into(),
                ));
            }
            let mut cas = Vec::new();
            if let Some(ca) = &r.ca {
                cas.push((format!("{at}.ca"), ca));
            }
            for (i, m) in r.mirrors.iter().enumerate() {
                let mat = format!("{at}.mirrors[{i}]");
                check_registry_url(&m.host).map_err(|e| (format!("{mat}.host"), e.to_string()))?;
                if m.capabilities.is_empty() {
                    return Err((
                        format!("{mat}.capabilities"),
                        "at least one of pull, resolve, push".into(),
                    ));
                }
                for c in &m.capabilities {
                    if !matches!(c.as_str(), "pull" | "resolve" | "push") {
                        return Err((
                            format!("{mat}.capabilities"),
                            format!("`{c}` is not a capability (pull, resolve or push)"),
                        ));
                    }
                }
                if let Some(ca) = &m.ca {
                    cas.push((format!("{mat}.ca"), ca));
                }
            }
            for (field, ca) in cas {
                if ca.starts_with('/') || ca.split('/').any(|c| c == "..") || ca.is_empty() {
                    return Err((
                        field,
                        format!("`{ca}`: a file relative to the manifest, inside its directory"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why a manifest value is not valid; the caller names the field it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Invalid {
    /// Not `HOST`, `HOST:PORT` or `_default`.
    #[error("`{0}` is not a registry host (HOST or HOST:PORT, no scheme or path, or `_default`)")]
    RegistryHost(String),
    /// A URL without an http:// or https:// scheme.
    #[error("`{0}` is not an http:// or https:// URL")]
    NotHttpUrl(String),
    /// A URL whose host part is not a host.
    #[error("`{0}` does not name a host")]
    UrlHost(String),
    /// A URL with characters that would break the TOML or credentials kiln writes.
    #[error("`{0}`: quotes, backslashes, `@` and newlines are not allowed")]
    UrlCharacters(String),
    /// A URL template with `{` and no `}`.
    #[error("`{0}` has an unclosed `{{`")]
    UnclosedBrace(String),
    /// A URL template variable other than `{version}` and `{arch}`.
    #[error("`{{{0}}}` is not a known placeholder (use {{version}} or {{arch}})")]
    UnknownVariable(String),
    /// An empty URL template.
    #[error("must not be empty")]
    Empty,
    /// A name or version of no characters or over 128.
    #[error("must be 1 to 128 characters")]
    Length,
    /// A name or version with characters unsafe in file names.
    #[error("`{0}` may only contain letters, digits, `.`, `_`, `+` and `-`")]
    Characters(String),
    /// Not `MAJOR.MINOR[.PATCH]`.
    #[error("`{0}` is not a Kubernetes version such as 1.36.4")]
    Version(String),
    /// Not an image reference containerd would store.
    #[error("`{0}` is not an image reference (e.g. registry.k8s.io/pause:3.10)")]
    ImageName(String),
}

/// `registry.example.com`, `registry.example.com:5000`, `10.0.0.5:5000`, `docker.io` or `_default`.
fn check_registry_host(host: &str) -> std::result::Result<(), Invalid> {
    if host == "_default" {
        return Ok(());
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(Invalid::RegistryHost(host.to_string()))
    }
}

fn check_registry_url(url: &str) -> std::result::Result<(), Invalid> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| Invalid::NotHttpUrl(url.to_string()))?;
    let host = rest.split('/').next().unwrap_or_default();
    check_registry_host(host).map_err(|_| Invalid::UrlHost(url.to_string()))?;
    if url.contains(['"', '\\', '\n', '@']) {
        return Err(Invalid::UrlCharacters(url.to_string()));
    }
    Ok(())
}

/// Replace `{version}` and `{arch}` in a URL template.
pub fn expand(template: &str, version: &str, arch: Arch) -> String {
    template.replace("{version}", version).replace("{arch}", arch.as_str())
}

fn check_template(url: &str) -> Result<(), Invalid> {
    let mut rest = url;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i..];
        let end = tail.find('}').ok_or_else(|| Invalid::UnclosedBrace(url.to_string()))?;
        let var = &tail[1..end];
        if var != "version" && var != "arch" {
            return Err(Invalid::UnknownVariable(var.to_string()));
        }
        rest = &tail[end + 1..];
    }
    if url.is_empty() {
        return Err(Invalid::Empty);
    }
    Ok(())
}

/// Names and versions end up in file names: keep them to a portable character set.
fn check_name_like(s: &str) -> Result<(), Invalid> {
    if s.is_empty() || s.len() > 128 {
        return Err(Invalid::Length);
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)) || s.starts_with(['.', '-']) {
        return Err(Invalid::Characters(s.to_string()));
    }
    Ok(())
}

fn check_version(s: &str) -> Result<(), Invalid> {
    parse_minor(s)
        .map(|_| ())
        .ok_or_else(|| Invalid::Version(s.to_string()))
}

/// `(major, minor)` of a version such as `1.36.4` or `v1.27.0-rc.1`.
pub fn parse_minor(s: &str) -> Option<(u32, u32)> {
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut it = s.split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// An image reference as containerd stores it: `[registry/]path[:tag][@digest]`, lowercase
/// repository, no spaces.
fn check_image_name(name: &str) -> std::result::Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"./:_@-".contains(&b))
        && !name.starts_with(['.', '/', ':', '@', '-'])
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Invalid::ImageName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: kiln.dev/v1alpha1
kind: NodeBundle
metadata:
  name: test
  version: 1.0.0
spec:
  architectures: [amd64]
  kubernetesVersion: "1.36.4"
  components:
    runc:
      version: 1.4.3
      source:
        url: https://example.com/runc.{arch}
        sha256:
          amd64: 0000000000000000000000000000000000000000000000000000000000000000
      install:
        - to: bin/runc
    containerd:
      version: 2.3.4
      source:
        url: https://example.com/containerd-{version}-linux-{arch}.tar.gz
        sha256:
          amd64: 1111111111111111111111111111111111111111111111111111111111111111
      install:
        - from: bin/containerd
          to: bin/containerd
    cniPlugins:
      version: 1.1.1
      source:
        apt:
          package: containernetworking-plugins
      install:
        - from: usr/lib/cni/
          to: cni/bin/
"#;

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(text, "m.yaml")
    }

    #[test]
    fn parses_a_good_manifest() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.spec.components.iter().len(), 3);
        assert!(!m.has_kubelet());
        assert_eq!(m.format_of(&m.spec.components.containerd), Format::TarGz);
        assert_eq!(m.format_of(&m.spec.components.cni_plugins), Format::Deb);
        assert_eq!(m.format_of(&m.spec.components.runc), Format::Binary);
        assert_eq!(
            expand(
                m.spec.components.containerd.source.url.as_deref().unwrap(),
                "2.3.4",
                Arch::Arm64
            ),
            "https://example.com/containerd-2.3.4-linux-arm64.tar.gz"
        );
    }

    #[test]
    fn extra_runtimes_are_components_with_a_handler() {
        let rt = |name: &str, body: &str| {
            GOOD.replace(
                "    cniPlugins:\n",
                &format!("    runtimes:\n      {name}:\n        version: \"1.8.1\"\n        source: {{apt: {{package: crun}}}}\n        install: [{{from: usr/bin/crun, to: bin/crun}}]\n{body}    cniPlugins:\n"),
            )
        };
        let m = parse(&rt("crun", "        binary: bin/crun\n")).unwrap();
        let names: Vec<String> = m.spec.components.iter().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["runc", "containerd", "cni-plugins", "runtime/crun"]);
        assert_eq!(Components::key("runtime/crun"), "runtimes.crun");
        assert_eq!(m.spec.components.runtimes["crun"].runtime_type, RUNC_SHIM);
        for (name, body, expected) in [
            (
                "crun",
                "",
                "spec.components.runtimes.crun.binary: required with io.containerd.runc.v2",
            ),
            (
                "crun",
                "        binary: bin/runc\n",
                "`bin/runc` is not a path this runtime's install rules write",
            ),
            (
                "runc",
                "        binary: bin/crun\n",
                "`runc` is the default runtime handler already",
            ),
            ("Crun", "        binary: bin/crun\n", "`Crun` is not a handler name"),
            (
                "crun",
                "        binary: bin/crun\n        runtimeType: \"io.containerd.runc.v2\\\"x\"\n",
                "is not a containerd runtime type",
            ),
        ] {
            let e = parse(&rt(name, body)).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn registries_and_mtu_are_checked() {
        let with = |config: &str| format!("{GOOD}  config:\n{config}");
        let ok = with("    containerd:\n      registries:\n        registry.example.com:5000:\n          ca: certs/ca.pem\n          auth: true\n          mirrors:\n            - host: https://m.example.com\n    cni:\n      mtu: 1450\n");
        let m = parse(&ok).unwrap();
        assert_eq!(
            m.spec.config.containerd.registries["registry.example.com:5000"].mirrors[0].capabilities,
            ["pull", "resolve"]
        );
        for (config, expected) in [
            ("    containerd:\n      registries:\n        https://r.example.com: {}\n", "registries[https://r.example.com]: `https://r.example.com` is not a registry host"),
            ("    containerd:\n      registries:\n        r.example.com:\n          server: r.example.com\n", "registries[r.example.com].server: `r.example.com` is not an http:// or https:// URL"),
            ("    containerd:\n      registries:\n        r.example.com:\n          ca: /etc/ssl/ca.pem\n", "registries[r.example.com].ca: `/etc/ssl/ca.pem`: a file relative to the manifest"),
            ("    containerd:\n      registries:\n        _default:\n          auth: true\n", "registries[_default].auth: credentials belong to one registry host"),
            ("    containerd:\n      registries:\n        r.example.com:\n          mirrors:\n            - host: https://m\n              capabilities: [pull, delete]\n", "mirrors[0].capabilities: `delete` is not a capability"),
            ("    cni:\n      mtu: 100\n", "spec.config.cni.mtu: 100 is not an MTU"),
        ] {
            let e = parse(&with(config)).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn unknown_field_names_file_line_column_and_field() {
        let text = GOOD.replace(
            "      install:\n        - to: bin/runc",
            "      install:\n        - to: bin/runc\n          owner: root",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("m.yaml:19:11: spec.components.runc.install[0].owner: unknown field `owner`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = GOOD.replace("architectures: [amd64]", "architectures: amd64");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("m.yaml:8:18: spec.architectures:"), "{e}");
        let text = GOOD.replace("architectures: [amd64]", "architectures: [sparc]");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("spec.architectures[0]: unknown variant `sparc`"), "{e}");
    }

    #[test]
    fn missing_field_is_named() {
        let text = GOOD.replace("  kubernetesVersion: \"1.36.4\"\n", "");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("missing field `kubernetesVersion`"), "{e}");
        assert!(e.starts_with("m.yaml:"), "{e}");
    }

    #[test]
    fn missing_digest_for_an_arch() {
        let text = GOOD.replace("architectures: [amd64]", "architectures: [amd64, arm64]");
        let e = parse(&text).unwrap_err().to_string();
        assert_eq!(e, "m.yaml: spec.components.runc.source.sha256: no digest for `arm64`; every URL artifact is pinned by its sha256");
    }

    #[test]
    fn bad_digest_is_a_parse_error() {
        let text = GOOD.replace(
            "amd64: 0000000000000000000000000000000000000000000000000000000000000000",
            "amd64: 1234",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("spec.components.runc.source.sha256") && e.contains("not a sha256 digest"),
            "{e}"
        );
    }

    #[test]
    fn hostile_install_target_is_refused() {
        let text = GOOD.replace("- to: bin/runc", "- to: ../../etc/runc");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("spec.components.runc.install[0].to") && e.contains("`..`"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_target_is_refused() {
        let text = GOOD.replace("to: bin/containerd", "to: bin/runc");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("already installed by runc"), "{e}");
    }

    #[test]
    fn unknown_placeholder_is_refused() {
        let text = GOOD.replace("runc.{arch}", "runc.{os}");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("`{os}` is not a known placeholder"), "{e}");
    }

    #[test]
    fn wrong_api_version() {
        let text = GOOD.replace("kiln.dev/v1alpha1", "kiln.dev/v9");
        assert!(parse(&text).unwrap_err().to_string().contains("apiVersion"));
    }

    #[test]
    fn minor_versions() {
        assert_eq!(parse_minor("1.36.4"), Some((1, 36)));
        assert_eq!(parse_minor("v1.27.0-rc.1"), Some((1, 27)));
        assert_eq!(parse_minor("1"), None);
    }
}
