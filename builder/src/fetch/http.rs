//! HTTP(S) downloads with reqwest and rustls: bounded retries with exponential backoff (capped) on
//! transient failures (connection errors, timeouts, 5xx, 429, truncated or stalled bodies), a
//! progress bar on a terminal, and the digest checked before the file enters the cache. A server
//! that stops sending fails the attempt after the idle timeout; a body past the size cap is refused;
//! Ctrl-C or SIGTERM stops a download at once (the network is read on a helper thread, so a stalled
//! read never delays it), and the partial file is removed.

use std::io::{self, IsTerminal, Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use kiln_bundle::backoff::Backoff;
use kiln_bundle::digest::{HashingWriter, Sha256};
use reqwest::StatusCode;

use crate::cache::Cache;

pub struct Http {
    client: reqwest::blocking::Client,
    retries: u32,
    backoff: Backoff,
    /// How long a response may send nothing (headers or body) before the attempt fails.
    idle: Duration,
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The largest artifact kiln downloads: more than any component or image it pins.
pub const MAX_BODY_BYTES: u64 = 8 << 30;

/// What the reading thread saw.
enum Got {
    Head(StatusCode, Option<u64>),
    Data(Vec<u8>),
    End,
    Failed(String),
    /// The URL cannot be requested at all: retrying cannot help.
    BadUrl(String),
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
        let ms = |var: &str, default: u64| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
        Ok(Http {
            client,
            retries,
            backoff: Backoff::new(Duration::from_millis(ms("KILN_HTTP_BACKOFF_MS", 500)), MAX_BACKOFF),
            idle: Duration::from_millis(ms("KILN_HTTP_IDLE_TIMEOUT_MS", 60_000)),
        })
    }

    /// Download `url` into the cache, checked against `expected`. `what` names the artifact in errors
    /// (component and architecture); `shown` is the URL as the manifest has it.
    pub fn fetch(&self, url: &str, expected: &Sha256, cache: &Cache, what: &str) -> Result<()> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                let wait = self.backoff.delay(attempt);
                tracing::warn!("{what}: {last}; retrying in {wait:?} ({attempt}/{})", self.retries);
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    crate::check_interrupted()?;
                    std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
                }
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
        let rx = self.start(url);
        let mut received = 0u64;
        // Waits for the next message while checking for a signal and the idle timeout.
        let next = |received: u64| -> Result<Got, Attempt> {
            let since = Instant::now();
            loop {
                crate::check_interrupted().map_err(Attempt::Fatal)?;
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(got) => return Ok(got),
                    Err(mpsc::RecvTimeoutError::Timeout) if since.elapsed() >= self.idle => {
                        return Err(Attempt::Transient(format!(
                            "{url} sent nothing for {:?} after {received} bytes",
                            self.idle
                        )))
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(Attempt::Transient(format!("the connection to {url} ended")))
                    }
                }
            }
        };
        let (status, length) = match next(0)? {
            Got::Head(status, length) => (status, length),
            Got::BadUrl(e) => return Err(Attempt::Fatal(anyhow!("{what}: `{url}` is not a valid URL: {e}"))),
            Got::Failed(e) => return Err(Attempt::Transient(format!("request to {url} failed: {e}"))),
            Got::Data(_) | Got::End => return Err(Attempt::Transient(format!("{url}: no response head"))),
        };
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
        {
            return Err(Attempt::Transient(format!("{url} answered {status}")));
        }
        if !status.is_success() {
            return Err(Attempt::Fatal(anyhow!("{what}: {url} answered {status}")));
        }
        if length.is_some_and(|l| l > MAX_BODY_BYTES) {
            return Err(Attempt::Fatal(anyhow!(
                "{what}: {url} announces {} bytes, more than kiln downloads ({MAX_BODY_BYTES})",
                length.unwrap_or_default()
            )));
        }
        let tmp = cache.temp().map_err(Attempt::Fatal)?;
        let b = progress_bar(length, what);
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp.as_file()));
        loop {
            match next(received)? {
                Got::Data(d) => {
                    received += d.len() as u64;
                    if received > MAX_BODY_BYTES {
                        return Err(Attempt::Fatal(anyhow!(
                            "{what}: {url} sent more than {MAX_BODY_BYTES} bytes, more than kiln downloads"
                        )));
                    }
                    w.write_all(&d)
                        .map_err(|e| Attempt::Fatal(anyhow!("cannot write {}: {e}", tmp.path().display())))?;
                    b.inc(d.len() as u64);
                }
                Got::End => break,
                Got::Failed(e) => {
                    return Err(Attempt::Transient(format!(
                        "reading {url} failed after {received} bytes: {e}"
                    )))
                }
                Got::Head(..) | Got::BadUrl(_) => unreachable!("one head per response, before the body"),
            }
        }
        b.finish_and_clear();
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

    /// Request `url` on a helper thread that sends the head, then the body in pieces. A reader that
    /// is abandoned (a signal, the idle timeout) ends with its connection when its next send fails,
    /// or with the process.
    fn start(&self, url: &str) -> mpsc::Receiver<Got> {
        let (tx, rx) = mpsc::sync_channel(8);
        let (client, url) = (self.client.clone(), url.to_string());
        std::thread::spawn(move || {
            let mut resp = match client.get(&url).send() {
                Ok(r) => r,
                Err(e) => {
                    let chain = error_chain(&e);
                    let _ = tx.send(if e.is_builder() {
                        Got::BadUrl(chain)
                    } else {
                        Got::Failed(chain)
                    });
                    return;
                }
            };
            if tx.send(Got::Head(resp.status(), resp.content_length())).is_err() {
                return;
            }
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let got = match resp.read(&mut buf) {
                    Ok(0) => Got::End,
                    Ok(n) => Got::Data(buf[..n].to_vec()),
                    Err(e) => Got::Failed(e.to_string()),
                };
                let last = !matches!(got, Got::Data(_));
                if tx.send(got).is_err() || last {
                    return;
                }
            }
        });
        rx
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
