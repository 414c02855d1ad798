//! Terminal conventions every kiln binary follows: colour only on a terminal, and never when
//! `NO_COLOR` is set (https://no-color.org), so the journal, CI logs and pipes get plain text.

use std::io::IsTerminal;

/// Whether log lines on standard error may carry ANSI colours.
pub fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
