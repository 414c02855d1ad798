//! `kiln-cluster [DIR] [--san IP]...`: start the test control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler v1.32 with a generated PKI and a bootstrap token) on
//! 127.0.0.1, print its admin kubeconfig, CA and bootstrap token, and stop it by PID on Ctrl-C or
//! SIGTERM. `just cluster` runs it. Binaries: `KILN_K8S_BIN=DIR` or `../shared/k8s/`.

use std::path::PathBuf;

use kiln_testkit::cluster::{Cluster, Options};

fn main() {
    let mut dir = None;
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--san" => {
                let ip = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                    eprintln!("kiln-cluster: --san takes an IP address");
                    std::process::exit(2)
                });
                opts.extra_sans.push(ip);
            }
            "-h" | "--help" => {
                println!("usage: kiln-cluster [DIR] [--san IP]...");
                return;
            }
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => {
                eprintln!("kiln-cluster: unexpected argument `{a}`");
                std::process::exit(2)
            }
        }
    }
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new()
                .prefix("kiln-cluster-")
                .tempdir()
                .expect("a temporary directory");
            tmp.path().to_path_buf()
        }
    };
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .expect("signal handlers");
    let cluster = Cluster::start(&dir, &opts);
    println!(
        "control plane up in {:.1}s at {}\nKUBECONFIG={}\nCA: {}\nbootstrap token: {}\nCtrl-C stops it.",
        cluster.started_in.as_secs_f64(),
        cluster.server(),
        cluster.admin_kubeconfig.display(),
        cluster.dir.join("pki/ca.crt").display(),
        cluster.bootstrap_token
    );
    signals.forever().next();
    drop(cluster);
    eprintln!("kiln-cluster: stopped");
}
