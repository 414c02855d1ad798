//! A minimal OCI image layout tarball built by hand (no registry here): one uncompressed layer with a
//! static busybox, importable with `ctr images import`, named by the `io.containerd.image.name`
//! annotation.

use std::path::Path;

use serde_json::json;

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", crate::sha256_hex(data))
}

fn add(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data).unwrap();
}

/// An OCI layout tar for image `name` (e.g. `docker.io/kiln/busybox:test`) whose root filesystem
/// holds `busybox` (a static binary) at /bin/busybox and /bin/sh.
pub fn busybox_image(busybox: &Path, name: &str) -> Vec<u8> {
    image(busybox, name, &["/bin/sh"])
}

/// A stand-in pod sandbox ("pause") image: busybox sleeping for ever. The real pause image only
/// needs to hold the pod's namespaces open, which this does.
pub fn pause_image(busybox: &Path, name: &str) -> Vec<u8> {
    image(busybox, name, &["/bin/busybox", "sleep", "2147483647"])
}

/// An OCI layout tar for image `name` with busybox and `cmd` as its command.
pub fn image(busybox: &Path, name: &str, cmd: &[&str]) -> Vec<u8> {
    let bb = std::fs::read(busybox).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (busybox-static is installed by scripts/setup)",
            busybox.display()
        )
    });
    let mut layer = tar::Builder::new(Vec::new());
    add(&mut layer, "bin/busybox", &bb, 0o755);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    layer.append_link(&mut h, "bin/sh", "busybox").unwrap();
    let layer = layer.into_inner().unwrap();
    let layer_digest = digest(&layer);

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap()},
        }],
    }))
    .unwrap();

    let mut out = tar::Builder::new(Vec::new());
    add(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644);
    add(&mut out, "index.json", &index, 0o644);
    for blob in [&layer, &config, &manifest] {
        add(
            &mut out,
            &format!("blobs/sha256/{}", crate::sha256_hex(blob)),
            blob,
            0o644,
        );
    }
    out.into_inner().unwrap()
}
