//! Node-specific placeholders: `@kiln:NAME@` in a bundle's rendered configuration, substituted at
//! first boot. Deliberately tiny: a fixed set of names, plain text replacement, no expressions, no
//! code execution. Every placeholder a bundle uses is listed in its index with the files it is in.

use std::collections::{BTreeMap, BTreeSet};

/// `(name, secret, meaning)` of every placeholder kiln knows.
pub const KNOWN: &[(&str, bool, &str)] = &[
    ("node-ip", false, "the node's IP address"),
    ("hostname", false, "the node's host name"),
    (
        "node-labels",
        false,
        "comma-separated key=value labels, including kiln.dev/bundle-version and kiln.dev/bundle-digest",
    ),
    ("node-taints", false, "comma-separated key=value:Effect taints"),
    (
        "register-with-taints",
        false,
        "the node's taints as a YAML flow list of {key, value, effect} (KubeletConfiguration registerWithTaints)",
    ),
    ("cluster-dns", false, "the cluster DNS service IP"),
    ("api-server", false, "the API server URL"),
    ("cluster-ca", false, "the cluster CA certificate (PEM)"),
    ("bootstrap-token", true, "the kubelet's bootstrap token"),
    (
        "kube-proxy-token",
        true,
        "kube-proxy's bearer token (a ServiceAccount bound to system:node-proxier)",
    ),
];

/// Placeholders named `PREFIX<host>`: one per registry that needs credentials. Secret.
pub const REGISTRY_AUTH: &str = "registry-auth/";

const OPEN: &str = "@kiln:";

/// The registry host of a `registry-auth/<host>` placeholder name.
pub fn registry_auth_host(name: &str) -> Option<&str> {
    name.strip_prefix(REGISTRY_AUTH).filter(|h| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
    })
}

pub fn is_known(name: &str) -> bool {
    KNOWN.iter().any(|(n, _, _)| *n == name) || registry_auth_host(name).is_some()
}

pub fn is_secret(name: &str) -> bool {
    KNOWN.iter().any(|(n, s, _)| *n == name && *s) || registry_auth_host(name).is_some()
}

/// `@kiln:NAME@` for a known name.
pub fn token(name: &str) -> String {
    debug_assert!(is_known(name), "unknown placeholder {name}");
    format!("{OPEN}{name}@")
}

/// What is wrong with a placeholder in a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    /// `@kiln:` with no closing `@`.
    #[error("unterminated `@kiln:` placeholder")]
    Unterminated,
    /// `@kiln:NAME@` for a name kiln does not know (the name cut to 40 characters).
    #[error("unknown placeholder `@kiln:{0}@`")]
    Unknown(String),
    /// A known placeholder the node has no value for.
    #[error("no value for placeholder `{0}`")]
    NoValue(String),
}

/// The placeholder names used in `text`. An `@kiln:` that does not form a known placeholder is an
/// error, so a typo cannot slip through to a node.
pub fn scan(text: &str) -> Result<BTreeSet<String>, PlaceholderError> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        let end = after.find('@').ok_or(PlaceholderError::Unterminated)?;
        let name = &after[..end];
        if !is_known(name) {
            return Err(PlaceholderError::Unknown(name.chars().take(40).collect()));
        }
        out.insert(name.to_string());
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// Replace every placeholder in `text` with its value. A placeholder without a value is an error
/// naming it; values are inserted as they are and never re-scanned.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(OPEN) {
        out.push_str(&rest[..i]);
        let after = &rest[i + OPEN.len()..];
        let end = after.find('@').ok_or(PlaceholderError::Unterminated)?;
        let name = &after[..end];
        let value = values
            .get(name)
            .ok_or_else(|| PlaceholderError::NoValue(name.to_string()))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_and_substitutes() {
        let t = "--node-ip=@kiln:node-ip@ --hostname-override=@kiln:hostname@ x@y";
        assert_eq!(
            scan(t).unwrap().into_iter().collect::<Vec<_>>(),
            ["hostname", "node-ip"]
        );
        let values = BTreeMap::from([
            ("node-ip".to_string(), "10.0.0.5".to_string()),
            ("hostname".to_string(), "@kiln:node-ip@".to_string()),
        ]);
        // A value that looks like a placeholder is inserted literally, not expanded again.
        assert_eq!(
            substitute(t, &values).unwrap(),
            "--node-ip=10.0.0.5 --hostname-override=@kiln:node-ip@ x@y"
        );
    }

    #[test]
    fn unknown_missing_and_unterminated_are_errors() {
        assert!(scan("@kiln:nodeip@")
            .unwrap_err()
            .to_string()
            .contains("unknown placeholder `@kiln:nodeip@`"));
        assert_eq!(scan("@kiln:node-ip").unwrap_err(), PlaceholderError::Unterminated);
        assert_eq!(
            substitute("@kiln:node-ip@", &BTreeMap::new()).unwrap_err().to_string(),
            "no value for placeholder `node-ip`"
        );
        assert!(is_secret("bootstrap-token") && !is_secret("node-ip"));
        assert!(is_secret("registry-auth/registry.example.com:5000"));
        assert!(scan("@kiln:registry-auth/@").is_err());
        assert!(scan("@kiln:registry-auth/a b@").is_err());
    }
}
