//! What a systemd service really runs: a unit merged with its drop-ins, `Environment=` and
//! `EnvironmentFile=` resolved, and `ExecStart=` expanded as systemd expands it (systemd.service(5),
//! "Command lines"): `${VAR}` becomes exactly one word, `$VAR` standing alone as a word is split at
//! whitespace into zero or more words, `$$` is a literal `$`.

use std::collections::BTreeMap;

use crate::error::{Error, Words};

/// One unit file or drop-in, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub origin: String,
    /// `(section, key, value)` in file order, continuation lines joined.
    pub entries: Vec<(String, String, String)>,
}

/// Whether `text` is a unit file or drop-in rather than another kind of input.
pub fn looks_like_unit(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .any(|l| l == "[Service]" || l == "[Unit]" || l == "[Install]" || l.starts_with("ExecStart="))
}

pub fn parse_unit(text: &str, origin: &str) -> UnitFile {
    let mut entries = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = if pending.is_empty() { raw.trim() } else { raw.trim_end() };
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let full = full.trim();
        if full.starts_with('[') && full.ends_with(']') {
            section = full[1..full.len() - 1].to_string();
        } else if let Some((k, v)) = full.split_once('=') {
            entries.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    UnitFile {
        origin: origin.to_string(),
        entries,
    }
}

/// A variable's value and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub value: String,
    pub source: String,
}

/// The service after merging: the one command line and the environment it runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    /// The effective `ExecStart=` and the file it came from.
    pub exec: Option<(String, String)>,
    /// `Environment=` assignments, in order (later wins).
    pub environment: Vec<(String, Var)>,
    /// `EnvironmentFile=` paths in order, and whether a missing file is allowed (`-`).
    pub environment_files: Vec<(String, bool, String)>,
    /// Dependency lines on Docker (`After=docker.service`, ...).
    pub docker_deps: Vec<(String, String)>,
}

/// Merge a unit and its drop-ins in the order given: an empty `ExecStart=` or `EnvironmentFile=`
/// resets the list, as in systemd.
pub fn merge(files: &[UnitFile]) -> Result<Service, Error> {
    let mut s = Service::default();
    let mut execs: Vec<(String, String)> = Vec::new();
    for f in files {
        for (section, key, value) in &f.entries {
            match (section.as_str(), key.as_str()) {
                ("Service", "ExecStart") if value.is_empty() => execs.clear(),
                ("Service", "ExecStart") => execs.push((value.clone(), f.origin.clone())),
                ("Service", "Environment") => {
                    let words = super::words(value).map_err(|problem| Error::Words {
                        origin: format!("{}: Environment={value}", f.origin),
                        problem,
                    })?;
                    for w in words {
                        if let Some((k, v)) = w.split_once('=') {
                            s.environment.push((
                                k.to_string(),
                                Var {
                                    value: v.to_string(),
                                    source: f.origin.clone(),
                                },
                            ));
                        }
                    }
                }
                ("Service", "EnvironmentFile") if value.is_empty() => s.environment_files.clear(),
                ("Service", "EnvironmentFile") => {
                    let (optional, path) = match value.strip_prefix('-') {
                        Some(p) => (true, p.to_string()),
                        None => (false, value.clone()),
                    };
                    s.environment_files.push((path, optional, f.origin.clone()));
                }
                ("Unit", "After" | "Requires" | "Wants" | "BindsTo" | "Requisite" | "PartOf")
                    if value
                        .split_whitespace()
                        .any(|u| u == "docker.service" || u == "docker.socket") =>
                {
                    s.docker_deps.push((format!("{key}={value}"), f.origin.clone()));
                }
                _ => {}
            }
        }
    }
    if execs.len() > 1 {
        return Err(Error::ExecStarts {
            origins: execs.into_iter().map(|(_, o)| o).collect(),
        });
    }
    s.exec = execs.pop().map(|(cmd, origin)| {
        // systemd's prefixes: `-` (ignore failure), `@`, `+`, `!`, `!!`, `:`.
        (cmd.trim_start_matches(['-', '@', '+', '!', ':']).to_string(), origin)
    });
    Ok(s)
}

/// Whether every meaningful line of `text` is a `NAME=value` assignment (an environment file such
/// as `/etc/default/kubelet` or kubeadm's `kubeadm-flags.env`).
pub fn looks_like_env_file(text: &str) -> bool {
    let mut any = false;
    for line in text.replace("\\\n", "").lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        match line.split_once('=') {
            Some((k, _)) if is_name(k) => any = true,
            _ => return false,
        }
    }
    any
}

fn is_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Parse an environment file as systemd does: `#`/`;` comments, `NAME=value`, values in single
/// quotes (literal) or double quotes (backslash escapes), unquoted values trimmed, a trailing
/// backslash continuing the line.
pub fn parse_env_file(text: &str, origin: &str) -> Result<Vec<(String, String)>, Error> {
    let at = |n: usize| format!("{origin}:{}", n + 1);
    let syntax = |n: usize, message: String| Error::Syntax { origin: at(n), message };
    let words = |n: usize, problem: Words| Error::Words { origin: at(n), problem };
    let mut out = Vec::new();
    let joined = text.replace("\\\n", "");
    for (n, line) in joined.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .filter(|(k, _)| is_name(k.trim()))
            .ok_or_else(|| syntax(n, format!("expected NAME=value, got `{line}`")))?;
        let v = v.trim();
        let value = if let Some(inner) = v.strip_prefix('\'') {
            inner
                .strip_suffix('\'')
                .ok_or_else(|| words(n, Words::UnterminatedSingle))?
                .to_string()
        } else if let Some(inner) = v.strip_prefix('"') {
            let inner = inner
                .strip_suffix('"')
                .ok_or_else(|| words(n, Words::UnterminatedDouble))?;
            let mut s = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => s.push(chars.next().unwrap_or('\\')),
                    c => s.push(c),
                }
            }
            s
        } else {
            v.to_string()
        };
        out.push((k.trim().to_string(), value));
    }
    Ok(out)
}

/// Expand `cmd` with `env`: the words of the command line, and the variables it used.
pub fn expand(cmd: &str, env: &BTreeMap<String, Var>) -> Result<(Vec<Expanded>, Vec<String>), Words> {
    let mut used = Vec::new();
    let mut out = Vec::new();
    for word in super::words(&cmd.replace("$$", "\u{0}"))? {
        let whole = word.strip_prefix('$').filter(|n| is_name(n)).or_else(|| {
            word.strip_prefix("${")
                .and_then(|w| w.strip_suffix('}'))
                .filter(|n| is_name(n))
        });
        match whole {
            Some(name) if !word.starts_with("${") => {
                used.push(name.to_string());
                if let Some(v) = env.get(name) {
                    for w in v.value.split_whitespace() {
                        out.push(Expanded {
                            word: w.to_string(),
                            via: Some((name.to_string(), v.source.clone())),
                        });
                    }
                }
            }
            _ => {
                let mut s = word.clone();
                let mut via = None;
                for (name, v) in env {
                    let pat = format!("${{{name}}}");
                    if s.contains(&pat) {
                        used.push(name.clone());
                        s = s.replace(&pat, &v.value);
                        via = Some((name.clone(), v.source.clone()));
                    }
                }
                // An unset `${VAR}` expands to nothing.
                while let Some(start) = s.find("${") {
                    let Some(end) = s[start..].find('}') else { break };
                    let name = s[start + 2..start + end].to_string();
                    if !is_name(&name) {
                        break;
                    }
                    used.push(name);
                    s.replace_range(start..start + end + 1, "");
                }
                out.push(Expanded {
                    word: s.replace('\u{0}', "$"),
                    via,
                });
            }
        }
    }
    Ok((out, used))
}

/// One word of an expanded command line, and the variable (and its source) it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub word: String,
    pub via: Option<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, Var> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Var {
                        value: v.to_string(),
                        source: "t".into(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn dollar_var_splits_and_braces_keep_one_word() {
        let e = env(&[("A", "--x=1  --y=2"), ("B", "a b")]);
        let (w, used) = expand("/usr/bin/kubelet $A --z=${B} $UNSET ${UNSET2} $$HOME", &e).unwrap();
        let words: Vec<&str> = w.iter().map(|x| x.word.as_str()).collect();
        assert_eq!(words, ["/usr/bin/kubelet", "--x=1", "--y=2", "--z=a b", "", "$HOME"]);
        assert_eq!(used, ["A", "B", "UNSET", "UNSET2"]);
        assert_eq!(w[1].via.as_ref().unwrap().0, "A");
    }

    #[test]
    fn drop_ins_reset_exec_start_and_environment_files() {
        let base = parse_unit(
            "[Service]\nExecStart=/usr/bin/kubelet\nEnvironmentFile=/a\n",
            "kubelet.service",
        );
        let drop = parse_unit(
            "[Service]\nEnvironmentFile=\nEnvironmentFile=-/b\nExecStart=\nExecStart=/usr/bin/kubelet \\\n  $ARGS\n",
            "10.conf",
        );
        let s = merge(&[base.clone(), drop]).unwrap();
        assert_eq!(s.exec, Some(("/usr/bin/kubelet    $ARGS".into(), "10.conf".into())));
        assert_eq!(s.environment_files, [("/b".to_string(), true, "10.conf".to_string())]);
        let twice = parse_unit("[Service]\nExecStart=/usr/bin/kubelet --v=2\n", "20.conf");
        let e = merge(&[base, twice]).unwrap_err().to_string();
        assert!(e.contains("2 ExecStart= lines (kubelet.service, 20.conf)"), "{e}");
    }

    #[test]
    fn env_files_parse_as_systemd_reads_them() {
        let text = "# kubeadm\nKUBELET_KUBEADM_ARGS=\"--a=1 --b=\\\"q\\\"\"\nexport X='lit $y'\n; c\nY=  plain  \nZ=one \\\ntwo\n";
        assert!(looks_like_env_file(text));
        let v = parse_env_file(text, "f").unwrap();
        assert_eq!(
            v,
            [
                ("KUBELET_KUBEADM_ARGS", "--a=1 --b=\"q\""),
                ("X", "lit $y"),
                ("Y", "plain"),
                ("Z", "one two")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert!(!looks_like_env_file("network-plugin: cni\n"));
        assert!(!looks_like_env_file("--a=b\n"));
        let e = parse_env_file("A=\"open\n", "kubeadm-flags.env")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("kubeadm-flags.env:1: unterminated double quote"), "{e}");
    }
}
