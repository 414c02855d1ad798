//! Path safety. Every path that comes from outside (an archive member, an index entry, a manifest's
//! install target, a symlink target) goes through here before anything is written.

use std::fmt;

/// Longest relative path kiln accepts, well under PATH_MAX.
pub const MAX_PATH_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("`{0}` is absolute")]
    Absolute(String),
    #[error("`{0}` contains `..`")]
    DotDot(String),
    #[error("`{0}` is not normalized (empty or `.` component)")]
    NotNormal(String),
    #[error("`{0}` contains a NUL byte")]
    Nul(String),
    #[error("`{0}` is longer than {MAX_PATH_LEN} bytes")]
    TooLong(String),
    #[error("link `{link}` -> `{target}` leaves the root")]
    LinkEscapes { link: String, target: String },
}

/// Check that `path` is a normalized relative path that stays inside its root: no leading `/`,
/// no `..`, `.` or empty components, no NUL.
pub fn check_relative(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(path.chars().take(64).collect()));
    }
    if path.contains('\0') {
        return Err(PathError::Nul(path.replace('\0', "\\0")));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(path.to_string()));
    }
    for c in path.split('/') {
        match c {
            ".." => return Err(PathError::DotDot(path.to_string())),
            "" | "." => return Err(PathError::NotNormal(path.to_string())),
            _ => {}
        }
    }
    Ok(())
}

/// Normalize a member name as archive tools write it (`./bin/x`, `bin//x`, `dir/`) into a
/// relative path, then check it. Returns `None` for the archive root itself (`.` or `./`).
pub fn normalize_member(name: &str) -> Result<Option<String>, PathError> {
    if name.starts_with('/') {
        return Err(PathError::Absolute(name.to_string()));
    }
    let parts: Vec<&str> = name.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.is_empty() {
        return Ok(None);
    }
    let joined = parts.join("/");
    check_relative(&joined)?;
    Ok(Some(joined))
}

/// Check that a symlink at `link` (relative to the root) pointing at `target` resolves inside the
/// root. Absolute targets are refused: they would point into the host, not the bundle.
pub fn check_link_target(link: &str, target: &str) -> Result<(), PathError> {
    let escapes = || PathError::LinkEscapes {
        link: link.to_string(),
        target: target.to_string(),
    };
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return Err(escapes());
    }
    let mut depth: Vec<&str> = link.split('/').collect();
    depth.pop(); // the link's own name
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return Err(escapes());
                }
            }
            other => depth.push(other),
        }
    }
    Ok(())
}

/// Resolve `target` relative to the directory of `link`, lexically. The caller has checked the pair
/// with [`check_link_target`].
pub fn resolve_link(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// All proper parent directories of a relative path, outermost first.
pub fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// A display wrapper that quotes a path for error messages.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.0.escape_debug())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_normal_paths() {
        check_relative("bin/runc").unwrap();
        check_relative("a").unwrap();
        check_relative("etc/cni/net.d/10-kiln.conflist").unwrap();
    }

    #[test]
    fn refuses_hostile_paths() {
        assert!(matches!(check_relative("/etc/passwd"), Err(PathError::Absolute(_))));
        assert!(matches!(check_relative("../x"), Err(PathError::DotDot(_))));
        assert!(matches!(check_relative("a/../../x"), Err(PathError::DotDot(_))));
        assert!(matches!(check_relative("a//b"), Err(PathError::NotNormal(_))));
        assert!(matches!(check_relative("./a"), Err(PathError::NotNormal(_))));
        assert!(matches!(check_relative("a/"), Err(PathError::NotNormal(_))));
        assert!(matches!(check_relative("a\0b"), Err(PathError::Nul(_))));
        assert!(matches!(check_relative(""), Err(PathError::Empty)));
        assert!(matches!(check_relative(&"a".repeat(2000)), Err(PathError::TooLong(_))));
    }

    #[test]
    fn normalizes_members() {
        assert_eq!(normalize_member("./bridge").unwrap().as_deref(), Some("bridge"));
        assert_eq!(normalize_member("bin//ctr").unwrap().as_deref(), Some("bin/ctr"));
        assert_eq!(normalize_member("usr/bin/").unwrap().as_deref(), Some("usr/bin"));
        assert_eq!(normalize_member("./").unwrap(), None);
        assert!(normalize_member("/abs").is_err());
        assert!(normalize_member("./../x").is_err());
    }

    #[test]
    fn link_targets() {
        check_link_target("bin/crictl", "../libexec/crictl").unwrap();
        check_link_target("a/b/c", "../../x").unwrap();
        assert!(check_link_target("a/b", "../../x").is_err());
        assert!(check_link_target("bin/x", "/usr/bin/x").is_err());
        assert!(check_link_target("x", "..").is_err());
        assert_eq!(resolve_link("bin/crictl", "../libexec/crictl"), "libexec/crictl");
        assert_eq!(resolve_link("a", "b"), "b");
    }

    #[test]
    fn parents_outermost_first() {
        assert_eq!(parents("a/b/c").collect::<Vec<_>>(), vec!["a", "a/b"]);
        assert_eq!(parents("a").count(), 0);
    }

    proptest! {
        // Whatever a path looks like, if it is accepted then joining it to a root never leaves the root.
        #[test]
        fn accepted_paths_stay_inside(parts in proptest::collection::vec("[a-z.]{0,3}", 1..6)) {
            let p = parts.join("/");
            if check_relative(&p).is_ok() {
                let root = std::path::Path::new("/root-dir");
                let joined = root.join(&p);
                let mut depth = 0i32;
                for c in joined.strip_prefix(root).unwrap().components() {
                    match c {
                        std::path::Component::Normal(_) => depth += 1,
                        _ => depth -= 100,
                    }
                }
                prop_assert!(depth > 0);
            }
        }

        #[test]
        fn accepted_links_resolve_inside(link in "[a-z]{1,2}(/[a-z]{1,2}){0,3}", target in "(\\.\\./|[a-z]{1,2}/|\\./){0,5}[a-z]{1,2}") {
            if check_link_target(&link, &target).is_ok() {
                let resolved = resolve_link(&link, &target);
                prop_assert!(check_relative(&resolved).is_ok() || resolved.is_empty());
            }
        }
    }
}
