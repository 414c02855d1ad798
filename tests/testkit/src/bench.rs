//! Helpers shared by the benchmark binaries.

use std::process::Command;

/// Run a command to success, returning its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wall seconds and peak RSS (KiB) of a command run as `/usr/bin/time -f "%e %M" ...`, which
/// prints them on the last line of stderr.
pub fn timed_rss(cmd: &mut Command) -> (f64, u64) {
    let out = cmd.output().expect("/usr/bin/time runs (package `time`)");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let mut it = err.lines().last().unwrap_or_default().split_whitespace();
    let secs = it.next().and_then(|s| s.parse().ok()).expect("time output");
    let rss = it.next().and_then(|s| s.parse().ok()).expect("time output");
    (secs, rss)
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
