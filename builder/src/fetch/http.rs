//! HTTP(S) downloads with reqwest and rustls: bounded retries with exponential backoff on transient
//! failures (connection errors, timeouts, 5xx, 429, truncated bodies), a progress bar on a terminal,
//! and the digest checked before the file enters the cache.

use std::io::{self, IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use kiln_bundle::digest::{HashingWriter, Sha256};
use reqwest::StatusCode;

use crate::cache::Cache;

pub struct Http {
    client: reqwest::blocking::Client,
    retries: u32,
    backoff: Duration,
}

/// Why one attempt failed, and whether another attempt may help.
enum Attempt {
    Transient(String),
    Fatal(anyhow::Error),
}

impl Http {
    pub fn new(retries: u32) -> Result<Http> {
        let client = reqwest::blocking::Client::builder()
            .user_agent(crate::tool_version())
            .connect_timeout(Duration::from_secs(15))
            .timeout(None)
            .build()
            .context("cannot set up the HTTP client")?;
        // The first retry waits this long, each next one twice as long. Tests shorten it.
        let ms = std::env::var("KILN_HTTP_BACKOFF_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        Ok(Http {
            client,
            retries,
            backoff: Duration::from_millis(ms),
        })
    }

    /// Download `url` into the cache, checked against `expected`. `what` names the artifact in errors
    /// (component and architecture); `shown` is the URL as the manifest has it.
    pub fn fetch(&self, url: &str, expected: &Sha256, cache: &Cache, what: &str) -> Result<()> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                let wait = self.backoff * 2u32.saturating_pow(attempt - 1);
                tracing::warn!("{what}: {last}; retrying in {wait:?} ({attempt}/{})", self.retries);
                std::thread::sleep(wait);
            }
            match self.attempt(url, expected, cache, what) {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Transient(msg)) => last = msg,
            }
        }
        Err(anyhow!(
            "{what}: download of {url} failed after {} attempts: {last}",
            self.retries + 1
        ))
    }

    fn attempt(&self, url: &str, expected: &Sha256, cache: &Cache, what: &str) -> Result<(), Attempt> {
        let mut resp = match self.client.get(url).send() {
            Ok(r) => r,
            Err(e) if e.is_builder() => return Err(Attempt::Fatal(anyhow!("{what}: `{url}` is not a valid URL: {e}"))),
            Err(e) => {
                return Err(Attempt::Transient(format!(
                    "request to {url} failed: {}",
                    error_chain(&e)
                )))
            }
        };
        let status = resp.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
        {
            return Err(Attempt::Transient(format!("{url} answered {status}")));
        }
        if !status.is_success() {
            return Err(Attempt::Fatal(anyhow!("{what}: {url} answered {status}")));
        }
        let length = resp.content_length();
        let tmp = cache.temp().map_err(Attempt::Fatal)?;
        let bar = progress_bar(length, what);
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp.as_file()));
        let mut buf = vec![0u8; 1 << 16];
        loop {
            crate::check_interrupted().map_err(Attempt::Fatal)?;
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    return Err(Attempt::Transient(format!(
                        "reading {url} failed after {} bytes: {e}",
                        bar.position()
                    )))
                }
            };
            w.write_all(&buf[..n])
                .map_err(|e| Attempt::Fatal(anyhow!("cannot write {}: {e}", tmp.path().display())))?;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        let (actual, size, mut out) = w.finish();
        out.flush()
            .map_err(|e| Attempt::Fatal(anyhow!("cannot write {}: {e}", tmp.path().display())))?;
        drop(out);
        if let Some(len) = length {
            if size != len {
                return Err(Attempt::Transient(format!(
                    "truncated download of {url}: got {size} of {len} bytes"
                )));
            }
        }
        if &actual != expected {
            return Err(Attempt::Fatal(super::mismatch(what, url, expected, &actual)));
        }
        cache.commit(tmp, &actual).map_err(Attempt::Fatal)?;
        Ok(())
    }
}

fn progress_bar(length: Option<u64>, what: &str) -> indicatif::ProgressBar {
    if !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match length {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:24} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
