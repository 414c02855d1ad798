//! Small HTTP client for datasources (IMDS, NoCloud over HTTP, `kiln.config=` URLs): ureq with
//! rustls, bounded timeouts, retries and response sizes. ureq keeps the first-boot binary free of an
//! async runtime.

use std::time::Duration;

use kiln_bundle::backoff::Backoff;

pub const MAX_BODY: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A 404: the resource does not exist (IMDS: no user data).
    #[error("{url}: 404 Not Found")]
    NotFound { url: String },
    #[error("{url}: {message}")]
    Failed { url: String, message: String },
}

pub struct Http {
    agent: ureq::Agent,
    retries: u32,
    backoff: Backoff,
}

impl Http {
    pub fn new(timeout: Duration, retries: u32) -> Http {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .user_agent(format!("kiln-firstboot/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Http {
            agent: config.into(),
            retries,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
        }
    }

    /// GET or PUT `url` with headers; 404 is [`NetError::NotFound`]; 5xx and connection errors are
    /// retried with backoff.
    pub fn request(&self, method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Vec<u8>, NetError> {
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(self.backoff.delay(attempt));
            }
            let result = if method == "PUT" {
                let mut r = self.agent.put(url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.send_empty()
            } else {
                let mut r = self.agent.get(url);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            };
            match result {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    if status == 404 {
                        return Err(NetError::NotFound { url: url.into() });
                    }
                    if status >= 500 || status == 429 {
                        last = format!("answered {status}");
                        continue;
                    }
                    if !(200..300).contains(&status) {
                        return Err(NetError::Failed {
                            url: url.into(),
                            message: format!("answered {status}"),
                        });
                    }
                    return resp
                        .body_mut()
                        .with_config()
                        .limit(MAX_BODY)
                        .read_to_vec()
                        .map_err(|e| NetError::Failed {
                            url: url.into(),
                            message: format!("reading the body failed: {e}"),
                        });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(NetError::Failed {
            url: url.into(),
            message: format!("failed after {} attempts: {last}", self.retries + 1),
        })
    }
}
