//! `kube-sim [PODS]`: run the simulator with a small cluster (PODS ReplicaSet pods on node-a,
//! default 1), print its kubeconfig path, serve until killed. For trying `kubectl` and
//! `kubectl kiln` by hand.

fn main() {
    let sim = kiln_kube_sim::Sim::start();
    sim.add_node("node-a", &[("pool", "blue")], "v1.36.4", "containerd://2.3.4");
    sim.add_node("node-b", &[("pool", "blue")], "v1.36.4", "containerd://2.3.4");
    let pods: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1);
    for i in 1..=pods {
        sim.add_rs_pod("default", &format!("web-{i}"), "node-a", "web", 1);
    }
    let kc = std::env::temp_dir().join(format!("kube-sim-{}.kubeconfig", std::process::id()));
    std::fs::write(&kc, sim.kubeconfig()).expect("write kubeconfig");
    println!("{}", kc.display());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
