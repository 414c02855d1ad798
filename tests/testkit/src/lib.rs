//! Test-only helpers shared by kiln's integration tests and benchmarks:
//! - [`mirror`]: a local HTTP artifact server on 127.0.0.1 with fault injection;
//! - [`standin`]: stand-in upstream artifacts (raw binaries, tar.gz releases, .debs) whose sizes
//!   and compressibility resemble the real ones;
//! - [`hostile`]: tar entries written header by header, for archives no well-behaved writer makes.

pub mod bench;
pub mod cluster;
pub mod containerd;
pub mod cri;
pub mod hostile;
pub mod k8s;
pub mod mirror;
pub mod oci;
pub mod prometheus;
pub mod qemu;
pub mod registry;
pub mod standin;

use std::path::PathBuf;

/// The workspace root, for tests that read shipped manifests.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// sha256 hex of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Run `cmd` with its standard output a pipe whose reader is already gone (`cmd | head -0`), and
/// check that it ends quietly: exit 0 and no panic on standard error.
pub fn assert_quiet_on_closed_pipe(cmd: &mut std::process::Command) {
    let (reader, writer) = rustix::pipe::pipe().expect("a pipe");
    drop(reader);
    let out = cmd
        .stdout(std::process::Stdio::from(writer))
        .output()
        .expect("run the command");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{cmd:?}: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{cmd:?}: {stderr}");
}
