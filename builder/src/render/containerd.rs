//! containerd's `config.toml`, in the schema the bundled containerd documents: version 2 for
//! containerd 1.x (`io.containerd.grpc.v1.cri`), version 3 for 2.0 to 2.2
//! (`io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime`; CNI `bin_dirs` from 2.1,
//! when `bin_dir` was deprecated), version 4 from 2.3 (the same CRI tables; the socket moves from
//! the deprecated `[grpc]` and `[ttrpc]` tables to the `io.containerd.server.v1.grpc` and
//! `io.containerd.server.v1.ttrpc` plugins). containerd migrates an older version at every start and
//! says so in its log, so each release gets the version it documents.
//! Manifest overrides are merged last, deterministically (tables key by key, other values replace),
//! and version 3 and 4 results are checked against the keys containerd 2.x knows, so a typo in an
//! override fails the build rather than being ignored on the node. The proof that containerd 2.3.4
//! loads the result without a migration or a deprecation is a test with the real binary
//! (`builder/tests/containerd2_real.rs`).

use kiln_bundle::layout::Layout;
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use kiln_bundle::manifest::{ContainerdConfig, Runtime, RUNC_SHIM};
use toml::{Table, Value};

use super::minor;

const V2_CRI: &str = "io.containerd.grpc.v1.cri";
const V3_IMAGES: &str = "io.containerd.cri.v1.images";
const V3_RUNTIME: &str = "io.containerd.cri.v1.runtime";
const V4_GRPC: &str = "io.containerd.server.v1.grpc";
const V4_TTRPC: &str = "io.containerd.server.v1.ttrpc";

/// The config schema version for a containerd version.
pub fn schema_version(containerd: &str) -> Result<u32> {
    match minor(containerd) {
        Some((1, m)) if m >= 3 => Ok(2),
        Some((2, m)) if m <= 2 => Ok(3),
        Some((2, _)) => Ok(4),
        _ => Err(anyhow!(
            "containerd {containerd} is not supported (kiln renders configs for 1.3 to 2.x)"
        )),
    }
}

pub fn render(
    containerd: &str,
    cfg: &ContainerdConfig,
    extra: &BTreeMap<String, Runtime>,
    l: &Layout,
) -> Result<String> {
    let version = schema_version(containerd)?;
    let runc_options = table([
        ("BinaryName", Value::String(format!("{}/bin/runc", l.current))),
        ("SystemdCgroup", Value::Boolean(cfg.systemd_cgroup)),
    ]);
    let runc = table([
        ("runtime_type", "io.containerd.runc.v2".into()),
        ("options", runc_options.into()),
    ]);
    let mut runtimes = table([("runc", runc.into())]);
    // Extra runtimes as handlers of the same name (the RuntimeClass's `handler`).
    for (name, r) in extra {
        let mut options = Table::new();
        if let Some(binary) = &r.binary {
            if r.runtime_type == RUNC_SHIM {
                options.insert("BinaryName".into(), format!("{}/{binary}", l.current).into());
                options.insert("SystemdCgroup".into(), cfg.systemd_cgroup.into());
            }
        }
        for (k, v) in &r.options {
            options.insert(
                k.clone(),
                json_to_toml(v).map_err(|e| anyhow!("runtimes.{name}.options.{k}: {e}"))?,
            );
        }
        let mut handler = table([("runtime_type", r.runtime_type.clone().into())]);
        if let (Some(binary), false) = (&r.binary, r.runtime_type == RUNC_SHIM) {
            // A runtime with a shim of its own: containerd runs that shim binary.
            handler.insert("runtime_path".into(), format!("{}/{binary}", l.current).into());
        }
        if !options.is_empty() {
            handler.insert("options".into(), options.into());
        }
        runtimes.insert(name.clone(), handler.into());
    }
    let cni_bin = format!("{}/cni/bin", l.current);
    let registry = table([("config_path", super::registries::config_path(l).into())]);
    let mut doc = table([
        ("version", Value::Integer(version.into())),
        ("root", l.containerd_root.clone().into()),
        ("state", l.containerd_state.clone().into()),
    ]);
    if version < 4 {
        doc.insert(
            "grpc".into(),
            table([("address", l.containerd_socket.clone().into())]).into(),
        );
    }
    let mut plugins = if version == 2 {
        let mut cri = table([
            ("sandbox_image", cfg.sandbox_image.clone().into()),
            ("restrict_oom_score_adj", cfg.restrict_oom_score_adj.into()),
            (
                "containerd",
                table([
                    ("default_runtime_name", "runc".into()),
                    ("snapshotter", cfg.snapshotter.clone().into()),
                    ("runtimes", runtimes.into()),
                ])
                .into(),
            ),
            (
                "cni",
                table([("bin_dir", cni_bin.into()), ("conf_dir", l.cni_conf_dir.clone().into())]).into(),
            ),
        ]);
        if !cfg.registries.is_empty() {
            cri.insert("registry".into(), registry.into());
        }
        table([(V2_CRI, cri.into())])
    } else {
        let bin = if matches!(minor(containerd), Some((2, 0))) {
            ("bin_dir", Value::String(cni_bin))
        } else {
            ("bin_dirs", Value::Array(vec![cni_bin.into()]))
        };
        let mut images = table([
            ("snapshotter", cfg.snapshotter.clone().into()),
            (
                "pinned_images",
                table([("sandbox", cfg.sandbox_image.clone().into())]).into(),
            ),
        ]);
        if !cfg.registries.is_empty() {
            images.insert("registry".into(), registry.clone().into());
        }
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
    if version >= 4 {
        plugins.insert(
            V4_GRPC.into(),
            table([("address", l.containerd_socket.clone().into())]).into(),
        );
        plugins.insert(
            V4_TTRPC.into(),
            table([("address", format!("{}.ttrpc", l.containerd_socket).into())]).into(),
        );
    }
    doc.insert("plugins".into(), plugins.into());

    for (key, value) in &cfg.overrides {
        let v = json_to_toml(value).map_err(|e| anyhow!("overrides.{key}: {e}"))?;
        merge(&mut doc, key, v);
    }
    if doc.get("version").and_then(Value::as_integer) != Some(version.into()) {
        bail!("overrides must not change `version` (containerd {containerd} uses version {version})");
    }
    if version >= 3 {
        check_schema(&doc, version).map_err(|errs| anyhow!("{}", errs.join("; ")))?;
    }
    let body = toml::to_string(&doc)?;
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

fn json_to_toml(v: &serde_json::Value) -> Result<Value> {
    Ok(match v {
        serde_json::Value::Null => bail!("null has no TOML form"),
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64().ok_or_else(|| anyhow!("number out of range"))?),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_to_toml).collect::<Result<_, _>>()?),
        serde_json::Value::Object(o) => Value::Table(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), json_to_toml(v)?)))
                .collect::<Result<_>>()?,
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
    ("stats_collect_period", Ty::Str),
    ("stats_retention_period", Ty::Str),
    ("enable_criu", Ty::Bool),
    ("enable_experimental_restore_via_create", Ty::Bool),
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
    ("cgroup_writable", Ty::Bool),
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
/// Top-level tables version 4 replaces with server plugins.
const DEPRECATED_IN_V4: &[(&str, &str)] = &[
    ("grpc", V4_GRPC),
    ("ttrpc", V4_TTRPC),
    ("debug", "io.containerd.server.v1.debug"),
    ("metrics", "io.containerd.server.v1.metrics"),
];
const SERVER_GRPC: &[(&str, Ty)] = &[
    ("address", Ty::Str),
    ("uid", Ty::Int),
    ("gid", Ty::Int),
    ("max_recv_message_size", Ty::Int),
    ("max_send_message_size", Ty::Int),
];
const SERVER_TTRPC: &[(&str, Ty)] = &[("address", Ty::Str), ("uid", Ty::Int), ("gid", Ty::Int)];

fn check_keys(t: &Table, at: &str, schema: &[(&str, Ty)], version: u32, errs: &mut Vec<String>) {
    for (k, v) in t {
        match schema.iter().find(|(name, _)| name == k) {
            None => errs.push(format!(
                "`{at}.{k}` is not a documented key of the version {version} schema"
            )),
            Some((_, ty)) if !ty_ok(*ty, v) => errs.push(format!("`{at}.{k}` has the wrong type")),
            _ => {}
        }
    }
}

fn sub<'a>(t: &'a Table, key: &str) -> Option<&'a Table> {
    t.get(key).and_then(Value::as_table)
}

/// Check a version-3 or version-4 config against the keys containerd 2.x knows (docs/cri/config.md,
/// the containerd-config.toml man page, and `containerd config default` of 2.3.4) for the sections
/// kiln renders or users override: unknown keys and wrong types are errors, and so are version-2
/// CRI tables, which version 3 ignores, and in version 4 the top-level tables it deprecates.
pub fn check_schema(doc: &Table, version: u32) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    let v = version;
    check_keys(doc, "", TOP, v, &mut errs);
    if let Some(g) = sub(doc, "grpc") {
        check_keys(g, "grpc", GRPC, v, &mut errs);
    }
    if version >= 4 {
        for (old, plugin) in DEPRECATED_IN_V4 {
            if doc.contains_key(*old) {
                errs.push(format!(
                    "`[{old}]` is deprecated in config version {version}: use `[plugins.\"{plugin}\"]`"
                ));
            }
        }
    }
    if let Some(plugins) = sub(doc, "plugins") {
        if let Some(g) = sub(plugins, V4_GRPC) {
            check_keys(g, &format!("plugins.\"{V4_GRPC}\""), SERVER_GRPC, v, &mut errs);
        }
        if let Some(t) = sub(plugins, V4_TTRPC) {
            check_keys(t, &format!("plugins.\"{V4_TTRPC}\""), SERVER_TTRPC, v, &mut errs);
        }
        if let Some(images) = sub(plugins, V3_IMAGES) {
            let at = format!("plugins.\"{V3_IMAGES}\"");
            check_keys(images, &at, IMAGES, v, &mut errs);
            if let Some(p) = sub(images, "pinned_images") {
                check_keys(p, &format!("{at}.pinned_images"), PINNED, v, &mut errs);
            }
        }
        if let Some(rt) = sub(plugins, V3_RUNTIME) {
            let at = format!("plugins.\"{V3_RUNTIME}\"");
            check_keys(rt, &at, RUNTIME, v, &mut errs);
            if let Some(c) = sub(rt, "containerd") {
                check_keys(c, &format!("{at}.containerd"), RUNTIME_CONTAINERD, v, &mut errs);
                for (name, class) in sub(c, "runtimes").into_iter().flatten() {
                    let cat = format!("{at}.containerd.runtimes.{name}");
                    let Some(class) = class.as_table() else {
                        errs.push(format!("`{cat}` must be a table"));
                        continue;
                    };
                    check_keys(class, &cat, RUNTIME_CLASS, v, &mut errs);
                    let runc = class.get("runtime_type").and_then(Value::as_str) == Some("io.containerd.runc.v2");
                    if let (true, Some(o)) = (runc, sub(class, "options")) {
                        check_keys(o, &format!("{cat}.options"), RUNC_OPTIONS, v, &mut errs);
                    }
                }
            }
            if let Some(c) = sub(rt, "cni") {
                check_keys(c, &format!("{at}.cni"), CNI, v, &mut errs);
            }
        }
        if let Some(cri) = sub(plugins, V2_CRI) {
            check_keys(cri, &format!("plugins.\"{V2_CRI}\""), GRPC_CRI_V3, v, &mut errs);
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

    #[test]
    fn extra_runtimes_are_handlers_checked_against_the_schema() {
        let crun: Runtime = serde_json::from_value(serde_json::json!({
            "version": "1.8.1", "source": {"apt": {"package": "crun"}},
            "install": [{"from": "usr/bin/crun", "to": "bin/crun"}], "binary": "bin/crun"
        }))
        .unwrap();
        let runsc: Runtime = serde_json::from_value(serde_json::json!({
            "version": "20250512", "source": {"apt": {"package": "runsc"}},
            "install": [{"from": "usr/bin/containerd-shim-runsc-v1", "to": "bin/containerd-shim-runsc-v1"}],
            "runtimeType": "io.containerd.runsc.v1", "binary": "bin/containerd-shim-runsc-v1",
            "options": {"TypeUrl": "io.containerd.runsc.v1.options"}
        }))
        .unwrap();
        let extra = BTreeMap::from([("crun".to_string(), crun), ("gvisor".to_string(), runsc)]);
        for version in ["1.6.20", "2.3.4"] {
            let text = render(version, &ContainerdConfig::default(), &extra, &Layout::default()).unwrap();
            let t = parse(&text);
            let runtimes = if version == "1.6.20" {
                &t["plugins"][V2_CRI]["containerd"]["runtimes"]
            } else {
                &t["plugins"][V3_RUNTIME]["containerd"]["runtimes"]
            };
            assert_eq!(runtimes["crun"]["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
            assert_eq!(
                runtimes["crun"]["options"]["BinaryName"].as_str(),
                Some("/var/lib/kiln/current/bin/crun")
            );
            assert_eq!(
                runtimes["gvisor"]["runtime_type"].as_str(),
                Some("io.containerd.runsc.v1")
            );
            assert_eq!(
                runtimes["gvisor"]["runtime_path"].as_str(),
                Some("/var/lib/kiln/current/bin/containerd-shim-runsc-v1")
            );
            assert_eq!(
                runtimes["gvisor"]["options"]["TypeUrl"].as_str(),
                Some("io.containerd.runsc.v1.options")
            );
        }
    }

    fn parse(s: &str) -> Table {
        let body: String = s.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
        body.parse().unwrap()
    }

    #[test]
    fn schema_follows_the_containerd_version() {
        assert_eq!(schema_version("1.6.20").unwrap(), 2);
        assert_eq!(schema_version("1.7.27").unwrap(), 2);
        assert_eq!(schema_version("2.0.5").unwrap(), 3);
        assert_eq!(schema_version("2.2.1").unwrap(), 3);
        assert_eq!(schema_version("2.3.4").unwrap(), 4);
        assert!(schema_version("1.2.0").is_err());
        assert!(schema_version("3.0.0").is_err());
    }

    #[test]
    fn version_3_for_containerd_2_0_to_2_2_and_bin_dirs_from_2_1() {
        let cfg = ContainerdConfig {
            restrict_oom_score_adj: true,
            ..Default::default()
        };
        let t = parse(&render("2.2.1", &cfg, &BTreeMap::new(), &Layout::default()).unwrap());
        assert_eq!(t["version"].as_integer(), Some(3));
        assert_eq!(t["grpc"]["address"].as_str(), Some("/run/containerd/containerd.sock"));
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
        assert!(p.get("io.containerd.server.v1.grpc").is_none());
        check_schema(&t, 3).unwrap();
        let t20 = parse(&render("2.0.5", &cfg, &BTreeMap::new(), &Layout::default()).unwrap());
        assert!(t20["plugins"]["io.containerd.cri.v1.runtime"]["cni"]["bin_dir"].is_str());
        check_schema(&t20, 3).unwrap();
    }

    #[test]
    fn version_4_for_containerd_2_3_moves_the_socket_to_server_plugins() {
        let text = render(
            "2.3.4",
            &ContainerdConfig::default(),
            &BTreeMap::new(),
            &Layout::default(),
        )
        .unwrap();
        assert!(
            text.starts_with("# Rendered by kiln for containerd 2.3.4 (config version 4).\nversion = 4\n"),
            "{text}"
        );
        let t = parse(&text);
        assert!(t.get("grpc").is_none(), "[grpc] is deprecated in version 4: {text}");
        let p = &t["plugins"];
        assert_eq!(
            p["io.containerd.server.v1.grpc"]["address"].as_str(),
            Some("/run/containerd/containerd.sock")
        );
        assert_eq!(
            p["io.containerd.server.v1.ttrpc"]["address"].as_str(),
            Some("/run/containerd/containerd.sock.ttrpc")
        );
        assert!(p["io.containerd.cri.v1.runtime"]["cni"]["bin_dirs"].is_array());
        check_schema(&t, 4).unwrap();
        // The deprecated table, put back by an override, is refused with its replacement named.
        let mut overrides = std::collections::BTreeMap::new();
        overrides.insert("debug".to_string(), serde_json::json!({"level": "debug"}));
        let e = render(
            "2.3.4",
            &ContainerdConfig {
                overrides,
                ..Default::default()
            },
            &BTreeMap::new(),
            &Layout::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "`[debug]` is deprecated in config version 4: use `[plugins.\"io.containerd.server.v1.debug\"]`"
            ),
            "{e}"
        );
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
        let a = render("2.3.4", &cfg, &BTreeMap::new(), &Layout::default()).unwrap();
        assert_eq!(a, render("2.3.4", &cfg, &BTreeMap::new(), &Layout::default()).unwrap());
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
            &BTreeMap::new(),
            &Layout::default(),
        )
        .unwrap_err()
        .to_string();
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
            &BTreeMap::new(),
            &Layout::default(),
        )
        .unwrap_err()
        .to_string();
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
            &BTreeMap::new(),
            &Layout::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("enable_cdi` has the wrong type"), "{e}");
        let mut overrides = BTreeMap::new();
        overrides.insert("version".to_string(), serde_json::json!(2));
        assert!(render(
            "2.3.4",
            &ContainerdConfig {
                overrides,
                ..Default::default()
            },
            &BTreeMap::new(),
            &Layout::default()
        )
        .unwrap_err()
        .to_string()
        .contains("must not change `version`"));
    }
}
