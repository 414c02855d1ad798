//! A kiln node is a Kubernetes node (`just e2e`): a node bundle built from the real kubelet v1.32
//! and containerd 2.3.4 (`../shared/k8s/` or `KILN_K8S_BIN`), Debian's runc and CNI plugins and
//! locally built pause and busybox images, baked into the Debian 12 image, against a real control
//! plane on the host's loopback (`kiln_testkit::cluster`). The joining node is netbooted under
//! QEMU/OVMF with no disk, from the image's `pxe` artifacts: iPXE gets a per-node script from
//! slirp's DHCP and TFTP, which sets `kiln.config=URL` (the user data) and chains kiln's script; the
//! kernel, initrd, root image and user data come over HTTP from the host's loopback. The two nodes
//! that must fail boot the raw disk with NoCloud seeds. Checked through the API and on the guest's
//! console:
//! - the netbooted node runs from a tmpfs root and fetched its five files; the disk nodes' root is
//!   ext4;
//! - kubelet TLS-bootstraps with the token, and the Node goes Ready with kiln's bundle labels, the
//!   labels and taint from user data, and `containerd://2.3.4`;
//! - a pod placed by the real scheduler runs to completion from the preloaded image, and says so on
//!   the guest's console;
//! - `kubectl kiln status` shows the node on its bundle; kiln-firstboot's state says `ok` only
//!   after the Node is Ready, in verity mode: the bundle is built with `spec.verity`, so kubelet,
//!   kube-proxy and containerd run from its erofs image mounted read-only through dm-verity;
//! - a wrong bootstrap token and an unreachable API server each fail with one clear line on the
//!   console and in state.json.
//!
//! Network: the guests get `-netdev user,restrict=on`; the only ways out are `guestfwd`s of
//! 10.0.2.100:6443 to the API server and 10.0.2.100:80 to the HTTP server on 127.0.0.1 (through
//! socat), so nothing a guest tries
//! (a registry pull, DNS) leaves the machine, and nothing on the host connects to a guest.
//! Prints QEMU start to Node Ready, kernel start to bundle activated (netbooted and from disk), the
//! activation time, and the bundle and image (raw, pxe) build times.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use kiln_testkit::cluster::{self, Cluster};
use kiln_testkit::k8s;
use kiln_testkit::qemu::{self, Net, Vm, GUEST_API};

const NODE: &str = "kiln-e2e-node";
/// Where the netbooted guest reaches the host's HTTP server (forwarded like the API server).
const GUEST_HTTP: &str = "10.0.2.100:80";
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// From the pod's creation to its completion (a sandbox and a container under emulation).
const POD_TIMEOUT: Duration = Duration::from_secs(300);

/// A unit that prints kiln-firstboot's state on the console once its health check has run,
/// whichever way it ended.
fn overlay(dir: &Path) {
    let bin = dir.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        bin.join("kiln-e2e-report"),
        "#!/bin/sh\necho \"KILN-E2E-ROOT $(findmnt -n -o FSTYPE /)\"\n\
         echo \"KILN-E2E-STATE $(tr -d '\\n' < /var/lib/kiln/state.json)\"\n\
         # kube-proxy has synced once it has written its nat rules.\n\
         for i in $(seq 90); do iptables-save -t nat | grep -q '^-A KUBE-SERVICES' && break; sleep 1; done\n\
         echo \"KILN-E2E-KUBE-PROXY $(systemctl is-active kube-proxy.service) $(iptables-save -t nat | grep -c '^-A KUBE-SERVICES')\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("kiln-e2e-report"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let units = dir.join("etc/systemd/system");
    std::fs::create_dir_all(units.join("multi-user.target.wants")).unwrap();
    std::fs::write(
        units.join("kiln-e2e-report.service"),
        "[Unit]\nDescription=kiln e2e: report the activation\nAfter=kiln-firstboot-health.service\n\n[Service]\nType=oneshot\nExecStart=/usr/local/bin/kiln-e2e-report\nStandardOutput=journal+console\n\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../kiln-e2e-report.service",
        units.join("multi-user.target.wants/kiln-e2e-report.service"),
    )
    .unwrap();
}

fn user_data(c: &Cluster, host: &str, token: &str, join_timeout: u64, proxy_token: &str) -> String {
    let ca: String = c.ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "#cloud-config\nhostname: {host}\nkiln:\n  apiServer: https://{GUEST_API}\n  clusterCA: |\n{ca}  bootstrapToken: {token}\n  kubeProxyToken: {proxy_token}\n  nodeIP: 10.0.2.15\n  clusterDNS: 10.96.0.10\n  joinTimeoutSeconds: {join_timeout}\n  labels:\n    kiln.dev/pool: e2e\n  taints: [\"dedicated=e2e:NoSchedule\"]\n"
    )
}

/// The kernel's timestamp on kiln-firstboot's "bundle … activated" console line, in seconds.
fn activated_at(console: &str) -> f64 {
    // The line may follow other output (a login prompt) on the same console line.
    console
        .lines()
        .filter(|l| l.contains(" activated"))
        .find_map(|l| {
            let head = &l[..l.find("] kiln-firstboot[")?];
            head[head.rfind('[')? + 1..].trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no kiln-firstboot activated line on the console:\n{console}"))
}

fn state_on(console: &str) -> serde_json::Value {
    let line = console
        .lines()
        .find_map(|l| l.split_once("KILN-E2E-STATE ").map(|(_, j)| j.trim()))
        .unwrap_or_else(|| panic!("no state on the console:\n{console}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: kiln-e2e-pod
  namespace: default
spec:
  restartPolicy: Never
  nodeSelector:
    kiln.dev/pool: e2e
  tolerations:
  - key: dedicated
    operator: Equal
    value: e2e
    effect: NoSchedule
  containers:
  - name: hello
    image: docker.io/kiln/busybox:e2e
    imagePullPolicy: Never
    securityContext:
      privileged: true
    command: ["/bin/sh", "-c", "echo KILN-E2E-POD-RAN in $(hostname) | tee /dev/kmsg"]
"#;

#[test]
fn a_kiln_node_joins_a_real_cluster_and_runs_a_pod() {
    let tmp = tempfile::Builder::new()
        .prefix("kiln-node-e2e-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path();
    let c = Cluster::start(&dir.join("cluster"), &cluster::Options::for_guests());

    // The node bundle and its image.
    // With the verity image: kubelet, kube-proxy and containerd run from the read-only mount.
    let manifest = k8s::node_manifest(&dir.join("src"), "kiln-node", "1.32.13-1", "  verity: true\n", true);
    let t = Instant::now();
    let out = dir.join("bundle");
    ok(&kiln(
        &dir.join("cache"),
        &["build", manifest.to_str().unwrap(), "-o", out.to_str().unwrap()],
    ));
    let bundle_s = t.elapsed().as_secs_f64();
    let bundle = out.join("kiln-node-1.32.13-1-amd64.kiln.tar.zst");
    let firstboot = stripped_firstboot(dir);
    let over = dir.join("overlay");
    overlay(&over);
    let recipe = kiln_testkit::workspace_root().join("images/debian-12.yaml");
    let images = dir.join("images");
    let (image_s, base) = kiln_image(&recipe, &bundle, &images, &firstboot, Some(&over), "raw");
    let raw = images.join("debian-12-kiln-node-1.32.13-1.raw");
    // The same node as netboot artifacts (the base is cached by now).
    let (pxe_s, pxe_base) = kiln_image(&recipe, &bundle, &images, &firstboot, Some(&over), "pxe");
    let stem = "debian-12-kiln-node-1.32.13-1";

    // kube-proxy's identity, as an operator gives it to a node that runs kube-proxy as a service.
    for args in [
        &["create", "serviceaccount", "kube-proxy", "-n", "kube-system"][..],
        &[
            "create",
            "clusterrolebinding",
            "kiln-kube-proxy",
            "--clusterrole=system:node-proxier",
            "--serviceaccount=kube-system:kube-proxy",
        ][..],
    ] {
        let out = c.kubectl(args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let proxy_token = run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&c.admin_kubeconfig)
        .args(["create", "token", "kube-proxy", "-n", "kube-system", "--duration=2h"]))
    .trim()
    .to_string();

    // The node, netbooted with no disk: slirp's DHCP and TFTP hand iPXE a per-node script, which
    // names the node's user data (`kiln.config=URL`) and chains kiln's script; the kernel, initrd,
    // root image and user data come over HTTP from the host's loopback through a guestfwd.
    let http = kiln_testkit::mirror::Mirror::start();
    for ext in ["vmlinuz", "initrd", "root", "cmdline", "ipxe"] {
        let name = format!("{stem}.pxe.{ext}");
        http.put(&format!("/{name}"), std::fs::read(images.join(&name)).unwrap());
    }
    http.put(
        &format!("/nodes/{NODE}.yaml"),
        user_data(&c, NODE, &c.bootstrap_token, 300, &proxy_token).into_bytes(),
    );
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    std::fs::write(
        tftp.join("node.ipxe"),
        format!(
            "#!ipxe\nset kiln-args kiln.config=http://{GUEST_HTTP}/nodes/{NODE}.yaml\nchain http://{GUEST_HTTP}/{stem}.pxe.ipxe\n"
        ),
    )
    .unwrap();
    let mut vm = Vm::start(
        dir,
        "good",
        &qemu::Boot::Network {
            tftp: &tftp,
            bootfile: "node.ipxe",
        },
        &qemu::Options {
            // The root filesystem lives in memory.
            memory_mib: 3072,
            cpus: 2,
            net: Net::Restricted {
                forwards: vec![
                    (GUEST_API.to_string(), c.api_port),
                    (GUEST_HTTP.to_string(), http.port()),
                ],
            },
        },
    );
    let forward = Net::Restricted {
        forwards: vec![(GUEST_API.to_string(), c.api_port)],
    };
    // Two nodes that must fail, booted alongside (2 cores: the figures below include that load).
    let (id, _) = c.bootstrap_token.split_once('.').unwrap();
    let bad_token = format!("{id}.0000000000000000");
    let bad_seed = qemu::nocloud_seed(
        dir,
        "badtoken",
        &user_data(&c, "kiln-bad-token", &bad_token, 300, &proxy_token),
        "instance-id: bad-token\n",
    );
    let small = |net: Net| qemu::Options {
        memory_mib: 1024,
        cpus: 1,
        net,
    };
    let mut bad = Vm::boot(dir, "badtoken", &raw, &bad_seed, &small(forward.clone()));
    let cut_seed = qemu::nocloud_seed(
        dir,
        "unreachable",
        &user_data(&c, "kiln-cut-off", &c.bootstrap_token, 60, &proxy_token),
        "instance-id: cut-off\n",
    );
    let mut cut = Vm::boot(
        dir,
        "unreachable",
        &raw,
        &cut_seed,
        &small(Net::Restricted { forwards: vec![] }),
    );

    let node = loop {
        if let Some(n) = kubectl_json(&c, &["get", "node", NODE]).filter(|n| node_ready(n, None)) {
            break n;
        }
        assert!(vm.running(), "the guest stopped:\n{}", vm.tail(80));
        assert!(
            vm.started.elapsed() < READY_TIMEOUT,
            "Node {NODE} not Ready within {READY_TIMEOUT:?}; console:\n{}\nkube-controller-manager:\n{}",
            vm.tail(80),
            c.log("kube-controller-manager")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let to_ready = vm.started.elapsed().as_secs_f64();

    // What the node registered with.
    let labels = &node["metadata"]["labels"];
    let digest = kiln_bundle::digest::parse_sha256sum(
        &std::fs::read_to_string(kiln_bundle::writer::sha256_path(&bundle)).unwrap(),
    )
    .unwrap();
    assert_eq!(labels["kiln.dev/bundle-version"], "1.32.13-1", "{labels}");
    assert_eq!(labels["kiln.dev/bundle-digest"], digest.short().as_str(), "{labels}");
    assert_eq!(labels["kiln.dev/pool"], "e2e", "{labels}");
    let taints = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t["key"] == "dedicated" && t["value"] == "e2e" && t["effect"] == "NoSchedule"),
        "{taints:?}"
    );
    let info = &node["status"]["nodeInfo"];
    assert_eq!(info["containerRuntimeVersion"], "containerd://2.3.4", "{info}");
    assert_eq!(info["kubeletVersion"], "v1.32.13", "{info}");
    let addresses = node["status"]["addresses"].to_string();
    assert!(addresses.contains("10.0.2.15"), "{addresses}");

    // A pod, placed by the scheduler, runs to completion from the preloaded image.
    let pod_file = dir.join("pod.yaml");
    std::fs::write(&pod_file, POD).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The namespace's default ServiceAccount appears shortly after the control plane starts.
        let out = c.kubectl(&["create", "-f", pod_file.to_str().unwrap()]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }
    let created = Instant::now();
    let pod = loop {
        let pod = kubectl_json(&c, &["get", "pod", "kiln-e2e-pod"]).unwrap();
        if pod["status"]["phase"] == "Succeeded" || pod["status"]["phase"] == "Failed" {
            break pod;
        }
        assert!(
            created.elapsed() < POD_TIMEOUT,
            "the pod did not finish: {}\n{}",
            pod["status"],
            vm.tail(60)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(pod["status"]["phase"], "Succeeded", "{}", pod["status"]);
    assert_eq!(pod["spec"]["nodeName"], NODE);
    vm.wait_for("KILN-E2E-POD-RAN in kiln-e2e-pod", Duration::from_secs(60));

    // kiln's own view: the state, and kubectl kiln status.
    vm.wait_for("KILN-E2E-STATE", Duration::from_secs(120));
    let state = state_on(&vm.console());
    assert_eq!(state["result"], "ok", "{state}");
    assert_eq!(state["mode"], "verity", "{state}");
    assert_eq!(state["node"]["name"], NODE, "{state}");
    // kube-proxy from the bundle runs as a service with its own identity and has synced rules.
    let proxy = vm.wait_for("KILN-E2E-KUBE-PROXY", Duration::from_secs(180));
    let proxy: Vec<&str> = proxy
        .split_once("KILN-E2E-KUBE-PROXY ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(proxy[0], "active", "{proxy:?}");
    assert!(
        proxy[1].parse::<u32>().unwrap() > 0,
        "kube-proxy wrote no KUBE-SERVICES rules: {proxy:?}"
    );
    let activation_ms: f64 = state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["ms"].as_f64())
        .sum();
    let plugin = Path::new(env!("CARGO_BIN_EXE_kiln")).with_file_name("kubectl-kiln");
    let status = run(Command::new(&plugin)
        .arg("--kubeconfig")
        .arg(&c.admin_kubeconfig)
        .args(["status", "-o", "json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status.to_string().contains("1.32.13-1"), "{status}");

    // The good node ran from memory, and fetched what it booted from the host.
    assert!(vm.console().contains("KILN-E2E-ROOT tmpfs"), "{}", vm.tail(80));
    for path in [
        format!("/{stem}.pxe.ipxe"),
        format!("/{stem}.pxe.vmlinuz"),
        format!("/{stem}.pxe.initrd"),
        format!("/{stem}.pxe.root"),
        format!("/nodes/{NODE}.yaml"),
    ] {
        assert!(
            http.requests_for(&path) >= 1,
            "{path} was not fetched: {:?}",
            http.log()
        );
    }

    // The bad nodes: one clear line each, on the console and in state.json.
    let line = bad.wait_for("kiln-firstboot: FAILED:", Duration::from_secs(600));
    assert!(line.contains("refused the bootstrap token"), "{line}");
    bad.wait_for("KILN-E2E-STATE", Duration::from_secs(60));
    let s = state_on(&bad.console());
    assert!(bad.console().contains("KILN-E2E-ROOT ext4"), "{}", bad.tail(80));
    assert_eq!(s["result"], "failed", "{s}");
    assert!(
        s["error"].as_str().unwrap().contains("refused the bootstrap token"),
        "{s}"
    );
    assert!(
        kubectl_json(&c, &["get", "node", "kiln-bad-token"]).is_none(),
        "a node with a wrong token never registers"
    );
    let line = cut.wait_for("kiln-firstboot: FAILED:", Duration::from_secs(600));
    assert!(
        line.contains("cannot reach the API server at https://10.0.2.100:6443"),
        "{line}"
    );
    cut.wait_for("KILN-E2E-STATE", Duration::from_secs(60));
    let s = state_on(&cut.console());
    assert_eq!(s["result"], "failed", "{s}");

    println!("node-e2e: bundle build (kubelet 1.32.13, containerd 2.3.4)  {bundle_s:.1} s");
    println!("node-e2e: image build (base {base})                         {image_s:.1} s");
    println!("node-e2e: image build, pxe (base {pxe_base})                     {pxe_s:.1} s");
    println!("node-e2e: QEMU start to Node Ready (netbooted)              {to_ready:.1} s");
    println!(
        "node-e2e: kernel start to bundle activated: netbooted (2 CPUs) {:.1} s, disk (bad-token node, 1 CPU) {:.1} s",
        activated_at(&vm.console()),
        activated_at(&bad.console())
    );
    println!(
        "node-e2e: activation (kiln-firstboot's steps)               {:.2} s",
        activation_ms / 1000.0
    );
    println!(
        "node-e2e: boot to activated (uptime in state.json)          {:.1} s",
        state["uptimeS"].as_f64().unwrap_or_default()
    );
}
