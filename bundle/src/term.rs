//! Terminal conventions every kiln binary follows: colour only on a terminal, and never when
//! `NO_COLOR` is set (https://no-color.org), so the journal, CI logs and pipes get plain text.

use std::io::IsTerminal;

/// Whether log lines on standard error may carry ANSI colours.
pub fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Make a closed standard output end the program quietly: `kiln-firstboot status -o json | head -1`
/// must not print a panic. Rust ignores SIGPIPE, so a write to a closed pipe is an error that
/// `println!` turns into a panic; this hook turns that one panic into exit status 0, as a reader
/// that stopped reading wanted no more. Every other panic is reported as before.
pub fn end_quietly_on_closed_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info)
    }));
}
