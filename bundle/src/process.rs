//! How kiln reports a command that failed, the same in every binary: the command, its exit
//! status, and the last lines of what it printed on stderr.

use std::process::{Command, ExitStatus};

/// Lines of stderr quoted in an error: enough to explain a failure without flooding a terminal.
pub const STDERR_LINES: usize = 8;

/// The program and its arguments as one line of text.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last non-empty lines of a tool's stderr, or `(no output on stderr)`.
pub fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let start = lines.len().saturating_sub(STDERR_LINES);
    if lines.is_empty() {
        "(no output on stderr)".into()
    } else {
        lines[start..].join("\n  ")
    }
}

/// `WHAT failed (STATUS): STDERR`, where `what` names the command (e.g. "`sfdisk --json x`").
pub fn failed(what: &str, status: ExitStatus, stderr: &[u8]) -> String {
    format!("{what} failed ({status}): {}", stderr_tail(stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_command_and_quotes_the_end_of_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i >&2; done; exit 3"]);
        let out = cmd.output().unwrap();
        let e = failed(&format!("`{}`", command_line(&cmd)), out.status, &out.stderr);
        assert!(e.starts_with("`sh -c for i in"), "{e}");
        assert!(e.contains("failed (exit status: 3): line3\n  line4"), "{e}");
        assert!(e.ends_with("line10") && !e.contains("line2\n"), "{e}");
        assert_eq!(stderr_tail(b"\n \n"), "(no output on stderr)");
    }
}
