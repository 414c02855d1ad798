//! `--mirror FROM=TO`: URL prefix rewriting for air-gapped builds. The manifest, lock and bundle keep
//! the upstream URL; only the fetch goes to the mirror.

use anyhow::{anyhow, bail, Result};

#[derive(Debug, Clone, Default)]
pub struct Mirrors(Vec<(String, String)>);

impl Mirrors {
    pub fn parse(specs: &[String]) -> Result<Mirrors> {
        let mut v = Vec::new();
        for s in specs {
            let (from, to) = s
                .split_once('=')
                .ok_or_else(|| anyhow!("--mirror `{s}`: expected FROM=TO"))?;
            if from.is_empty() || to.is_empty() {
                bail!("--mirror `{s}`: FROM and TO must not be empty");
            }
            v.push((from.to_string(), to.to_string()));
        }
        // Longest prefix wins.
        v.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        Ok(Mirrors(v))
    }

    pub fn rewrite(&self, url: &str) -> String {
        for (from, to) in &self.0 {
            if let Some(rest) = url.strip_prefix(from.as_str()) {
                return format!("{to}{rest}");
            }
        }
        url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let m = Mirrors::parse(&[
            "https://github.com/=http://127.0.0.1:1/gh/".into(),
            "https://github.com/containerd/=http://m/c/".into(),
        ])
        .unwrap();
        assert_eq!(m.rewrite("https://github.com/containerd/x.tgz"), "http://m/c/x.tgz");
        assert_eq!(
            m.rewrite("https://github.com/opencontainers/runc"),
            "http://127.0.0.1:1/gh/opencontainers/runc"
        );
        assert_eq!(m.rewrite("https://dl.k8s.io/x"), "https://dl.k8s.io/x");
        assert!(Mirrors::parse(&["nope".into()]).is_err());
    }
}
