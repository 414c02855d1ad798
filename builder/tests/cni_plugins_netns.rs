//! The conflist kiln puts in every bundle works with the real CNI plugins from Debian's
//! containernetworking-plugins (/usr/lib/cni): ADD and DEL through the whole chain, the way a
//! runtime's libcni runs it, with the expected address in the container's namespace. Everything
//! happens in two network namespaces the test creates (a "host" and a "container"), so the real
//! host's interfaces and iptables are untouched. Needs root and iproute2.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

const CNI_PATH: &str = "/usr/lib/cni";

struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("iproute2 is installed");
        assert!(st.success(), "ip netns add {name} (the test needs root)");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// Run one plugin of the chain inside the "host" namespace, as libcni does.
fn plugin(host: &Netns, container: &Netns, command: &str, ifname: &str, conf: &Value) -> Value {
    let ty = conf["type"].as_str().unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.0, &format!("{CNI_PATH}/{ty}")])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "kiln-test")
        .env("CNI_NETNS", format!("/var/run/netns/{}", container.0))
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{CNI_PATH}/{ty}: {e} (containernetworking-plugins is installed by scripts/setup)"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{ty} {command}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The network configuration of one chained plugin, as the CNI spec composes it.
fn runtime_conf(list: &Value, p: &Value, prev: &Value) -> Value {
    let mut conf = p.clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if !prev.is_null() {
        conf["prevResult"] = prev.clone();
    }
    if p["capabilities"]["portMappings"] == true {
        conf["runtimeConfig"] = json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
    }
    conf
}

#[test]
fn default_conflist_adds_and_deletes_with_debian_plugins() {
    // Take the conflist from a real bundle.
    let tmp = tempfile::tempdir().unwrap();
    let mirror = production_mirror();
    let manifest = standin_manifest(tmp.path(), &mirror);
    // An overlay network's MTU, as `kiln migrate` carries it over from dockerd's --mtu.
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("  config:\n    cni:\n      mtu: 1450\n");
    std::fs::write(&manifest, text).unwrap();
    let (o, bundle) = build_amd64(tmp.path(), &manifest, &mirror, &[]);
    ok(&o);
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let st = Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&bundle)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    let list: Value =
        serde_json::from_slice(&std::fs::read(x.join("etc/cni/net.d/10-kiln.conflist")).unwrap()).unwrap();
    let lo: Value = serde_json::from_slice(&std::fs::read(x.join("etc/cni/net.d/99-loopback.conf")).unwrap()).unwrap();
    let types: Vec<&str> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "portmap"]);
    assert_eq!(list["plugins"][0]["ipam"]["type"], "host-local");

    let pid = std::process::id();
    let host = Netns::new(format!("kiln-host-{pid}"));
    let container = Netns::new(format!("kiln-ctr-{pid}"));
    let networks = std::path::Path::new("/var/lib/cni/networks/kiln");
    let had_networks = networks.exists();

    // ADD through the chain.
    let mut prev = Value::Null;
    for p in list["plugins"].as_array().unwrap() {
        prev = plugin(&host, &container, "ADD", "eth0", &runtime_conf(&list, p, &prev));
    }
    let address = prev["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(address.starts_with("10.88.0.") && address.ends_with("/16"), "{prev}");
    let shown = Command::new("ip")
        .args(["-n", &container.0, "-4", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(&address),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    // The real bridge plugin applied the configured MTU to the pod's interface.
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains(" mtu 1450 "),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    let bridge = Command::new("ip")
        .args(["-n", &host.0, "link", "show", "cni0"])
        .output()
        .unwrap();
    assert!(bridge.status.success(), "the bridge is in the host namespace");

    plugin(&host, &container, "ADD", "lo", &lo);
    let lo_state = Command::new("ip")
        .args(["-n", &container.0, "link", "show", "lo"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&lo_state.stdout).contains("UP"),
        "{}",
        String::from_utf8_lossy(&lo_state.stdout)
    );

    // DEL in reverse order.
    for p in list["plugins"].as_array().unwrap().iter().rev() {
        plugin(&host, &container, "DEL", "eth0", &runtime_conf(&list, p, &prev));
    }
    let gone = Command::new("ip")
        .args(["-n", &container.0, "link", "show", "eth0"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "eth0 is removed by DEL");
    let ip = address.split('/').next().unwrap();
    assert!(!networks.join(ip).exists(), "host-local released {ip}");
    if !had_networks {
        let _ = std::fs::remove_dir_all(networks);
    }
}
