//! The one way the builder runs external tools: arguments as a vector (never a shell string), stdout
//! and stderr captured, and a failure that names the program and quotes what it printed.
//!
//! External tools the builder runs: `apt-get` (the `apt` source); for `kiln image`, debootstrap,
//! `tar` and `zstd`, `sfdisk`, `mkfs.ext4`, `debugfs`, `mkfs.vfat`, `mmd`/`mcopy`, `mksquashfs`,
//! `qemu-img`, `dd` and `cp` (all from the Debian packages `scripts/setup` installs).

use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run `{program}`: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Run `cmd` to completion, capturing its output; a non-zero exit is an error with stderr attached.
pub fn run(cmd: &mut Command) -> Result<Output, ProcessError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| ProcessError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(ProcessError::Failed {
            command: kiln_bundle::process::command_line(cmd),
            status: out.status.to_string(),
            stderr: kiln_bundle::process::stderr_tail(&out.stderr),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_command_and_quotes_stderr() {
        let e = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`sh -c echo boom >&2; exit 3` failed"), "{e}");
        assert!(e.contains("boom"), "{e}");
        let e = run(&mut Command::new("/nonexistent/tool")).unwrap_err().to_string();
        assert!(e.starts_with("cannot run `/nonexistent/tool`"), "{e}");
    }
}
