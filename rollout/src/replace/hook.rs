//! The user's provision and decommission commands.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A user's command (`--provision-cmd`, `--decommission-cmd`): split like a shell would split it,
/// run without a shell. Node names reach it only through the environment, never through a command
/// string built from API data.
#[derive(Debug, Clone)]
pub struct Hook {
    argv: Vec<String>,
    text: String,
}

/// Why a command string is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// Nothing but white space.
    #[error("the command is empty")]
    Empty,
    /// Quotes that do not close.
    #[error("cannot split the command {0:?} (unbalanced quotes?)")]
    Unsplittable(String),
}

impl FromStr for Hook {
    type Err = HookError;

    fn from_str(s: &str) -> Result<Hook, HookError> {
        match shlex::split(s) {
            Some(argv) if !argv.is_empty() => Ok(Hook {
                argv,
                text: s.to_string(),
            }),
            Some(_) => Err(HookError::Empty),
            None => Err(HookError::Unsplittable(s.to_string())),
        }
    }
}

impl Hook {
    /// Run with `env` added; the last non-empty line of its standard output, if any.
    pub async fn run(&self, what: &str, env: &[(&str, &str)], timeout: Duration) -> Result<Option<String>> {
        let mut cmd = tokio::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| anyhow::anyhow!("{what} command `{}` did not finish within {timeout:?}", self.text))?
            .with_context(|| format!("cannot run the {what} command `{}`", self.text))?;
        if !out.status.success() {
            let command = format!("{what} command `{}`", self.text);
            bail!("{}", kiln_bundle::process::failed(&command, out.status, &out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| l.trim_start_matches("node/").to_string())
            .filter(|l| is_node_name(l)))
    }
}

/// A DNS-1123 subdomain, as Node names are.
pub(crate) fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_split_without_a_shell() {
        let h: Hook = "provision --pool 'blue pool' \"$KILN_NODE\"".parse().unwrap();
        assert_eq!(h.argv, ["provision", "--pool", "blue pool", "$KILN_NODE"]);
        assert!("".parse::<Hook>().is_err());
        assert!("a 'b".parse::<Hook>().unwrap_err().to_string().contains("unbalanced"));
    }

    #[test]
    fn node_names() {
        assert!(is_node_name("node-1.example"));
        assert!(!is_node_name("Node"));
        assert!(!is_node_name("created node-1"));
        assert!(!is_node_name("-x"));
    }
}
