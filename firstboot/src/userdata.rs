//! User data as cloud-init accepts it: `#cloud-config` YAML, MIME multipart (as `cloud-init devel
//! make-mime` writes it), gzip-compressed or base64-encoded data, nested within bounds.
//!
//! From cloud-config kiln honours `hostname`, `fqdn`, `write_files` (content with encodings b64 and
//! gzip, `permissions`, `owner`, `append`) and its own `kiln:` section; every other key is ignored
//! with a debug line. MIME parts of type `text/cloud-config` and `application/x-kiln-node+yaml`
//! (a bare node section) are read; scripts and other parts are ignored.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine as _;
use serde::Deserialize;

use crate::config::{NodeConfig, NodeSection, WriteFile};

/// Largest user data after decompression and decoding.
pub const MAX_USER_DATA: usize = 16 << 20;
/// How deep gzip/base64/MIME may nest.
pub const MAX_NESTING: u32 = 4;
/// Most MIME parts in one message.
pub const MAX_PARTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{0}")]
    Yaml(#[from] kiln_bundle::Error),
}

fn invalid(origin: &str, message: impl Into<String>) -> UserDataError {
    UserDataError::Invalid {
        origin: origin.to_string(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
struct CloudConfig {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    fqdn: Option<String>,
    #[serde(default)]
    write_files: Vec<CloudWriteFile>,
    #[serde(default)]
    kiln: Option<NodeSection>,
    #[serde(flatten)]
    other: BTreeMap<String, serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudWriteFile {
    path: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    permissions: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    append: bool,
    #[serde(default)]
    defer: bool,
}

/// Decode user data bytes from `origin` into `out`.
pub fn apply(bytes: &[u8], origin: &str, out: &mut NodeConfig) -> Result<(), UserDataError> {
    decode(bytes, origin, out, 0)
}

fn decode(bytes: &[u8], origin: &str, out: &mut NodeConfig, depth: u32) -> Result<(), UserDataError> {
    if depth > MAX_NESTING {
        return Err(invalid(
            origin,
            format!("user data nests gzip/base64/MIME more than {MAX_NESTING} levels"),
        ));
    }
    if bytes.len() > MAX_USER_DATA {
        return Err(invalid(
            origin,
            format!("user data is larger than {MAX_USER_DATA} bytes"),
        ));
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut inflated = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(MAX_USER_DATA as u64 + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| invalid(origin, format!("corrupt gzip data: {e}")))?;
        if inflated.len() > MAX_USER_DATA {
            return Err(invalid(
                origin,
                format!("gzip user data inflates to more than {MAX_USER_DATA} bytes"),
            ));
        }
        return decode(&inflated, &format!("{origin} (gunzipped)"), out, depth + 1);
    }
    let text = String::from_utf8_lossy(bytes);
    let head = text.trim_start();
    if head.starts_with("#cloud-config") {
        return cloud_config(&text, origin, out);
    }
    let starts = |word: &[u8]| {
        head.as_bytes()
            .get(..word.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(word))
    };
    if starts(b"content-type") || starts(b"mime-version") {
        return mime(&text, origin, out, depth);
    }
    if head.starts_with("#!") || head.is_empty() {
        tracing::debug!("{origin}: not cloud-config (script or empty); ignored");
        return Ok(());
    }
    let compact: String = text.split_whitespace().collect();
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
        return decode(&decoded, &format!("{origin} (base64)"), out, depth + 1);
    }
    Err(invalid(
        origin,
        "unrecognized user data: expected #cloud-config, MIME multipart, gzip or base64",
    ))
}

fn cloud_config(text: &str, origin: &str, out: &mut NodeConfig) -> Result<(), UserDataError> {
    let cc: CloudConfig = kiln_bundle::yaml::from_str(text, origin)?;
    for key in cc.other.keys() {
        tracing::debug!("{origin}: cloud-config key `{key}` is not used by kiln; ignored");
    }
    let mut section = cc.kiln.unwrap_or_default();
    // cloud-init prefers fqdn over hostname for the host name.
    if section.hostname.is_none() {
        section.hostname = cc.fqdn.or(cc.hostname);
    }
    for (i, wf) in cc.write_files.into_iter().enumerate() {
        let at = format!("{origin}: write_files[{i}] ({})", wf.path);
        if wf.defer {
            tracing::debug!("{at}: `defer` is ignored; kiln writes files before starting services");
        }
        out.write_files.push(write_file(wf, &at)?);
    }
    out.add(origin, section);
    Ok(())
}

fn write_file(wf: CloudWriteFile, at: &str) -> Result<WriteFile, UserDataError> {
    if !wf.path.starts_with('/') {
        return Err(invalid(at, "path must be absolute"));
    }
    if wf.path.split('/').any(|c| c == "..") {
        return Err(invalid(at, "path must not contain `..`"));
    }
    let raw = wf.content.into_bytes();
    let content = match wf.encoding.as_deref().unwrap_or("text/plain") {
        "text/plain" => raw,
        "b64" | "base64" => b64(&raw, at)?,
        "gz" | "gzip" => gunzip(&raw, at)?,
        "gz+b64" | "gz+base64" | "gzip+b64" | "gzip+base64" => gunzip(&b64(&raw, at)?, at)?,
        other => {
            return Err(invalid(
                at,
                format!("unsupported encoding `{other}` (b64, gzip, gz+b64 or text/plain)"),
            ))
        }
    };
    let mode = match &wf.permissions {
        None => 0o644,
        Some(p) => {
            let digits = p.trim_start_matches("0o");
            u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| invalid(at, format!("permissions `{p}` is not an octal mode")))?
        }
    };
    Ok(WriteFile {
        path: wf.path,
        content,
        mode,
        owner: wf.owner.unwrap_or_else(|| "root:root".into()),
        append: wf.append,
        origin: at.to_string(),
    })
}

fn b64(data: &[u8], at: &str) -> Result<Vec<u8>, UserDataError> {
    let compact: Vec<u8> = data.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| invalid(at, format!("invalid base64: {e}")))
}

fn gunzip(data: &[u8], at: &str) -> Result<Vec<u8>, UserDataError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(MAX_USER_DATA as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| invalid(at, format!("corrupt gzip content: {e}")))?;
    if out.len() > MAX_USER_DATA {
        return Err(invalid(
            at,
            format!("content inflates to more than {MAX_USER_DATA} bytes"),
        ));
    }
    Ok(out)
}

/// Headers (lower-cased names) and the body after the first blank line.
fn split_headers(text: &str) -> (BTreeMap<String, String>, &str) {
    let mut headers = BTreeMap::new();
    let mut last: Option<String> = None;
    let mut rest = text;
    loop {
        let (line, tail) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let line = line.trim_end_matches('\r');
        rest = tail;
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last {
                if let Some(v) = headers.get_mut(k) {
                    let v: &mut String = v;
                    v.push(' ');
                    v.push_str(line.trim());
                }
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            headers.insert(k.clone(), v.trim().to_string());
            last = Some(k);
        }
        if rest.is_empty() {
            break;
        }
    }
    (headers, rest)
}

/// `text/plain; charset="us-ascii"` -> (`text/plain`, {charset: us-ascii})
fn content_type(value: &str) -> (String, BTreeMap<String, String>) {
    let mut parts = value.split(';');
    let ty = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_string()))
        .collect();
    (ty, params)
}

fn mime(text: &str, origin: &str, out: &mut NodeConfig, depth: u32) -> Result<(), UserDataError> {
    let (headers, body) = split_headers(text);
    let (ty, params) = content_type(headers.get("content-type").map(String::as_str).unwrap_or("text/plain"));
    if !ty.starts_with("multipart/") {
        return part(&ty, &headers, body, origin, out, depth);
    }
    let boundary = params
        .get("boundary")
        .ok_or_else(|| invalid(origin, "multipart user data has no boundary"))?;
    let mut n = 0;
    for section in parts_of(body, boundary) {
        n += 1;
        if n > MAX_PARTS {
            return Err(invalid(origin, format!("more than {MAX_PARTS} MIME parts")));
        }
        let (h, b) = split_headers(section);
        let (pty, _) = content_type(h.get("content-type").map(String::as_str).unwrap_or("text/plain"));
        let name = h
            .get("content-disposition")
            .and_then(|d| content_type(d).1.get("filename").cloned())
            .map(|f| format!(" `{f}`"))
            .unwrap_or_default();
        let at = format!("{origin}: MIME part {n}{name} ({pty})");
        if pty.starts_with("multipart/") {
            mime(section, &at, out, depth + 1)?;
        } else {
            part(&pty, &h, b, &at, out, depth)?;
        }
    }
    Ok(())
}

/// The parts of a multipart body (RFC 2046 5.1.1): a delimiter is a line that is exactly `--boundary`
/// (trailing whitespace allowed), the closing one `--boundary--`; the same text inside a line is
/// content. The preamble and epilogue are dropped; the line break before a delimiter belongs to it.
fn parts_of<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos <= body.len() {
        let end = body[pos..].find('\n').map_or(body.len(), |i| pos + i);
        let line = body[pos..end].trim_end_matches(['\r', ' ', '\t']);
        if let Some(rest) = line.strip_prefix(delimiter.as_str()) {
            if rest.is_empty() || rest == "--" {
                if let Some(s) = start {
                    // The CRLF or LF before the delimiter line is part of the delimiter.
                    let before = body[s..pos].strip_suffix('\n').unwrap_or(&body[s..pos]);
                    parts.push(before.strip_suffix('\r').unwrap_or(before));
                }
                if rest == "--" {
                    return parts;
                }
                start = Some((end + 1).min(body.len()));
            }
        }
        pos = end + 1;
    }
    // No closing delimiter: what follows the last delimiter is the last part.
    if let Some(s) = start {
        parts.push(&body[s..]);
    }
    parts
}

/// Quoted-printable (RFC 2045 6.7): `=XX` is a byte, `=` at the end of a line joins it to the next.
fn quoted_printable(body: &str, at: &str) -> Result<Vec<u8>, UserDataError> {
    let mut out = Vec::with_capacity(body.len());
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'=' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1..i + 3) {
            Some([b'\r', b'\n']) => i += 3,
            Some([b'\n', _]) => i += 2,
            Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => {
                let text = std::str::from_utf8(hex).expect("ascii hex digits");
                out.push(u8::from_str_radix(text, 16).expect("two hex digits"));
                i += 3;
            }
            None if b.get(i + 1) == Some(&b'\n') || i + 1 == b.len() => i += 2,
            _ => {
                return Err(invalid(
                    at,
                    "malformed quoted-printable data (`=` not followed by two hex digits)",
                ))
            }
        }
    }
    Ok(out)
}

fn part(
    ty: &str,
    headers: &BTreeMap<String, String>,
    body: &str,
    at: &str,
    out: &mut NodeConfig,
    depth: u32,
) -> Result<(), UserDataError> {
    let body = body.trim_end_matches(['\r', '\n']);
    let bytes = match headers.get("content-transfer-encoding").map(|e| e.to_ascii_lowercase()) {
        Some(e) if e == "base64" => b64(body.as_bytes(), at)?,
        Some(e) if e == "quoted-printable" => quoted_printable(body, at)?,
        _ => body.as_bytes().to_vec(),
    };
    match ty {
        "text/cloud-config" => {
            let text = String::from_utf8(bytes).map_err(|_| invalid(at, "cloud-config is not UTF-8"))?;
            cloud_config(&text, at, out)
        }
        // make-mime can only write text/ types, so text/x-kiln-node+yaml is accepted too.
        "application/x-kiln-node+yaml" | "text/x-kiln-node+yaml" => {
            let text = String::from_utf8(bytes).map_err(|_| invalid(at, "the node section is not UTF-8"))?;
            let section: NodeSection = kiln_bundle::yaml::from_str(&text, at)?;
            out.add(at, section);
            Ok(())
        }
        "application/x-gzip" | "application/gzip" => decode(&bytes, at, out, depth + 1),
        other => {
            tracing::debug!("{at}: part type {other} is not used by kiln; ignored");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<NodeConfig, UserDataError> {
        let mut c = NodeConfig::default();
        apply(bytes, "user-data", &mut c)?;
        Ok(c)
    }

    const CC: &str = "#cloud-config\nhostname: worker-1\npackages: [vim]\nkiln:\n  apiServer: https://10.0.0.1:6443\n  nodeIP: auto\n  labels:\n    pool: blue\nwrite_files:\n  - path: /etc/motd\n    content: aGVsbG8K\n    encoding: b64\n    permissions: '0600'\n";

    #[test]
    fn cloud_config_fields() {
        let c = run(CC.as_bytes()).unwrap();
        assert_eq!(c.node.hostname.as_deref(), Some("worker-1"));
        assert_eq!(c.node.api_server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(c.node.labels["pool"], "blue");
        assert_eq!(c.write_files[0].content, b"hello\n");
        assert_eq!(c.write_files[0].mode, 0o600);
    }

    #[test]
    fn gzip_and_base64_wrappers() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(CC.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(run(&gz).unwrap().node.hostname.as_deref(), Some("worker-1"));
        let b = base64::engine::general_purpose::STANDARD.encode(&gz);
        assert_eq!(run(b.as_bytes()).unwrap().node.hostname.as_deref(), Some("worker-1"));
    }

    #[test]
    fn unknown_kiln_key_names_the_key_and_line() {
        let e = run(b"#cloud-config\nkiln:\n  apiserver: x\n").unwrap_err().to_string();
        assert!(
            e.starts_with("user-data:3:3: kiln.apiserver: unknown field `apiserver`"),
            "{e}"
        );
        let e = run(b"#cloud-config\nkiln:\n  labels: [a]\n").unwrap_err().to_string();
        assert!(e.contains("kiln.labels"), "{e}");
    }

    #[test]
    fn hostile_write_files_and_garbage() {
        let e = run(b"#cloud-config\nwrite_files:\n  - path: /etc/../../x\n    content: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must not contain `..`"), "{e}");
        let e = run(b"#cloud-config\nwrite_files:\n  - path: etc/x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be absolute"), "{e}");
        let e = run(b"\x00\x01garbage!").unwrap_err().to_string();
        assert!(e.contains("unrecognized user data"), "{e}");
        let e = run(b"#cloud-config\nwrite_files:\n  - path: /x\n    content: x\n    encoding: rot13\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported encoding `rot13`"), "{e}");
    }

    #[test]
    fn fuzz_regression_non_ascii_after_a_prefix() {
        // Found by the user_data fuzz target: slicing at byte 12 inside a multi-byte character.
        let data = base64::engine::general_purpose::STANDARD
            .decode("I2Nsb3VkLWNvburq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urqZmlnCmhvDXRuYW1lOiB3b3JrZXItNgo=")
            .unwrap();
        assert!(run(&data).is_err());
        assert!(run("apiServ\u{e9}\u{e9}\u{e9}o/ud-co".as_bytes()).is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let mut data = CC.as_bytes().to_vec();
        for _ in 0..6 {
            data = base64::engine::general_purpose::STANDARD.encode(&data).into_bytes();
        }
        assert!(run(&data).unwrap_err().to_string().contains("nests"));
    }

    #[test]
    fn mime_boundaries_are_whole_lines_and_quoted_printable_decodes() {
        // The boundary text inside a line is content, not a delimiter; CRLF line ends.
        let msg = "Content-Type: multipart/mixed; boundary=\"b1\"\r\nMIME-Version: 1.0\r\n\r\npreamble --b1 here\r\n--b1\r\nContent-Type: text/x-kiln-node+yaml\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nlabels:\r\n  note: \"see --b1 =3D fine\"\r\n  long: \"a=\r\nb\"\r\nhostname: n=C3=A9ud-1\r\n--b1--  \r\nepilogue\r\n--b1\r\nContent-Type: text/cloud-config\r\n\r\n#cloud-config\r\nhostname: never\r\n";
        let c = run(msg.as_bytes()).unwrap();
        // Decoded as UTF-8 bytes, and the part after the closing delimiter was never read.
        assert_eq!(c.node.hostname.as_deref(), Some("néud-1"));
        assert_eq!(c.sources.len(), 1, "{:?}", c.sources);
        assert_eq!(c.node.labels["note"], "see --b1 = fine");
        assert_eq!(c.node.labels["long"], "ab");
        let ok = msg.to_string();
        let bad = ok.replace("=3D", "=ZZ");
        assert!(run(bad.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("malformed quoted-printable"));
    }

    #[test]
    fn mime_multipart() {
        let msg = "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n--XX\nContent-Type: text/cloud-config; charset=\"us-ascii\"\nContent-Disposition: attachment; filename=\"cc.yaml\"\n\n#cloud-config\nhostname: a\n\n--XX\nContent-Type: application/x-kiln-node+yaml\nContent-Transfer-Encoding: base64\n\nY2x1c3RlckROUzogMTAuOTYuMC4xMAo=\n--XX\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n--XX--\n";
        let c = run(msg.as_bytes()).unwrap();
        assert_eq!(c.node.hostname.as_deref(), Some("a"));
        assert_eq!(c.node.cluster_dns.as_deref(), Some("10.96.0.10"));
        assert_eq!(c.sources.len(), 2);
        let bad = msg.replace("Y2x1c3RlckROUzogMTAuOTYuMC4xMAo=", "bm9kZUlQOiBbXQ==");
        let e = run(bad.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("MIME part 2 (application/x-kiln-node+yaml)") && e.contains("nodeIP"),
            "{e}"
        );
    }
}
