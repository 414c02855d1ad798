//! The test control plane is real and behaves as kubeadm's does for node bootstrap: it starts
//! quickly, the bootstrap token authenticates in the bootstrappers group with the rights a kubelet
//! needs to ask for its certificate, a wrong token is refused, the controller manager signs and
//! approves a node client CSR, and every process is gone after it stops. Needs the real binaries
//! (`../shared/k8s/` or `KILN_K8S_BIN`), etcd (Debian's etcd-server) and kubectl.

use std::process::Command;

use base64::Engine;
use std::time::{Duration, Instant};

use kiln_testkit::cluster::{Cluster, Options};

fn kubectl_as_token(c: &Cluster, token: &str, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg(format!("--server={}", c.server()))
        .arg(format!(
            "--certificate-authority={}",
            c.dir.join("pki/ca.crt").display()
        ))
        .arg(format!("--token={token}"))
        .arg("--kubeconfig=/dev/null")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn control_plane_starts_bootstraps_nodes_and_stops_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(&tmp.path().join("cluster"), &Options::default());
    assert!(
        c.started_in < Duration::from_secs(15),
        "the control plane took {:?}",
        c.started_in
    );
    let version = c.kubectl(&["version", "-o", "json"]);
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.contains("\"gitVersion\": \"v1.32.13"), "{version}");

    // The bootstrap token: who it is, and what it may do.
    let who = kubectl_as_token(
        &c,
        &c.bootstrap_token,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"],
    );
    let who = String::from_utf8_lossy(&who.stdout).into_owned();
    assert!(who.contains(kiln_testkit::cluster::BOOTSTRAP_GROUP), "{who}");
    for (verb, resource, allowed) in [
        ("create", "certificatesigningrequests", "yes"),
        ("create", "certificatesigningrequests/nodeclient", "yes"),
        ("list", "secrets", "no"),
    ] {
        let out = kubectl_as_token(&c, &c.bootstrap_token, &["auth", "can-i", verb, resource]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            allowed,
            "{verb} {resource}"
        );
    }
    let (id, _) = c.bootstrap_token.split_once('.').unwrap();
    let wrong = format!("{id}.0000000000000000");
    let out = kubectl_as_token(&c, &wrong, &["get", "--raw", "/version"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthorized"), "{out:?}");

    // A node client CSR as a bootstrapping kubelet sends it: approved and signed by the
    // controller manager with the cluster CA.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:csr-test");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let csr_yaml = format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: node-csr-test\nspec:\n  signerName: kubernetes.io/kube-apiserver-client-kubelet\n  usages: [digital signature, client auth]\n  request: {}\n",
        base64::engine::general_purpose::STANDARD.encode(csr.as_bytes())
    );
    let path = tmp.path().join("csr.yaml");
    std::fs::write(&path, csr_yaml).unwrap();
    let out = kubectl_as_token(&c, &c.bootstrap_token, &["create", "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.kubectl(&["get", "csr", "node-csr-test", "-o", "jsonpath={.status.certificate}"]);
        if !out.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the CSR was not approved and signed: {}",
            c.log("kube-controller-manager")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Stopped by PID: every process gone, the API port free.
    let pids = c.pids();
    assert_eq!(pids.len(), 4);
    c.stop();
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is still there"
        );
    }
    std::net::TcpListener::bind(("127.0.0.1", c.api_port)).expect("the API port is free again");
}
