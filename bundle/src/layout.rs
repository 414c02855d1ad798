//! Where things live on a node, and where rendered files live inside a bundle. The builder renders
//! absolute paths from a [`Layout`]; tests render with a layout under a temporary directory.

/// kiln's directories relative to a node's root filesystem, for code that works on a root given as a
/// directory (the image builder, activation and their tests). [`Layout::default`] is built from them.
pub mod root {
    /// The bundle baked into an image, with its `.sha256` (and `.minisig`) beside it.
    pub const BAKED: &str = "usr/lib/kiln/bundles";
    /// Verified, unpacked bundles, one directory per version.
    pub const BUNDLES: &str = "var/lib/kiln/bundles";
    /// Node-specific files rendered from a bundle's templates, one directory per version and config.
    pub const RENDERED: &str = "var/lib/kiln/rendered";
    /// The link to the active bundle.
    pub const CURRENT: &str = "var/lib/kiln/current";
    /// The link to the active bundle's rendered node files.
    pub const NODE: &str = "var/lib/kiln/node";
    /// The directory holding the links above (synced after a flip).
    pub const STATE_DIR: &str = "var/lib/kiln";
    /// What kiln-firstboot did and how it ended (`kiln-firstboot status` reads it).
    pub const STATE: &str = "var/lib/kiln/state.json";
    /// Bundles delivered to a running node (`kiln-firstboot update`), one directory per version,
    /// each with the bundle file and what is baked beside it.
    pub const STAGED: &str = "var/lib/kiln/staged";
    /// Which bundle an activation takes: the one proven healthy, and one on trial.
    pub const SELECTION: &str = "var/lib/kiln/selection.json";
    /// What `kiln-firstboot adopt` found and changed on a worker it turned into a kiln node, to
    /// resume a killed run and to restore the worker when the bundle fails its health check.
    pub const ADOPTION: &str = "var/lib/kiln/adoption.json";
    /// The adopted worker's files as they were, under their own paths.
    pub const ADOPTION_SAVED: &str = "var/lib/kiln/adoption/saved";
}

/// Absolute node paths that rendered configuration refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The active bundle: `/var/lib/kiln/current` (a symlink flipped at activation).
    pub current: String,
    /// Node-specific files rendered from the bundle's templates at first boot.
    pub node: String,
    /// containerd's persistent and state directories and socket.
    pub containerd_root: String,
    pub containerd_state: String,
    pub containerd_socket: String,
    /// The CNI configuration directory containerd reads (shared with cluster-provided CNIs).
    pub cni_conf_dir: String,
    /// The kubelet's own state (client certificates, kubeconfig after bootstrap).
    pub kubelet_root: String,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            current: format!("/{}", root::CURRENT),
            node: format!("/{}", root::NODE),
            containerd_root: "/var/lib/containerd".into(),
            containerd_state: "/run/containerd".into(),
            containerd_socket: "/run/containerd/containerd.sock".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            kubelet_root: "/var/lib/kubelet".into(),
        }
    }
}

impl Layout {
    /// The absolute path of bundle file `rel` on the node: under `node` when it is rendered at first
    /// boot (it has placeholders), under `current` otherwise.
    pub fn on_node(&self, rel: &str, rendered: bool) -> String {
        format!("{}/{rel}", if rendered { &self.node } else { &self.current })
    }
}

/// Paths of rendered configuration inside a bundle.
pub mod files {
    pub const CONTAINERD_CONFIG: &str = "etc/containerd/config.toml";
    pub const CONTAINERD_UNIT: &str = "systemd/containerd.service";
    pub const KUBELET_CONFIG: &str = "etc/kubelet/config.yaml";
    pub const KUBELET_UNIT: &str = "systemd/kubelet.service";
    pub const KUBELET_BOOTSTRAP: &str = "etc/kubelet/bootstrap-kubeconfig";
    pub const CLUSTER_CA: &str = "etc/kubernetes/pki/ca.crt";
    pub const CNI_CONFLIST: &str = "etc/cni/net.d/10-kiln.conflist";
    pub const CNI_LOOPBACK: &str = "etc/cni/net.d/99-loopback.conf";
    pub const MODULES_LOAD: &str = "etc/modules-load.d/kiln.conf";
    pub const SYSCTL: &str = "etc/sysctl.d/99-kiln.conf";
    pub const CRICTL: &str = "etc/crictl.yaml";
    pub const KUBE_PROXY_UNIT: &str = "systemd/kube-proxy.service";
    pub const KUBE_PROXY_CONFIG: &str = "etc/kube-proxy/config.yaml";
    pub const KUBE_PROXY_KUBECONFIG: &str = "etc/kube-proxy/kubeconfig";
    /// Imports the bundle's preloaded images before kubelet starts (only in bundles with images).
    pub const IMAGES_UNIT: &str = "systemd/kiln-images.service";
    /// The directory of preloaded image archives.
    pub const IMAGES_DIR: &str = "images";
    /// containerd's registry host directory (CRI `registry.config_path`): `<host>/hosts.toml` and
    /// CA certificates. Every file under it is rendered at first boot into the node directory,
    /// because credentials are node-specific, and containerd reads it there.
    pub const REGISTRY_HOSTS_DIR: &str = "etc/containerd/certs.d";
    /// RuntimeClass manifests, one per extra runtime handler, for `kubectl apply -f`.
    pub const RUNTIME_CLASSES_DIR: &str = "runtimeclasses";

    /// The bundle path of registry `host`'s `hosts.toml`.
    pub fn registry_hosts_toml(host: &str) -> String {
        format!("{REGISTRY_HOSTS_DIR}/{host}/hosts.toml")
    }

    /// The registry host whose `hosts.toml` bundle path `path` is, if it is one.
    pub fn registry_of_hosts_toml(path: &str) -> Option<&str> {
        path.strip_prefix(REGISTRY_HOSTS_DIR)?
            .strip_prefix('/')?
            .strip_suffix("/hosts.toml")
            .filter(|h| !h.is_empty() && !h.contains('/'))
    }

    /// The server containerd reaches for registry `host` when its `hosts.toml` names none.
    pub fn default_registry_server(host: &str) -> String {
        match host {
            "docker.io" => "https://registry-1.docker.io".into(),
            h => format!("https://{h}"),
        }
    }

    /// Whether a bundle file is rendered into the node directory at first boot even without a
    /// placeholder in it.
    pub fn rendered_on_node(path: &str) -> bool {
        path.strip_prefix(REGISTRY_HOSTS_DIR)
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The bundle path of the archive of preloaded image `name` (`registry.k8s.io/pause:3.10` is
    /// `images/registry.k8s.io_pause_3.10.oci.tar`).
    pub fn image_archive(name: &str) -> String {
        let stem: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{IMAGES_DIR}/{stem}.oci.tar")
    }
}

/// systemd unit names a node bundle installs (`/etc/systemd/system/<name>`).
pub mod units {
    pub const CONTAINERD: &str = "containerd.service";
    pub const KUBELET: &str = "kubelet.service";
    pub const IMAGES: &str = "kiln-images.service";
    pub const KUBE_PROXY: &str = "kube-proxy.service";
    pub const FIRSTBOOT: &str = "kiln-firstboot.service";
    pub const FIRSTBOOT_HEALTH: &str = "kiln-firstboot-health.service";

    /// kiln-firstboot's own units, as `kiln image` installs them (`bundle/units/`): the contract
    /// between the image and the node binary lives here, beside the paths they name.
    pub const FIRSTBOOT_UNITS: [(&str, &str); 2] = [
        (FIRSTBOOT, include_str!("../units/kiln-firstboot.service")),
        (FIRSTBOOT_HEALTH, include_str!("../units/kiln-firstboot-health.service")),
    ];
}

/// The labels a kiln node registers with (set by kiln-firstboot through kubelet's
/// `--node-labels`, read by `kubectl kiln`).
pub mod labels {
    /// The bundle version the node runs.
    pub const BUNDLE_VERSION: &str = "kiln.dev/bundle-version";
    /// The first 12 hex characters of the bundle file's sha256.
    pub const BUNDLE_DIGEST: &str = "kiln.dev/bundle-digest";
}
