//! The real Kubernetes v1.32 and containerd 2.x binaries for tests. They are built from public
//! upstream source outside this repository and handed to the tests as a directory of
//! zstd-compressed binaries with a `SHA256SUMS` of the uncompressed ones: `KILN_K8S_BIN=DIR`, or
//! `../shared/k8s/` beside the workspace. They are decompressed once into the target directory,
//! checked against the sums, and used read-only. Without them a test fails with a message saying how
//! to provide them; it never skips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every binary a real-node test may ask for.
pub const BINARIES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
];

/// The directory holding the compressed binaries and `SHA256SUMS`.
pub fn source_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_K8S_BIN") {
        return PathBuf::from(dir);
    }
    crate::workspace_root().join("../shared/k8s")
}

/// The uncompressed, verified binaries (a directory with each of [`BINARIES`], executable).
/// Panics with instructions when they cannot be had.
pub fn bin_dir() -> PathBuf {
    let src = source_dir();
    let sums_path = src.join("SHA256SUMS");
    let sums_text = std::fs::read_to_string(&sums_path).unwrap_or_else(|e| {
        panic!(
            "the real Kubernetes and containerd binaries are missing: cannot read {} ({e}). \
             Set KILN_K8S_BIN=DIR to a directory holding kube-apiserver.zst, kubelet.zst, containerd.zst, ... \
             (zstd-compressed, linux/amd64) and their SHA256SUMS (of the uncompressed binaries)",
            sums_path.display()
        )
    });
    let sums = parse_sums(&sums_text);
    // Keyed by the sums, so another set of binaries never mixes with this one; every file is
    // checked again on each call.
    let key = crate::sha256_hex(sums_text.as_bytes());
    let out = std::env::temp_dir().join(format!("kiln-k8s-bin-{}", &key[..12]));
    std::fs::create_dir_all(&out).unwrap();
    for name in BINARIES {
        let want = sums
            .get(*name)
            .unwrap_or_else(|| panic!("{} lists no {name}", sums_path.display()));
        let dest = out.join(name);
        if dest.is_file() && file_sha256(&dest) == *want {
            continue;
        }
        let compressed = src.join(format!("{name}.zst"));
        let input = std::fs::File::open(&compressed).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (KILN_K8S_BIN=DIR must hold {name}.zst; see ../shared/k8s/README.md)",
                compressed.display()
            )
        });
        let tmp = tempfile::NamedTempFile::new_in(&out).unwrap();
        let mut writer = std::io::BufWriter::new(tmp.as_file());
        zstd::stream::copy_decode(input, &mut writer)
            .unwrap_or_else(|e| panic!("{}: not zstd: {e}", compressed.display()));
        drop(writer);
        let got = file_sha256(tmp.path());
        assert_eq!(
            &got,
            want,
            "{} does not match its SHA256SUMS entry",
            compressed.display()
        );
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        tmp.persist(&dest).unwrap();
    }
    out
}

/// The sha256 of `name` as `SHA256SUMS` lists it (for manifests pinning the binaries).
pub fn sha256_of(name: &str) -> String {
    let sums = std::fs::read_to_string(source_dir().join("SHA256SUMS")).unwrap();
    parse_sums(&sums)
        .remove(name)
        .unwrap_or_else(|| panic!("SHA256SUMS lists no {name}"))
}

fn parse_sums(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (sum, name) = l.split_once(char::is_whitespace)?;
            Some((name.trim().trim_start_matches('*').to_string(), sum.to_string()))
        })
        .collect()
}

pub fn file_sha256(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// The sandbox image a node bundle pins, and the one the tests preload.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// A busybox image the tests preload and run pods from.
pub const BUSYBOX_IMAGE: &str = "docker.io/kiln/busybox:e2e";

/// Write a node bundle manifest into `dir` from the real binaries: kubelet v1.32 and containerd
/// 2.x (packed as upstream's release tarball, `containerd-2.3.4-linux-amd64.tar.gz`, so the
/// manifest reads like the production one), Debian's runc and CNI plugins through apt, and the
/// pause and busybox images preloaded. `config` is appended under `spec:` (indented two spaces,
/// e.g. "  config:\n    containerd:\n      systemdCgroup: false\n"); with `kube_proxy`, kube-proxy
/// runs as a service too. Returns the manifest's path; the bundle is
/// `<name>-<version>-amd64.kiln.tar.zst`.
pub fn node_manifest(dir: &Path, name: &str, version: &str, config: &str, kube_proxy: bool) -> PathBuf {
    let bin = bin_dir();
    std::fs::create_dir_all(dir).unwrap();
    let containerd_version = containerd_version(&bin);
    let tarball = dir.join(format!("containerd-{containerd_version}-linux-amd64.tar.gz"));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for b in ["containerd", "containerd-shim-runc-v2", "ctr"] {
        let data = std::fs::read(bin.join(b)).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(0);
        tar.append_data(&mut h, format!("bin/{b}"), &data[..]).unwrap();
    }
    let bytes = tar.into_inner().unwrap().finish().unwrap();
    std::fs::write(&tarball, &bytes).unwrap();
    let busybox = Path::new("/bin/busybox");
    let pause = crate::oci::pause_image(busybox, PAUSE_IMAGE);
    let bb = crate::oci::busybox_image(busybox, BUSYBOX_IMAGE);
    std::fs::write(dir.join("pause.oci.tar"), &pause).unwrap();
    std::fs::write(dir.join("busybox.oci.tar"), &bb).unwrap();
    let text = format!(
        r#"# A node bundle from the real Kubernetes v1.32 and containerd 2.x binaries (tests).
apiVersion: kiln.dev/v1alpha1
kind: NodeBundle
metadata:
  name: {name}
  version: "{version}"
spec:
  architectures: [amd64]
  kubernetesVersion: "1.32.13"
  components:
    runc:
      version: "1.1.5"
      source:
        apt:
          package: runc
      install:
        - from: usr/sbin/runc
          to: bin/runc
    containerd:
      version: "{containerd_version}"
      source:
        url: "containerd-{{version}}-linux-{{arch}}.tar.gz"
        sha256:
          amd64: {containerd_sha}
      install:
        - from: bin/containerd
          to: bin/containerd
        - from: bin/containerd-shim-runc-v2
          to: bin/containerd-shim-runc-v2
        - from: bin/ctr
          to: bin/ctr
    cniPlugins:
      version: "1.1.1"
      source:
        apt:
          package: containernetworking-plugins
      install:
        - from: usr/lib/cni/
          to: cni/bin/
    kubelet:
      version: "1.32.13"
      source:
        url: "file://{kubelet}"
        format: binary
        sha256:
          amd64: {kubelet_sha}
      install:
        - to: bin/kubelet
{kube_proxy}  images:
    - name: {PAUSE_IMAGE}
      url: pause.oci.tar
      sha256:
        amd64: {pause_sha}
    - name: {BUSYBOX_IMAGE}
      url: busybox.oci.tar
      sha256:
        amd64: {bb_sha}
{config}"#,
        containerd_sha = crate::sha256_hex(&bytes),
        kubelet = bin.join("kubelet").display(),
        kube_proxy = if kube_proxy {
            format!(
                "    kubeProxy:\n      version: \"1.32.13\"\n      source:\n        url: \"file://{}\"\n        format: binary\n        sha256:\n          amd64: {}\n      install:\n        - to: bin/kube-proxy\n",
                bin.join("kube-proxy").display(),
                sha256_of("kube-proxy")
            )
        } else {
            String::new()
        },
        kubelet_sha = sha256_of("kubelet"),
        pause_sha = crate::sha256_hex(&pause),
        bb_sha = crate::sha256_hex(&bb),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `2.3.4` from `containerd --version`.
pub fn containerd_version(bin: &Path) -> String {
    let out = std::process::Command::new(bin.join("containerd"))
        .arg("--version")
        .output()
        .expect("containerd --version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| {
            w.strip_prefix('v')
                .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        })
        .unwrap_or_else(|| panic!("no version in `containerd --version`: {text}"))
        .to_string()
}
