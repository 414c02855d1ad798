//! A private registry as users run one: Debian's docker-registry on 127.0.0.1 with TLS from a test
//! CA and htpasswd authentication, an image pushed to it with skopeo. A bundle built with
//! `spec.config.containerd.registries` (the CA file and `auth: true`) is given to the real
//! containerd (Debian's 1.6 and the 2.3.4 binaries from `../shared/k8s/`), and the kubelet's own
//! call, CRI `PullImage` without credentials, pulls through the rendered `hosts.toml`. Wrong
//! credentials and a wrong CA each fail with containerd's own error. The credentials reach the
//! file as first boot puts them there: the bundle's secret placeholder substituted by
//! `kiln_bundle::placeholder::substitute` with base64 of `user:password`.
//! Needs root, apt (Debian's archive), docker-registry, skopeo, apache2-utils and busybox-static.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::*;
use kiln_testkit::containerd::Containerd;
use kiln_testkit::cri::Cri;
use kiln_testkit::registry::Registry;

const USER: &str = "ci-puller";
const PASSWORD: &str = "s3cret-pull";

fn registry_config(host: &str) -> String {
    format!(
        "  config:\n    containerd:\n      restrictOomScoreAdj: true\n      systemdCgroup: false\n      registries:\n        \"{host}\":\n          ca: registry-ca.pem\n          auth: true\n"
    )
}

/// Build `manifest`, unpack it as `current`, render `certs.d` into the node directory with
/// `password`, start containerd on the rendered config, and try to pull.
struct Node {
    daemon: Containerd,
    cri: Cri,
    node_hosts: std::path::PathBuf,
    template: String,
    root: std::path::PathBuf,
}

impl Node {
    fn start(t: &Path, bundle: &Path, host: &str) -> Node {
        let current = t.join("current");
        std::fs::create_dir_all(&current).unwrap();
        run(Command::new("tar")
            .args(["--zstd", "-xf"])
            .arg(bundle)
            .arg("-C")
            .arg(&current));
        let rendered = std::fs::read_to_string(current.join("etc/containerd/config.toml")).unwrap();
        assert!(
            rendered.contains("config_path = \"/var/lib/kiln/node/etc/containerd/certs.d\""),
            "{rendered}"
        );
        let hosts_rel = format!("etc/containerd/certs.d/{host}/hosts.toml");
        let template = std::fs::read_to_string(current.join(&hosts_rel)).unwrap();
        // Credentials are never in the bundle: only the secret placeholder is.
        assert!(
            !template.contains(PASSWORD) && !template.contains(&b64(PASSWORD)),
            "{template}"
        );
        assert!(
            template.contains(&format!("Authorization = \"Basic @kiln:registry-auth/{host}@\"")),
            "{template}"
        );
        let inspect = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("inspect")
            .arg(bundle)
            .output()
            .unwrap();
        let inspect = String::from_utf8_lossy(&inspect.stdout);
        assert!(inspect.contains(&format!("registry-auth/{host}")), "{inspect}");

        std::fs::create_dir_all(t.join("var/lib/kiln")).unwrap();
        std::os::unix::fs::symlink(&current, t.join("var/lib/kiln/current")).unwrap();
        let node_hosts = t.join("var/lib/kiln/node/etc/containerd/certs.d").join(host);
        std::fs::create_dir_all(&node_hosts).unwrap();
        std::fs::copy(
            current.join(format!("etc/containerd/certs.d/{host}/ca.crt")),
            node_hosts.join("ca.crt"),
        )
        .unwrap();
        let daemon = Containerd::start_rendered(t, &current, &rendered);
        assert_eq!(daemon.cri_status(), "ok", "{}", daemon.log_text());
        let cri = Cri::connect(&daemon.socket);
        Node {
            daemon,
            cri,
            node_hosts,
            template,
            root: t.to_path_buf(),
        }
    }

    /// What first boot writes: the template with the node's credentials, paths under the test root.
    fn render_hosts(&self, user: &str, password: &str, ca: Option<&Path>) {
        let host_dir = self.node_hosts.file_name().unwrap().to_str().unwrap();
        let values = BTreeMap::from([(
            format!("registry-auth/{host_dir}"),
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
        )]);
        let text = kiln_bundle::placeholder::substitute(&self.template, &values).unwrap();
        std::fs::write(
            self.node_hosts.join("hosts.toml"),
            kiln_testkit::containerd::redirect(&text, &self.root),
        )
        .unwrap();
        if let Some(ca) = ca {
            std::fs::copy(ca, self.node_hosts.join("ca.crt")).unwrap();
        }
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn pulls_through_the_rendered_registry_configuration(
    t: &Path,
    manifest_for: impl Fn(&Path, &str) -> std::path::PathBuf,
) {
    let registry = Registry::start(&t.join("registry"), USER, PASSWORD);
    let archive = t.join("busybox.oci.tar");
    std::fs::write(
        &archive,
        kiln_testkit::oci::busybox_image(Path::new("/bin/busybox"), "docker.io/kiln/busybox:private"),
    )
    .unwrap();
    registry.push(&archive, "team/busybox:1", &format!("{USER}:{PASSWORD}"));
    let image = format!("{}/team/busybox:1", registry.host);

    let src = t.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(&registry.ca, src.join("registry-ca.pem")).unwrap();
    let manifest = manifest_for(&src, &registry.host);
    let bundle = build_local(t, &manifest);
    let node = Node::start(&t.join("node"), &bundle, &registry.host);

    // Wrong credentials: the registry refuses, and containerd says so.
    node.render_hosts(USER, "wrong-password", None);
    let err = node.cri.pull(&image).unwrap_err();
    let err = err.message();
    assert!(
        err.contains("401 Unauthorized") || err.contains("no basic auth credentials"),
        "wrong credentials: {err}\ncontainerd:\n{}",
        node.daemon.log_text()
    );

    // A CA that did not sign the registry's certificate.
    let other = t.join("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    kiln_testkit::cluster::Pki::new(&other);
    node.render_hosts(USER, PASSWORD, Some(&other.join("ca.crt")));
    let err = node.cri.pull(&image).unwrap_err();
    let err = err.message();
    assert!(
        err.contains("x509: certificate signed by unknown authority") || err.contains("failed to verify certificate"),
        "wrong CA: {err}"
    );

    // The node's real credentials and the bundle's CA.
    node.render_hosts(USER, PASSWORD, Some(&registry.ca));
    let pulled = node
        .cri
        .pull(&image)
        .unwrap_or_else(|e| panic!("pull: {e}\n{}", node.daemon.log_text()));
    assert!(pulled.starts_with("sha256:"), "{pulled}");
    let listed = Command::new(node.daemon.bin.join("ctr"))
        .arg("--address")
        .arg(&node.daemon.socket)
        .args(["--namespace", "k8s.io", "images", "ls", "-q"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.lines().any(|l| l == image), "{image} in k8s.io: {listed}");
}

#[test]
fn debian_containerd_1_6_pulls_from_a_private_registry_through_the_rendered_hosts_toml() {
    let tmp = tempfile::tempdir().unwrap();
    pulls_through_the_rendered_registry_configuration(tmp.path(), |src, host| {
        let mut text =
            std::fs::read_to_string(kiln_testkit::workspace_root().join("manifests/debian-12.yaml")).unwrap();
        text.push_str(&registry_config(host));
        let manifest = src.join("debian-12-registry.yaml");
        std::fs::write(&manifest, text).unwrap();
        manifest
    });
}

#[test]
fn containerd_2_3_pulls_from_a_private_registry_through_the_rendered_hosts_toml() {
    let tmp = tempfile::tempdir().unwrap();
    pulls_through_the_rendered_registry_configuration(tmp.path(), |src, host| {
        kiln_testkit::k8s::node_manifest(src, "kiln-node", "1.32.13-1", &registry_config(host), false)
    });
}
