//! containerd's `config.toml`, in the schema the bundled containerd documents: version 2 for
//! containerd 1.x (`io.containerd.grpc.v1.cri`), version 3 for 2.x (`io.containerd.cri.v1.images`
//! and `io.containerd.cri.v1.runtime`; CNI `bin_dirs` from 2.1, when `bin_dir` was deprecated).
//! Manifest overrides are merged last, deterministically (tables key by key, other values replace),
//! and every version-3 result is checked against the documented schema, since no containerd 2.x
//! binary is available to load it in tests.

use kiln_bundle::layout::Layout;
use kiln_bundle::manifest::ContainerdConfig;
use toml::{Table, Value};

use super::minor;

const V2_CRI: &str = "io.containerd.grpc.v1.cri";
const V3_IMAGES: &str = "io.containerd.cri.v1.images";
const V3_RUNTIME: &str = "io.containerd.cri.v1.runtime";

/// The config schema version for a containerd version.
pub fn schema_version(containerd: &str) -> Result<u32, String> {
    match minor(containerd) {
        Some((1, m)) if m >= 3 => Ok(2),
        Some((2, _)) => Ok(3),
        _ => Err(format!(
            "containerd {containerd} is not supported (kiln renders configs for 1.3 to 2.x)"
        )),
    }
}

pub fn render(containerd: &str, cfg: &ContainerdConfig, l: &Layout) -> Result<String, String> {
    let version = schema_version(containerd)?;
    let runc_options = table([
        ("BinaryName", Value::String(format!("{}/bin/runc", l.current))),
        ("SystemdCgroup", Value::Boolean(cfg.systemd_cgroup)),
    ]);
    let runc = table([
        ("runtime_type", "io.containerd.runc.v2".into()),
        ("options", runc_options.into()),
    ]);
    let runtimes = table([("runc", runc.into())]);
    let cni_bin = format!("{}/cni/bin", l.current);
    let mut doc = table([
        ("version", Value::Integer(version.into())),
        ("root", l.containerd_root.clone().into()),
        ("state", l.containerd_state.clone().into()),
        ("grpc", table([("address", l.containerd_socket.clone().into())]).into()),
    ]);
    let plugins = if version == 2 {
        let cri = table([
            ("sandbox_image", cfg.sandbox_image.clone().into()),
            ("restrict_oom_score_adj", cfg.restrict_oom_score_adj.into()),
            (
                "containerd",
                table([
                    ("default_runtime_name", "runc".into()),
                    ("snapshotter", "overlayfs".into()),
                    ("runtimes", runtimes.into()),
                ])
                .into(),
            ),
            (
                "cni",
                table([("bin_dir", cni_bin.into()), ("conf_dir", l.cni_conf_dir.clone().into())]).into(),
            ),
        ]);
        table([(V2_CRI, cri.into())])
    } else {
        let bin = if matches!(minor(containerd), Some((2, 0))) {
            ("bin_dir", Value::String(cni_bin))
        } else {
            ("bin_dirs", Value::Array(vec![cni_bin.into()]))
        };
        let images = table([
            ("snapshotter", "overlayfs".into()),
            (
                "pinned_images",
                table([("sandbox", cfg.sandbox_image.clone().into())]).into(),
            ),
        ]);
        let runtime = table([
            ("restrict_oom_score_adj", cfg.restrict_oom_score_adj.into()),
            (
                "containerd",
                table([("default_runtime_name", "runc".into()), ("runtimes", runtimes.into())]).into(),
            ),
            ("cni", table([bin, ("conf_dir", l.cni_conf_dir.clone().into())]).into()),
        ]);
        table([(V3_IMAGES, images.into()), (V3_RUNTIME, runtime.into())])
    };
    doc.insert("plugins".into(), plugins.into());

    for (key, value) in &cfg.overrides {
        let v = json_to_toml(value).map_err(|e| format!("overrides.{key}: {e}"))?;
        merge(&mut doc, key, v);
    }
    if doc.get("version").and_then(Value::as_integer) != Some(version.into()) {
        return Err(format!(
            "overrides must not change `version` (containerd {containerd} uses version {version})"
        ));
    }
    if version == 3 {
        check_v3(&doc).map_err(|errs| errs.join("; "))?;
    }
    let body = toml::to_string(&doc).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Rendered by kiln for containerd {containerd} (config version {version}).\n{body}"
    ))
}

fn table<const N: usize>(entries: [(&str, Value); N]) -> Table {
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn merge(into: &mut Table, key: &str, value: Value) {
    match (into.get_mut(key), value) {
        (Some(Value::Table(existing)), Value::Table(new)) => {
            for (k, v) in new {
                merge(existing, &k, v);
            }
        }
        (_, v) => {
            into.insert(key.to_string(), v);
        }
    }
}

fn json_to_toml(v: &serde_json::Value) -> Result<Value, String> {
    Ok(match v {
        serde_json::Value::Null => return Err("null has no TOML form".into()),
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64().ok_or("number out of range")?),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_to_toml).collect::<Result<_, _>>()?),
        serde_json::Value::Object(o) => Value::Table(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), json_to_toml(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    StrList,
    Table,
}

fn ty_ok(ty: Ty, v: &Value) -> bool {
    match ty {
        Ty::Str => v.is_str(),
        Ty::Int => v.is_integer(),
        Ty::Bool => v.is_bool(),
        Ty::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_str)),
        Ty::Table => v.is_table(),
    }
}

const TOP: &[(&str, Ty)] = &[
    ("version", Ty::Int),
    ("root", Ty::Str),
    ("state", Ty::Str),
    ("temp", Ty::Str),
    ("plugin_dir", Ty::Str),
    ("imports", Ty::StrList),
    ("disabled_plugins", Ty::StrList),
    ("required_plugins", Ty::StrList),
    ("oom_score", Ty::Int),
    ("grpc", Ty::Table),
    ("ttrpc", Ty::Table),
    ("debug", Ty::Table),
    ("metrics", Ty::Table),
    ("cgroup", Ty::Table),
    ("timeouts", Ty::Table),
    ("plugins", Ty::Table),
    ("proxy_plugins", Ty::Table),
    ("stream_processors", Ty::Table),
];
const GRPC: &[(&str, Ty)] = &[
    ("address", Ty::Str),
    ("tcp_address", Ty::Str),
    ("tcp_tls_ca", Ty::Str),
    ("tcp_tls_cert", Ty::Str),
    ("tcp_tls_key", Ty::Str),
    ("uid", Ty::Int),
    ("gid", Ty::Int),
    ("max_recv_message_size", Ty::Int),
    ("max_send_message_size", Ty::Int),
];
const IMAGES: &[(&str, Ty)] = &[
    ("snapshotter", Ty::Str),
    ("disable_snapshot_annotations", Ty::Bool),
    ("discard_unpacked_layers", Ty::Bool),
    ("max_concurrent_downloads", Ty::Int),
    ("concurrent_layer_fetch_buffer", Ty::Int),
    ("image_pull_progress_timeout", Ty::Str),
    ("image_pull_with_sync_fs", Ty::Bool),
    ("stats_collect_period", Ty::Int),
    ("use_local_image_pull", Ty::Bool),
    ("pinned_images", Ty::Table),
    ("registry", Ty::Table),
    ("image_decryption", Ty::Table),
    ("runtime_platforms", Ty::Table),
];
const RUNTIME: &[(&str, Ty)] = &[
    ("enable_selinux", Ty::Bool),
    ("selinux_category_range", Ty::Int),
    ("max_container_log_line_size", Ty::Int),
    ("disable_cgroup", Ty::Bool),
    ("disable_apparmor", Ty::Bool),
    ("restrict_oom_score_adj", Ty::Bool),
    ("disable_proc_mount", Ty::Bool),
    ("unset_seccomp_profile", Ty::Str),
    ("tolerate_missing_hugetlb_controller", Ty::Bool),
    ("disable_hugetlb_controller", Ty::Bool),
    ("device_ownership_from_security_context", Ty::Bool),
    ("ignore_image_defined_volumes", Ty::Bool),
    ("netns_mounts_under_state_dir", Ty::Bool),
    ("enable_unprivileged_ports", Ty::Bool),
    ("enable_unprivileged_icmp", Ty::Bool),
    ("enable_cdi", Ty::Bool),
    ("cdi_spec_dirs", Ty::StrList),
    ("drain_exec_sync_io_timeout", Ty::Str),
    ("ignore_deprecation_warnings", Ty::StrList),
    ("containerd", Ty::Table),
    ("cni", Ty::Table),
];
const RUNTIME_CONTAINERD: &[(&str, Ty)] = &[
    ("default_runtime_name", Ty::Str),
    ("ignore_blockio_not_enabled_errors", Ty::Bool),
    ("ignore_rdt_not_enabled_errors", Ty::Bool),
    ("runtimes", Ty::Table),
];
const RUNTIME_CLASS: &[(&str, Ty)] = &[
    ("runtime_type", Ty::Str),
    ("runtime_path", Ty::Str),
    ("pod_annotations", Ty::StrList),
    ("container_annotations", Ty::StrList),
    ("privileged_without_host_devices", Ty::Bool),
    ("privileged_without_host_devices_all_devices_allowed", Ty::Bool),
    ("base_runtime_spec", Ty::Str),
    ("cni_conf_dir", Ty::Str),
    ("cni_max_conf_num", Ty::Int),
    ("snapshotter", Ty::Str),
    ("sandboxer", Ty::Str),
    ("io_type", Ty::Str),
    ("options", Ty::Table),
];
const RUNC_OPTIONS: &[(&str, Ty)] = &[
    ("BinaryName", Ty::Str),
    ("CriuImagePath", Ty::Str),
    ("CriuWorkPath", Ty::Str),
    ("IoGid", Ty::Int),
    ("IoUid", Ty::Int),
    ("NoNewKeyring", Ty::Bool),
    ("Root", Ty::Str),
    ("ShimCgroup", Ty::Str),
    ("SystemdCgroup", Ty::Bool),
];
const CNI: &[(&str, Ty)] = &[
    ("bin_dir", Ty::Str),
    ("bin_dirs", Ty::StrList),
    ("conf_dir", Ty::Str),
    ("max_conf_num", Ty::Int),
    ("setup_serially", Ty::Bool),
    ("conf_template", Ty::Str),
    ("ip_pref", Ty::Str),
    ("use_internal_loopback", Ty::Bool),
];
const GRPC_CRI_V3: &[(&str, Ty)] = &[
    ("disable_tcp_service", Ty::Bool),
    ("stream_server_address", Ty::Str),
    ("stream_server_port", Ty::Str),
    ("stream_idle_timeout", Ty::Str),
    ("enable_tls_streaming", Ty::Bool),
    ("x509_key_pair_streaming", Ty::Table),
];
const PINNED: &[(&str, Ty)] = &[("sandbox", Ty::Str)];

fn check_keys(t: &Table, at: &str, schema: &[(&str, Ty)], errs: &mut Vec<String>) {
    for (k, v) in t {
        match schema.iter().find(|(name, _)| name == k) {
            None => errs.push(format!("`{at}.{k}` is not a documented key of the version 3 schema")),
            Some((_, ty)) if !ty_ok(*ty, v) => errs.push(format!("`{at}.{k}` has the wrong type")),
            _ => {}
        }
    }
}

fn sub<'a>(t: &'a Table, key: &str) -> Option<&'a Table> {
    t.get(key).and_then(Value::as_table)
}

/// Check a version-3 config against the schema containerd 2.x documents (docs/cri/config.md and
/// the containerd-config.toml man page) for the sections kiln renders or users override: unknown
/// keys and wrong types are errors, and so are version-2 CRI tables, which version 3 ignores.
pub fn check_v3(doc: &Table) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    check_keys(doc, "", TOP, &mut errs);
    if let Some(g) = sub(doc, "grpc") {
        check_keys(g, "grpc", GRPC, &mut errs);
    }
    if let Some(plugins) = sub(doc, "plugins") {
        if let Some(images) = sub(plugins, V3_IMAGES) {
            let at = format!("plugins.\"{V3_IMAGES}\"");
            check_keys(images, &at, IMAGES, &mut errs);
            if let Some(p) = sub(images, "pinned_images") {
                check_keys(p, &format!("{at}.pinned_images"), PINNED, &mut errs);
            }
        }
        if let Some(rt) = sub(plugins, V3_RUNTIME) {
            let at = format!("plugins.\"{V3_RUNTIME}\"");
            check_keys(rt, &at, RUNTIME, &mut errs);
            if let Some(c) = sub(rt, "containerd") {
                check_keys(c, &format!("{at}.containerd"), RUNTIME_CONTAINERD, &mut errs);
                for (name, class) in sub(c, "runtimes").into_iter().flatten() {
                    let cat = format!("{at}.containerd.runtimes.{name}");
                    let Some(class) = class.as_table() else {
                        errs.push(format!("`{cat}` must be a table"));
                        continue;
                    };
                    check_keys(class, &cat, RUNTIME_CLASS, &mut errs);
                    let runc = class.get("runtime_type").and_then(Value::as_str) == Some("io.containerd.runc.v2");
                    if let (true, Some(o)) = (runc, sub(class, "options")) {
                        check_keys(o, &format!("{cat}.options"), RUNC_OPTIONS, &mut errs);
                    }
                }
            }
            if let Some(c) = sub(rt, "cni") {
                check_keys(c, &format!("{at}.cni"), CNI, &mut errs);
            }
        }
        if let Some(cri) = sub(plugins, V2_CRI) {
            check_keys(cri, &format!("plugins.\"{V2_CRI}\""), GRPC_CRI_V3, &mut errs);
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse(s: &str) -> Table {
        let body: String = s.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
        body.parse().unwrap()
    }

    #[test]
    fn schema_follows_the_containerd_version() {
        assert_eq!(schema_version("1.6.20").unwrap(), 2);
        assert_eq!(schema_version("1.7.27").unwrap(), 2);
        assert_eq!(schema_version("2.3.4").unwrap(), 3);
        assert!(schema_version("1.2.0").is_err());
        assert!(schema_version("3.0.0").is_err());
    }

    #[test]
    fn version_2_for_containerd_1_6() {
        let t = parse(&render("1.6.20", &ContainerdConfig::default(), &Layout::default()).unwrap());
        assert_eq!(t["version"].as_integer(), Some(2));
        let cri = &t["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some("registry.k8s.io/pause:3.10"));
        assert_eq!(
            cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true)
        );
        assert_eq!(
            cri["containerd"]["runtimes"]["runc"]["options"]["BinaryName"].as_str(),
            Some("/var/lib/kiln/current/bin/runc")
        );
        assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/var/lib/kiln/current/cni/bin"));
        assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/etc/cni/net.d"));
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(false));
        assert_eq!(t["grpc"]["address"].as_str(), Some("/run/containerd/containerd.sock"));
    }

    #[test]
    fn version_3_for_containerd_2_and_bin_dirs_from_2_1() {
        let cfg = ContainerdConfig {
            restrict_oom_score_adj: true,
            ..Default::default()
        };
        let text = render("2.3.4", &cfg, &Layout::default()).unwrap();
        let t = parse(&text);
        assert_eq!(t["version"].as_integer(), Some(3));
        let p = &t["plugins"];
        assert_eq!(
            p["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some("registry.k8s.io/pause:3.10")
        );
        let rt = &p["io.containerd.cri.v1.runtime"];
        assert_eq!(rt["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(
            rt["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true)
        );
        assert_eq!(
            rt["cni"]["bin_dirs"].as_array().unwrap()[0].as_str(),
            Some("/var/lib/kiln/current/cni/bin")
        );
        assert!(p.get("io.containerd.grpc.v1.cri").is_none());
        check_v3(&t).unwrap();
        let t20 = parse(&render("2.0.5", &cfg, &Layout::default()).unwrap());
        assert!(t20["plugins"]["io.containerd.cri.v1.runtime"]["cni"]["bin_dir"].is_str());
        check_v3(&t20).unwrap();
    }

    #[test]
    fn overrides_merge_deterministically() {
        let mut overrides = BTreeMap::new();
        overrides.insert("plugins".to_string(), serde_json::json!({"io.containerd.cri.v1.images": {"max_concurrent_downloads": 5, "registry": {"config_path": "/etc/containerd/certs.d"}}}));
        overrides.insert("oom_score".to_string(), serde_json::json!(-999));
        let cfg = ContainerdConfig {
            overrides,
            ..Default::default()
        };
        let a = render("2.3.4", &cfg, &Layout::default()).unwrap();
        assert_eq!(a, render("2.3.4", &cfg, &Layout::default()).unwrap());
        let t = parse(&a);
        let images = &t["plugins"]["io.containerd.cri.v1.images"];
        assert_eq!(images["max_concurrent_downloads"].as_integer(), Some(5));
        assert_eq!(
            images["pinned_images"]["sandbox"].as_str(),
            Some("registry.k8s.io/pause:3.10"),
            "merge keeps siblings"
        );
        assert_eq!(t["oom_score"].as_integer(), Some(-999));
    }

    #[test]
    fn v3_schema_check_catches_v2_keys_and_typos() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "plugins".to_string(),
            serde_json::json!({"io.containerd.grpc.v1.cri": {"sandbox_image": "x"}}),
        );
        let e = render(
            "2.3.4",
            &ContainerdConfig {
                overrides,
                ..Default::default()
            },
            &Layout::default(),
        )
        .unwrap_err();
        assert!(
            e.contains("`plugins.\"io.containerd.grpc.v1.cri\".sandbox_image` is not a documented key"),
            "{e}"
        );
        let mut overrides = BTreeMap::new();
        overrides.insert("plugins".to_string(), serde_json::json!({"io.containerd.cri.v1.runtime": {"containerd": {"runtimes": {"runc": {"options": {"SystemdCgroups": true}}}}}}));
        let e = render(
            "2.3.4",
            &ContainerdConfig {
                overrides,
                ..Default::default()
            },
            &Layout::default(),
        )
        .unwrap_err();
        assert!(e.contains("SystemdCgroups"), "{e}");
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "plugins".to_string(),
            serde_json::json!({"io.containerd.cri.v1.runtime": {"enable_cdi": "yes"}}),
        );
        let e = render(
            "2.3.4",
            &ContainerdConfig {
                overrides,
                ..Default::default()
            },
            &Layout::default(),
        )
        .unwrap_err();
        assert!(e.contains("enable_cdi` has the wrong type"), "{e}");
        let mut overrides = BTreeMap::new();
        overrides.insert("version".to_string(), serde_json::json!(2));
        assert!(render(
            "2.3.4",
            &ContainerdConfig {
                overrides,
                ..Default::default()
            },
            &Layout::default()
        )
        .unwrap_err()
        .contains("must not change `version`"));
    }
}
