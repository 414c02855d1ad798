//! `kube-sim`: run the simulator with a small cluster, print its kubeconfig path, serve until killed.
//! For trying `kubectl` and `kubectl kiln` by hand.

fn main() {
    let sim = kiln_kube_sim::Sim::start();
    sim.add_node("node-a", &[("pool", "blue")], "v1.36.4", "containerd://2.3.4");
    sim.add_node("node-b", &[("pool", "blue")], "v1.36.4", "containerd://2.3.4");
    sim.add_pod(
        "default",
        "web-1",
        "node-a",
        &[("app", "web")],
        Some(("ReplicaSet", "web")),
        false,
        false,
        1,
    );
    let kc = std::env::temp_dir().join(format!("kube-sim-{}.kubeconfig", std::process::id()));
    std::fs::write(&kc, sim.kubeconfig()).expect("write kubeconfig");
    println!("{}", kc.display());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
