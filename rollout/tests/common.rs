//! Helpers: a simulated cluster, and running kubectl and kubectl-kiln against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_kube_sim::Sim;

pub struct Cluster {
    pub sim: Sim,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Cluster {
    pub fn new() -> Cluster {
        let sim = Sim::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, sim.kubeconfig()).unwrap();
        Cluster {
            sim,
            kubeconfig,
            _dir: dir,
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self._dir.path())
            .output()
            .expect("kubectl is installed")
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kubectl-kiln"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .unwrap()
    }

    pub fn home(&self) -> &Path {
        self._dir.path()
    }
}

/// Wait (polling every 20 ms) until `done` holds; fail naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// node-a with: a DaemonSet pod, a mirror pod, an emptyDir pod, an unmanaged pod and two
/// ReplicaSet pods; node-b with one more ReplicaSet pod.
pub fn mixed(c: &Cluster) {
    let s = &c.sim;
    s.add_node("node-a", &[("pool", "blue")], "v1.36.4", "containerd://2.3.4");
    s.add_node("node-b", &[("pool", "blue")], "v1.36.4", "containerd://2.3.4");
    s.add_ds_pod("kube-system", "proxy-a", "node-a", "proxy", 1);
    s.add_pod(
        "kube-system",
        "etcd-node-a",
        "node-a",
        &[("tier", "control")],
        None,
        true,
        false,
        1,
    );
    s.add_pod(
        "default",
        "cache-1",
        "node-a",
        &[("app", "cache")],
        Some(("ReplicaSet", "cache")),
        false,
        true,
        1,
    );
    s.add_pod("default", "bare", "node-a", &[("app", "bare")], None, false, false, 1);
    s.add_rs_pod("default", "web-1", "node-a", "web", 1);
    s.add_rs_pod("default", "web-2", "node-a", "web", 1);
    s.add_rs_pod("default", "web-3", "node-b", "web", 1);
}
