//! A real Kubernetes control plane for tests: etcd (Debian's `etcd-server`) and kube-apiserver,
//! kube-controller-manager and kube-scheduler v1.32 (from [`crate::k8s::bin_dir`]) on 127.0.0.1,
//! with a PKI generated for the run, set up the way kubeadm sets up a cluster for node bootstrap:
//! bootstrap-token authentication, a bootstrap token Secret in kube-system, the RBAC bindings that
//! let a bootstrapping kubelet create its CSR and have it approved, the controller manager signing
//! kubelet client certificates with the cluster CA. Every process is stopped by PID when the
//! [`Cluster`] is dropped, and its ports are free again afterwards.

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// What a test may vary.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Addresses the API server certificate must also be valid for (e.g. the address a QEMU guest
    /// reaches the API server at through a forward).
    pub extra_sans: Vec<IpAddr>,
}

impl Options {
    /// A cluster QEMU guests join: the API server certificate is also valid for
    /// [`crate::qemu::GUEST_API_IP`].
    pub fn for_guests() -> Options {
        Options {
            extra_sans: vec![crate::qemu::GUEST_API_IP.parse().expect("an IP address")],
        }
    }
}

/// A running control plane.
pub struct Cluster {
    pub dir: PathBuf,
    pub api_port: u16,
    /// `system:masters` client kubeconfig.
    pub admin_kubeconfig: PathBuf,
    pub ca_pem: String,
    /// `abcdef.0123456789abcdef` form, valid for node bootstrap.
    pub bootstrap_token: String,
    procs: Vec<(&'static str, Child)>,
    pub started_in: Duration,
    pki: Pki,
}

/// The group kubeadm puts bootstrapping kubelets in.
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// A port for a test server on 127.0.0.1, free when checked. It is below Linux's ephemeral range
/// (32768-60999), where the kernel puts no client connection's source port, so no connection can
/// take it between this check and the server's bind (a port from `bind(:0)` could be, and once
/// was: etcd failed with "address already in use"). Never the same twice in one process; each
/// process starts at its own offset.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20000;
    const COUNT: u32 = 12000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(7919);
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + offset.wrapping_add(n) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {FIRST}..{}", FIRST + COUNT)
}

/// A test certificate authority and the leaf certificates it signs.
pub struct Pki {
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    /// A new CA, written to `dir/ca.crt` and `dir/ca.key`.
    pub fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "kiln-test-ca");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.crt"), cert.pem()).unwrap();
        write_secret(&dir.join("ca.key"), &key.serialize_pem());
        Pki {
            ca_pem: cert.pem(),
            ca: Issuer::new(params, key),
        }
    }

    /// A leaf certificate `name.crt`/`name.key` in `dir`.
    pub fn leaf(&self, dir: &Path, name: &str, cn: &str, org: Option<&str>, sans: &[String], server: bool) {
        let (cert, key) = self.issue(cn, org, sans, server);
        std::fs::write(dir.join(format!("{name}.crt")), cert).unwrap();
        write_secret(&dir.join(format!("{name}.key")), &key);
    }

    /// A leaf certificate and its key, PEM.
    pub fn issue(&self, cn: &str, org: Option<&str>, sans: &[String], server: bool) -> (String, String) {
        let mut params = CertificateParams::new(sans.to_vec()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = org {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// A kubeconfig for `server` authenticating with `name.crt`/`name.key` from `pki`.
fn kubeconfig(path: &Path, server: &str, pki: &Path, name: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kiln-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {name}\n  user:\n    client-certificate: {dir}/{name}.crt\n    client-key: {dir}/{name}.key\ncontexts:\n- name: kiln-test\n  context:\n    cluster: kiln-test\n    user: {name}\ncurrent-context: kiln-test\n",
        ca = pki.join("ca.crt").display(),
        dir = pki.display(),
    );
    write_secret(path, &text);
}

/// A bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`), different for every cluster.
fn new_token(dir: &Path) -> String {
    let seed = format!("{}-{:?}-{:?}", std::process::id(), Instant::now(), dir);
    let hex = crate::sha256_hex(seed.as_bytes());
    format!("{}.{}", &hex[..6], &hex[6..22])
}

impl Cluster {
    /// Start etcd and the control plane under `dir` (created), and wait until the API server is
    /// ready and the bootstrap objects exist. Panics with the components' logs on failure.
    pub fn start(dir: &Path, opts: &Options) -> Cluster {
        let started = Instant::now();
        let bin = crate::k8s::bin_dir();
        let etcd_bin = which("etcd")
            .unwrap_or_else(|| panic!("etcd is missing: install Debian's etcd-server (scripts/setup does)"));
        std::fs::create_dir_all(dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        let ca = Pki::new(&pki);
        let mut sans: Vec<String> = vec![
            "127.0.0.1".into(),
            "10.96.0.1".into(),
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        sans.extend(opts.extra_sans.iter().map(IpAddr::to_string));
        ca.leaf(&pki, "apiserver", "kube-apiserver", None, &sans, true);
        ca.leaf(&pki, "admin", "kubernetes-admin", Some("system:masters"), &[], false);
        ca.leaf(
            &pki,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("kubeadm:cluster-admins"),
            &[],
            false,
        );
        let sa = KeyPair::generate().unwrap();
        write_secret(&pki.join("sa.key"), &sa.serialize_pem());
        std::fs::write(pki.join("sa.pub"), sa.public_key_pem()).unwrap();

        let etcd_port = free_port();
        let peer_port = free_port();
        let api_port = free_port();
        let server = format!("https://127.0.0.1:{api_port}");
        let admin = dir.join("admin.kubeconfig");
        kubeconfig(&admin, &server, &pki, "admin");

        let mut c = Cluster {
            dir: dir.clone(),
            api_port,
            admin_kubeconfig: admin.clone(),
            ca_pem: ca.ca_pem.clone(),
            bootstrap_token: new_token(&dir),
            procs: Vec::new(),
            started_in: Duration::ZERO,
            pki: ca,
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        c.spawn(
            "etcd",
            Command::new(etcd_bin)
                .arg("--name=kiln-test")
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--advertise-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=kiln-test={peer_url}")),
        );
        let p = |f: &str| pki.join(f).display().to_string();
        c.spawn(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver"))
                .arg(format!("--etcd-servers={etcd_url}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                // The `kubernetes` Endpoints may not hold a loopback address; nothing here needs it.
                .arg("--endpoint-reconciler-type=none")
                .arg(format!("--secure-port={api_port}"))
                .arg(format!("--client-ca-file={}", p("ca.crt")))
                .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
                .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
                .arg(format!(
                    "--kubelet-client-certificate={}",
                    p("apiserver-kubelet-client.crt")
                ))
                .arg(format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")))
                .arg("--kubelet-preferred-address-types=InternalIP")
                .arg("--authorization-mode=Node,RBAC")
                .arg("--enable-admission-plugins=NodeRestriction")
                .arg("--enable-bootstrap-token-auth=true")
                .arg("--allow-privileged=true")
                .arg("--service-cluster-ip-range=10.96.0.0/16")
                .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
                .arg(format!("--service-account-key-file={}", p("sa.pub")))
                .arg(format!("--service-account-signing-key-file={}", p("sa.key")))
                .arg(format!("--cert-dir={}", pki.display())),
        );
        c.wait_ready(Duration::from_secs(60));
        for (name, extra) in [
            (
                "kube-controller-manager",
                vec![
                    format!("--cluster-signing-cert-file={}", p("ca.crt")),
                    format!("--cluster-signing-key-file={}", p("ca.key")),
                    format!("--root-ca-file={}", p("ca.crt")),
                    format!("--service-account-private-key-file={}", p("sa.key")),
                    "--controllers=*,bootstrapsigner,tokencleaner".into(),
                    "--cluster-name=kiln-test".into(),
                ],
            ),
            ("kube-scheduler", vec![]),
        ] {
            let admin = admin.display().to_string();
            c.spawn(
                name,
                Command::new(bin.join(name))
                    .arg(format!("--kubeconfig={admin}"))
                    .arg(format!("--authentication-kubeconfig={admin}"))
                    .arg(format!("--authorization-kubeconfig={admin}"))
                    .arg("--bind-address=127.0.0.1")
                    .arg(format!("--secure-port={}", free_port()))
                    .arg("--leader-elect=false")
                    .args(extra),
            );
        }
        c.apply(&bootstrap_objects(&c.bootstrap_token));
        c.started_in = started.elapsed();
        c
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.procs.push((name, child));
    }

    /// The log of one component (`etcd`, `kube-apiserver`, ...).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The PIDs of the running components.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(_, c)| c.id()).collect()
    }

    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    fn check_alive(&mut self) {
        for (name, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "{name} exited ({status}):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive();
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the API server was not ready within {timeout:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log("kube-apiserver")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The client certificate and key (PEM) kubelet holds for node `name` after its TLS bootstrap:
    /// `system:node:NAME` in `system:nodes`, so the Node authorizer and NodeRestriction judge it.
    pub fn node_credentials(&self, name: &str) -> (String, String) {
        self.pki
            .issue(&format!("system:node:{name}"), Some("system:nodes"), &[], false)
    }

    /// `kubectl --kubeconfig <admin> ARGS`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("kubectl (scripts/setup installs it)")
    }

    /// `kubectl apply -f -` with `yaml`, to success.
    pub fn apply(&self, yaml: &str) {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stop every component by PID (SIGTERM, then SIGKILL after 10 s), newest first.
    pub fn stop(&mut self) {
        while let Some((_, mut child)) = self.procs.pop() {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The bootstrap token Secret and the RBAC bindings kubeadm creates for node bootstrap.
pub fn bootstrap_objects(token: &str) -> String {
    let (id, secret) = token.split_once('.').expect("id.secret");
    format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: bootstrap-token-{id}
  namespace: kube-system
type: bootstrap.kubernetes.io/token
stringData:
  token-id: "{id}"
  token-secret: "{secret}"
  usage-bootstrap-authentication: "true"
  usage-bootstrap-signing: "true"
  auth-extra-groups: {BOOTSTRAP_GROUP}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:kubelet-bootstrap
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:node-bootstrapper
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: {BOOTSTRAP_GROUP}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:node-autoapprove-bootstrap
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:certificates.k8s.io:certificatesigningrequests:nodeclient
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: {BOOTSTRAP_GROUP}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:node-autoapprove-certificate-rotation
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:certificates.k8s.io:certificatesigningrequests:selfnodeclient
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kubeadm:cluster-admins
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: kubeadm:cluster-admins
"#
    )
}
