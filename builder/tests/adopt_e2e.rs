//! A Docker-era worker, adopted (`just e2e`). The worker is booted under QEMU from a recipe with
//! Debian's `docker.io` (dockerd and Debian's containerd 1.6 running), and kubelet v1.32 as an
//! Ansible role installs it: the binary in `/usr/local/bin`, a hand-written `kubelet.service` with
//! its flags in a drop-in and an environment file, a KubeletConfiguration, and kubelet's own client
//! certificate (issued by the real control plane's CA, as its TLS bootstrap left it). It runs on
//! Debian's containerd (kubelet 1.24+ has no dockershim), its images imported with `ctr`. kiln's
//! image builder only makes the disk: kiln-firstboot's boot units are masked, so the worker boots
//! as a worker that was never a kiln node.
//!
//! The test joins it to the real control plane (`kiln_testkit::cluster`), runs a Deployment's pod
//! on it, then tells the guest (an annotation on its own Node, read with its own credentials) to
//! adopt. A unit on the guest runs `kiln-firstboot adopt` twice:
//! - with a bundle whose kubelet cannot start: refused at the health gate and rolled back: the old
//!   kubelet and Debian's containerd running again, dockerd running and enabled again, the Node
//!   Ready on containerd 1.6;
//! - with the node bundle (kubelet 1.32.13, containerd 2.3.4, verity): the same Node name and
//!   InternalIP, `containerd://2.3.4`, the bundle's labels on the existing Node, the pod running
//!   again, dockerd stopped and masked, kiln's containerd the one running.
//!
//! Network: `-netdev user,restrict=on` with one `guestfwd` of 10.0.2.100:6443 to the API server on
//! 127.0.0.1; nothing the guest tries leaves the machine. Prints the adoption's time from the go
//! to the Node Ready on the bundle, the rollback's, and the floor measured the same way in the same
//! boot: the old runtime and kubelet restarted by hand, to the Node Ready from the new kubelet.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use kiln_testkit::cluster::{self, Cluster};
use kiln_testkit::k8s;
use kiln_testkit::qemu::{self, Net, Vm, GUEST_API};

const NODE: &str = "worker96";
const GOOD: &str = "1.32.13-1";
const BAD: &str = "1.32.13-bad";

/// The worker's kubelet keeps `--max-pods=50` from its environment file; a bundle that adopts it
/// must keep it too.
const KEEPS_MAX_PODS: &str = "  verity: true\n  config:\n    kubelet:\n      settings:\n        maxPods: 50\n";

const KUBELET_UNIT: &str = "[Unit]
Description=Kubernetes kubelet (ansible role kubernetes-node)
After=docker.service containerd.service worker-images.service
Wants=containerd.service

[Service]
EnvironmentFile=-/etc/default/kubelet
ExecStart=/usr/local/bin/kubelet $KUBELET_ARGS $KUBELET_EXTRA_ARGS
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
";

const KUBELET_DROPIN: &str = "[Service]
Environment=\"KUBELET_ARGS=--kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml --container-runtime-endpoint=unix:///run/containerd/containerd.sock --node-ip=10.0.2.15 --hostname-override=worker96\"
";

const KUBELET_CONFIG: &str = "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
";

/// The role's containerd configuration for Debian's containerd 1.6: the pinned sandbox image
/// (imported, the node pulls nothing), systemd cgroups, Debian's CNI plugins.
const CONTAINERD_TOML: &str = r#"version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.10"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"#;

const CNI: &str = r#"{"cniVersion": "1.0.0", "name": "worker-net", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
"#;

/// The role's image preload: what the worker runs is imported into containerd's CRI namespace.
const IMAGES_UNIT: &str = "[Unit]
Description=worker: import the preloaded images into containerd
After=containerd.service
Requires=containerd.service
Before=kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for i in /var/lib/worker-images/*.tar; do ctr -n k8s.io images import $i || exit 1; done'

[Install]
WantedBy=multi-user.target
";

/// The test's side on the guest: wait for the test's go on the Node (read with the node's own
/// credentials), adopt, report on the console.
const SCENARIO: &str = r#"#!/bin/sh
pem=/var/lib/kubelet/pki/kubelet-client-current.pem
go() {
  until curl -sf --cacert /etc/kubernetes/pki/ca.crt --cert $pem --key $pem \
      https://10.0.2.100:6443/api/v1/nodes/worker96 | grep -Eq "\"kiln-e2e/go\": ?\"$1\""; do
    sleep 2
  done
}
units() {
  pid=$(systemctl show -p MainPID --value containerd.service)
  echo "ADOPT-E2E-UNITS $1 docker=$(systemctl is-active docker.service)/$(systemctl is-enabled docker.service) kubelet=$(systemctl is-active kubelet.service) containerd=$(systemctl is-active containerd.service) runtime=$(readlink -f /proc/$pid/exe)"
}
units before
# The floor, by hand: the old runtime and kubelet restarted.
go restart
systemctl restart containerd.service docker.service kubelet.service
echo "ADOPT-E2E-RESTARTED $(date -u +%Y-%m-%dT%H:%M:%SZ)"
go bad
kiln-firstboot adopt /root/bundles/kiln-node-1.32.13-bad-amd64.kiln.tar.zst --health-timeout 60 -o json >/root/bad.json 2>/root/bad.err
echo "ADOPT-E2E-BAD rc=$? $(tr '\n' ' ' </root/bad.err)"
units bad
go good
kiln-firstboot adopt /usr/lib/kiln/bundles/kiln-node-1.32.13-1-amd64.kiln.tar.zst --health-timeout 400 -o json >/root/good.json 2>/root/good.err
rc=$?
echo "ADOPT-E2E-GOOD-ERR $(tr '\n' ' ' </root/good.err)"
echo "ADOPT-E2E-GOOD rc=$rc $(tr -d '\n' </root/good.json)"
units good
"#;

const SCENARIO_UNIT: &str = "[Unit]
Description=adopt e2e: adopt on the test's go
After=kubelet.service

[Service]
Type=oneshot
ExecStart=/usr/local/bin/adopt-e2e
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      nodeSelector:
        kubernetes.io/hostname: worker96
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: docker.io/kiln/busybox:e2e
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "echo ADOPT-E2E-POD-STARTED | tee /dev/kmsg; exec sleep 86400"]
        securityContext:
          privileged: true
"#;

fn put(root: &Path, rel: &str, text: &str, mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn enable(root: &Path, unit: &str) {
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    symlink(format!("/etc/systemd/system/{unit}"), wants.join(unit)).unwrap();
}

fn copy_bundle(bundle: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let name = bundle.file_name().unwrap().to_str().unwrap();
    for suffix in ["", ".sha256", ".verity"] {
        let from = bundle.with_file_name(format!("{name}{suffix}"));
        if from.is_file() {
            std::fs::copy(&from, dir.join(format!("{name}{suffix}"))).unwrap();
        }
    }
}

/// The worker as the role leaves it, on top of the recipe's Debian with docker.io.
fn worker_overlay(dir: &Path, c: &Cluster, src: &Path, bad: &Path) -> std::path::PathBuf {
    let root = dir.join("overlay");
    let kubelet = k8s::bin_dir().join("kubelet");
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    std::fs::copy(&kubelet, root.join("usr/local/bin/kubelet")).unwrap();
    put(&root, "etc/hostname", &format!("{NODE}\n"), 0o644);
    put(&root, "etc/systemd/system/kubelet.service", KUBELET_UNIT, 0o644);
    put(
        &root,
        "etc/systemd/system/kubelet.service.d/10-flags.conf",
        KUBELET_DROPIN,
        0o644,
    );
    put(
        &root,
        "etc/default/kubelet",
        "KUBELET_EXTRA_ARGS=--max-pods=50\n",
        0o644,
    );
    put(&root, "var/lib/kubelet/config.yaml", KUBELET_CONFIG, 0o644);
    let (cert, key) = c.node_credentials(NODE);
    put(
        &root,
        "var/lib/kubelet/pki/kubelet-client-current.pem",
        &format!("{cert}{key}"),
        0o600,
    );
    put(&root, "etc/kubernetes/pki/ca.crt", &c.ca_pem, 0o644);
    put(
        &root,
        "etc/kubernetes/kubelet.conf",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n    server: https://{GUEST_API}\n    certificate-authority: /etc/kubernetes/pki/ca.crt\ncontexts:\n- name: default-context\n  context: {{cluster: default-cluster, user: default-auth}}\ncurrent-context: default-context\nusers:\n- name: default-auth\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n"
        ),
        0o600,
    );
    put(&root, "etc/containerd/config.toml", CONTAINERD_TOML, 0o644);
    put(&root, "etc/cni/net.d/10-worker.conflist", CNI, 0o644);
    for image in ["pause.oci.tar", "busybox.oci.tar"] {
        std::fs::create_dir_all(root.join("var/lib/worker-images")).unwrap();
        std::fs::copy(src.join(image), root.join("var/lib/worker-images").join(image)).unwrap();
    }
    put(&root, "etc/systemd/system/worker-images.service", IMAGES_UNIT, 0o644);
    put(&root, "usr/local/bin/adopt-e2e", SCENARIO, 0o755);
    put(&root, "etc/systemd/system/adopt-e2e.service", SCENARIO_UNIT, 0o644);
    for unit in ["kubelet.service", "worker-images.service", "adopt-e2e.service"] {
        enable(&root, unit);
    }
    // Not a kiln node: kiln-firstboot is installed but never activates anything at boot.
    for (unit, _) in kiln_bundle::layout::units::FIRSTBOOT_UNITS {
        symlink("/dev/null", root.join("etc/systemd/system").join(unit)).unwrap();
    }
    copy_bundle(bad, &root.join("root/bundles"));
    root
}

fn node(c: &Cluster) -> Option<serde_json::Value> {
    kubectl_json(c, &["get", "node", NODE])
}

fn runtime(node: &serde_json::Value) -> String {
    node["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Wait until the Node is Ready on a runtime starting with `prefix`; the Node.
fn ready_on(c: &Cluster, vm: &mut Vm, prefix: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = node(c).filter(|n| node_ready(n, None) && runtime(n).starts_with(prefix)) {
            return n;
        }
        assert!(vm.running(), "the guest stopped:\n{}", vm.tail(80));
        assert!(
            Instant::now() < deadline,
            "Node {NODE} not Ready on {prefix} within {timeout:?} (now {:?}); console:\n{}",
            node(c).map(|n| runtime(&n)),
            vm.tail(100)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The web pod's container ID once it runs Ready on the node.
fn web_running(c: &Cluster, vm: &mut Vm, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = c.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"]);
        let pods: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let running = pods["items"].as_array().into_iter().flatten().find_map(|p| {
            let s = &p["status"]["containerStatuses"][0];
            (p["spec"]["nodeName"] == NODE && s["ready"] == true && s["state"]["running"].is_object())
                .then(|| s["containerID"].as_str().unwrap_or_default().to_string())
        });
        if let Some(id) = running {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "the web pod did not run on {NODE} within {timeout:?}: {}\n{}",
            pods["items"],
            vm.tail(60)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn go(c: &Cluster, step: &str) {
    let out = c.kubectl(&["annotate", "node", NODE, &format!("kiln-e2e/go={step}"), "--overwrite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn units_line(vm: &mut Vm, when: &str, timeout: Duration) -> String {
    let line = vm.wait_for(&format!("ADOPT-E2E-UNITS {when} "), timeout);
    line.split_once("ADOPT-E2E-UNITS ").unwrap().1.to_string()
}

#[test]
fn a_docker_era_worker_is_adopted_in_place_and_a_failed_adoption_rolls_back() {
    let tmp = tempfile::Builder::new()
        .prefix("kiln-adopt-e2e-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path();
    let c = Cluster::start(&dir.join("cluster"), &cluster::Options::for_guests());

    // The bundles: the node bundle that keeps the worker's settings, and one whose kubelet exits
    // on a flag it cannot parse.
    let build = |version: &str, config: &str| {
        let src = dir.join(format!("src-{version}"));
        let manifest = k8s::node_manifest(&src, "kiln-node", version, config, false);
        let out = dir.join("bundles");
        ok(&kiln(
            &dir.join("cache"),
            &["build", manifest.to_str().unwrap(), "-o", out.to_str().unwrap()],
        ));
        (out.join(format!("kiln-node-{version}-amd64.kiln.tar.zst")), src)
    };
    let (good, src) = build(GOOD, KEEPS_MAX_PODS);
    let (bad, _) = build(BAD, &format!("{KEEPS_MAX_PODS}      flags:\n        v: not-a-number\n"));
    let firstboot = stripped_firstboot(dir);
    let overlay = worker_overlay(dir, &c, &src, &bad);
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/docker-worker.yaml");
    let images = dir.join("images");
    // The node bundle rides along where kiln image puts one; kiln-firstboot never activates it.
    let (image_s, base) = kiln_image(&recipe, &good, &images, &firstboot, Some(&overlay), "raw");
    let raw = images.join(format!("docker-worker-kiln-node-{GOOD}.raw"));

    let seed = qemu::nocloud_seed(dir, "worker", "#cloud-config\n", &format!("instance-id: {NODE}\n"));
    let opts = qemu::Options {
        memory_mib: 2048,
        cpus: 2,
        net: Net::Restricted {
            forwards: vec![(GUEST_API.to_string(), c.api_port)],
        },
    };
    let mut vm = Vm::boot(dir, "worker", &raw, &seed, &opts);
    // Under TCG on a loaded 2-core host a guest kernel has hung in early boot once (RCU stalls,
    // CPU 0's timer never firing, no userspace). Then, and only then, it is booted once more:
    // nothing of the scenario has run, and the disk is as built.
    let deadline = Instant::now() + Duration::from_secs(420);
    while !vm.console().contains("ADOPT-E2E-UNITS before") && vm.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
    }
    let console = vm.console();
    if !console.contains("ADOPT-E2E-UNITS before") && console.contains("rcu_preempt detected stalls") {
        eprintln!(
            "adopt-e2e: the guest kernel stalled in early boot under TCG; booting it again:\n{}",
            vm.tail(10)
        );
        vm.stop();
        vm = Vm::boot(dir, "worker-again", &raw, &seed, &opts);
    }

    // The Docker-era worker joins with its own certificate and runs a pod on Debian's containerd.
    let before = ready_on(&c, &mut vm, "containerd://1.6", Duration::from_secs(600));
    let to_ready = vm.started.elapsed().as_secs_f64();
    let boot_id = before["status"]["nodeInfo"]["bootID"].as_str().unwrap().to_string();
    let units = units_line(&mut vm, "before", Duration::from_secs(60));
    assert!(
        units.contains("docker=active/enabled") && units.contains("runtime=/usr/bin/containerd"),
        "{units}"
    );
    let manifest = dir.join("web.yaml");
    std::fs::write(&manifest, DEPLOYMENT).unwrap();
    let out = c.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let old_pod = web_running(&c, &mut vm, Duration::from_secs(300));

    // The floor, measured the same way: the old runtime and kubelet restarted by hand, to the
    // Node Ready from the restarted kubelet (a heartbeat at or after the restart).
    go(&c, "restart");
    let t = Instant::now();
    let line = vm.wait_for("ADOPT-E2E-RESTARTED ", Duration::from_secs(300));
    let restarted = line.split_once("ADOPT-E2E-RESTARTED ").unwrap().1.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !node(&c).is_some_and(|n| node_ready(&n, Some(&restarted))) {
        assert!(
            Instant::now() < deadline,
            "no Ready heartbeat since {restarted} from the restarted kubelet: {:?}",
            node(&c).map(|n| n["status"]["conditions"].clone())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let floor_s = t.elapsed().as_secs_f64();

    // A bundle whose kubelet cannot start: refused at the health gate, the worker put back.
    go(&c, "bad");
    let t = Instant::now();
    let line = vm.wait_for("ADOPT-E2E-BAD rc=", Duration::from_secs(900));
    assert!(!line.contains("rc=0 "), "{line}");
    assert!(line.contains("the worker was put back as it was"), "{line}");
    // Refused as soon as systemd has restarted that kubelet a few times, not at the join timeout.
    assert!(line.contains("kubelet.service keeps exiting"), "{line}");
    let units = units_line(&mut vm, "bad", Duration::from_secs(60));
    for want in [
        "docker=active/enabled",
        "kubelet=active",
        "containerd=active",
        "runtime=/usr/bin/containerd",
    ] {
        assert!(units.contains(want), "after the rollback, {want}: {units}");
    }
    let back = ready_on(&c, &mut vm, "containerd://1.6", Duration::from_secs(300));
    let rollback_s = t.elapsed().as_secs_f64();
    assert!(
        back["metadata"]["labels"]["kiln.dev/bundle-version"].is_null(),
        "{}",
        back["metadata"]["labels"]
    );
    web_running(&c, &mut vm, Duration::from_secs(300));

    // The node bundle: the same Node, now on kiln's containerd 2.3.4.
    go(&c, "good");
    let t = Instant::now();
    let after = ready_on(&c, &mut vm, "containerd://2.3.4", Duration::from_secs(900));
    let adopt_s = t.elapsed().as_secs_f64();
    let line = vm.wait_for("ADOPT-E2E-GOOD rc=", Duration::from_secs(600));
    let err = vm.wait_for("ADOPT-E2E-GOOD-ERR", Duration::from_secs(10));
    let report = line.split_once("ADOPT-E2E-GOOD rc=").unwrap().1;
    assert!(report.starts_with("0 "), "{line}\n{err}");
    let record: serde_json::Value = serde_json::from_str(report[2..].trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(record["phase"], "adopted", "{record}");
    assert_eq!(record["node"], NODE, "{record}");
    assert_eq!(record["nodeIp"], "10.0.2.15", "{record}");
    let units = units_line(&mut vm, "good", Duration::from_secs(60));
    assert!(units.contains("docker=inactive/masked"), "{units}");
    assert!(
        units.contains("kubelet=active") && units.contains("containerd=active"),
        "{units}"
    );
    assert!(
        !units.contains("runtime=/usr/bin/containerd"),
        "kiln's containerd runs: {units}"
    );

    assert_eq!(
        after["metadata"]["uid"], before["metadata"]["uid"],
        "the same Node object"
    );
    assert_eq!(after["status"]["nodeInfo"]["bootID"], boot_id.as_str(), "no reboot");
    assert_eq!(after["status"]["nodeInfo"]["kubeletVersion"], "v1.32.13");
    let addresses = after["status"]["addresses"].to_string();
    assert!(
        addresses.contains("\"InternalIP\"") && addresses.contains("10.0.2.15"),
        "{addresses}"
    );
    let digest = kiln_bundle::digest::parse_sha256sum(
        &std::fs::read_to_string(kiln_bundle::writer::sha256_path(&good)).unwrap(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = node(&c).unwrap();
        let labels = &n["metadata"]["labels"];
        if labels["kiln.dev/bundle-version"] == GOOD && labels["kiln.dev/bundle-digest"] == digest.short().as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "the bundle's labels on {NODE}: {labels}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The pod runs again, reported by kiln's kubelet.
    let new_pod = web_running(&c, &mut vm, Duration::from_secs(300));

    let plugin = Path::new(env!("CARGO_BIN_EXE_kiln")).with_file_name("kubectl-kiln");
    let status = run(std::process::Command::new(&plugin)
        .arg("--kubeconfig")
        .arg(&c.admin_kubeconfig)
        .args(["status", "-o", "json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["bundleVersions"], serde_json::json!([GOOD]), "{status}");

    println!("adopt-e2e: image build (base {base})                        {image_s:.1} s");
    println!("adopt-e2e: QEMU start to the Docker-era Node Ready          {to_ready:.1} s");
    println!("adopt-e2e: failed adoption, go to the old kubelet Ready     {rollback_s:.1} s");
    println!("adopt-e2e: adoption, go to Node Ready on containerd 2.3.4   {adopt_s:.1} s");
    println!(
        "adopt-e2e: by hand, go to the old runtime and kubelet restarted and Ready {floor_s:.1} s (floor); adoption/floor {:.2}",
        adopt_s / floor_s
    );
    println!(
        "adopt-e2e: the web pod's container {}",
        if new_pod == old_pod {
            "kept across the adoption"
        } else {
            "started again"
        }
    );
}
