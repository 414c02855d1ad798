//! A real private registry for tests: Debian's `docker-registry` (the CNCF distribution registry)
//! on 127.0.0.1 with TLS from a test CA and htpasswd (bcrypt) authentication, and images pushed to
//! it with skopeo. Stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{free_port, Pki};

pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub host: String,
    /// The CA that signed the registry's certificate.
    pub ca: PathBuf,
    pub log: PathBuf,
}

impl Registry {
    /// Start a registry in `dir` that accepts only `user`/`password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> Registry {
        for tool in [DOCKER_REGISTRY, "/usr/bin/htpasswd", "/usr/bin/skopeo"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: run scripts/setup (Debian packages docker-registry, apache2-utils, skopeo)"
            );
        }
        std::fs::create_dir_all(dir).unwrap();
        let pki = Pki::new(dir);
        pki.leaf(dir, "registry", "127.0.0.1", None, &["127.0.0.1".to_string()], true);
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .unwrap();
        assert!(
            htpasswd.status.success(),
            "htpasswd: {}",
            String::from_utf8_lossy(&htpasswd.stderr)
        );
        std::fs::write(dir.join("htpasswd"), &htpasswd.stdout).unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let d = dir.display();
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: {host}\n  tls:\n    certificate: {d}/registry.crt\n    key: {d}/registry.key\nauth:\n  htpasswd:\n    realm: kiln-test\n    path: {d}/htpasswd\n"
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let child = Command::new(DOCKER_REGISTRY)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("docker-registry starts");
        let r = Registry {
            child,
            host,
            ca: dir.join("ca.crt"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&r.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not listen:\n{}",
                r.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Push an OCI archive to `repo:tag` with skopeo, as a user's CI would.
    pub fn push(&self, archive: &Path, repo_tag: &str, creds: &str) {
        let certs = self.ca.parent().unwrap().join("skopeo-certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(&self.ca, certs.join("ca.crt")).unwrap();
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-creds", creds, "--dest-cert-dir"])
            .arg(&certs)
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
