//! Stand-in upstream artifacts. The bytes are pseudo-random but deterministic, mixed so that zstd -3
//! compresses them about as well as real Go binaries (to roughly 35-40 %); the archives have the
//! member layout of the real releases.

use std::io::Write;

/// Deterministic bytes of `size` with Go-binary-like compressibility. `seed` makes files differ.
pub fn binary(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // A vocabulary of 16-byte "instruction sequences" that recur, as code and symbol tables do.
    let vocab: Vec<[u8; 16]> = (0..2048)
        .map(|_| {
            let mut w = [0u8; 16];
            for chunk in w.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_le_bytes());
            }
            w
        })
        .collect();
    let mut out = Vec::with_capacity(size + 16);
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
    while out.len() < size {
        let r = rng.next();
        if r % 100 < 22 {
            // Incompressible data (compressed sections, hashes, random constants).
            out.extend_from_slice(&rng.next().to_le_bytes());
            out.extend_from_slice(&rng.next().to_le_bytes());
        } else {
            let word = &vocab[((r >> 8) % 2048) as usize];
            out.extend_from_slice(word);
        }
    }
    out.truncate(size);
    out
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A gzip-compressed tar of `(member path, bytes, mode)`, as release tarballs are.
pub fn tar_gz(members: &[(&str, Vec<u8>, u32)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, data, mode) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, &data[..]).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// A tar.gz with arbitrary raw headers, for hostile-archive tests: `(name, type, link target, data)`.
pub fn raw_tar_gz(members: &[(&str, tar::EntryType, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in members {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append(&h, *data).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

/// Sizes of the real release binaries (MiB, approximately), for benchmarks at full scale.
pub const KUBELET_MIB: f64 = 78.0;
pub const CONTAINERD_MIB: f64 = 45.0;
pub const CTR_MIB: f64 = 20.0;
pub const SHIM_MIB: f64 = 12.0;
pub const RUNC_MIB: f64 = 12.0;
pub const CNI_PLUGIN_MIB: f64 = 4.5;
pub const CRICTL_MIB: f64 = 40.0;
pub const CNI_PLUGINS: [&str; 20] = [
    "bandwidth",
    "bridge",
    "dhcp",
    "dummy",
    "firewall",
    "host-device",
    "host-local",
    "ipvlan",
    "loopback",
    "macvlan",
    "portmap",
    "ptp",
    "sbr",
    "static",
    "tap",
    "tuning",
    "vlan",
    "vrf",
    "LICENSE",
    "README.md",
];

/// The artifacts of the production manifest for one architecture, scaled: `scale` 1.0 gives the
/// real sizes (about 300 MB unpacked), tests use a small fraction. Returns `(url path, bytes)` with
/// paths as upstream serves them (host first), for kubelet 1.36.4, containerd 2.3.4, runc 1.4.3,
/// cni-plugins 1.9.1 and crictl 1.36.0.
pub fn production(arch: &str, scale: f64) -> Vec<(String, Vec<u8>)> {
    let mib = |m: f64| ((m * scale * 1024.0 * 1024.0) as usize).max(64);
    let seed = if arch == "amd64" { 1 } else { 1000 };
    let containerd = tar_gz(&[
        ("bin/containerd", binary(mib(CONTAINERD_MIB), seed + 1), 0o755),
        ("bin/containerd-shim-runc-v2", binary(mib(SHIM_MIB), seed + 2), 0o755),
        ("bin/ctr", binary(mib(CTR_MIB), seed + 3), 0o755),
    ]);
    let plugins: Vec<(String, Vec<u8>, u32)> = CNI_PLUGINS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let doc = p.chars().next().is_some_and(|c| c.is_uppercase());
            let size = if doc { 4096 } else { mib(CNI_PLUGIN_MIB) };
            (
                format!("./{p}"),
                binary(size, seed + 10 + i as u64),
                if doc { 0o644 } else { 0o755 },
            )
        })
        .collect();
    let plugin_refs: Vec<(&str, Vec<u8>, u32)> = plugins.iter().map(|(p, d, m)| (p.as_str(), d.clone(), *m)).collect();
    let crictl = tar_gz(&[("crictl", binary(mib(CRICTL_MIB), seed + 40), 0o755)]);
    vec![
        (
            format!("/dl.k8s.io/release/v1.36.4/bin/linux/{arch}/kubelet"),
            binary(mib(KUBELET_MIB), seed + 50),
        ),
        (
            format!("/github.com/containerd/containerd/releases/download/v2.3.4/containerd-2.3.4-linux-{arch}.tar.gz"),
            containerd,
        ),
        (
            format!("/github.com/opencontainers/runc/releases/download/v1.4.3/runc.{arch}"),
            binary(mib(RUNC_MIB), seed + 60),
        ),
        (
            format!(
                "/github.com/containernetworking/plugins/releases/download/v1.9.1/cni-plugins-linux-{arch}-v1.9.1.tgz"
            ),
            tar_gz(&plugin_refs),
        ),
        (
            format!(
                "/github.com/kubernetes-sigs/cri-tools/releases/download/v1.36.0/crictl-v1.36.0-linux-{arch}.tar.gz"
            ),
            crictl,
        ),
    ]
}

/// `--mirror` flags that send the production manifest's hosts to a local mirror at `base`.
pub fn mirror_flags(base: &str) -> Vec<String> {
    vec![
        "--mirror".into(),
        format!("https://dl.k8s.io/={base}/dl.k8s.io/"),
        "--mirror".into(),
        format!("https://github.com/={base}/github.com/"),
    ]
}

/// Serve the production artifacts for `arch` at `scale` on `mirror`, and write a copy of the
/// production manifest into `dir` whose digests are those of the stand-ins. Returns its path.
pub fn production_manifest(
    dir: &std::path::Path,
    mirror: &crate::mirror::Mirror,
    arch: &str,
    scale: f64,
) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(crate::workspace_root().join("manifests/k8s-1.36.yaml")).unwrap();
    let manifest = kiln_bundle::Manifest::parse(&text, "k8s-1.36.yaml").unwrap();
    let served: std::collections::BTreeMap<String, Vec<u8>> = production(arch, scale).into_iter().collect();
    for (_, c) in manifest.spec.components.iter() {
        for (a, digest) in &c.source.sha256 {
            let url = kiln_bundle::manifest::expand(c.source.url.as_deref().unwrap(), &c.version, *a);
            let path = url.replacen("https://", "/", 1);
            if let Some(body) = served.get(&path) {
                text = text.replace(&digest.hex(), &crate::sha256_hex(body));
                mirror.put(&path, body.clone());
            }
        }
    }
    if arch == "amd64" {
        text = text.replace("architectures: [amd64, arm64]", "architectures: [amd64]");
    }
    let out = dir.join(format!("k8s-standin-{arch}.yaml"));
    std::fs::write(&out, text).unwrap();
    out
}
