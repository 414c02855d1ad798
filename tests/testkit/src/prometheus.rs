//! A real Prometheus for tests: Debian's `prometheus` on 127.0.0.1, scraping one target every
//! second, queried through its HTTP API as an operator's alerting would. Stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::free_port;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub log: PathBuf,
}

impl Prometheus {
    /// Start Prometheus in `dir`, scraping `target` (`host:port`, path `/metrics`) every second.
    pub fn start(dir: &Path, target: &str) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run scripts/setup (Debian package prometheus)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: kiln\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
            ),
        )
        .unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus {
            child,
            url: format!("http://{listen}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.get("/-/ready", &[]).is_none_or(|(code, _)| code != 200) {
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// The status code and body of a GET, or `None` when nothing answers.
    fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<(u16, String)> {
        let mut c = Command::new("curl");
        c.args(["-s", "--get", "-o", "-", "-w", "\n%{http_code}"]);
        for (k, v) in query {
            c.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = c.arg(format!("{}{path}", self.url)).output().expect("curl runs");
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }

    /// An instant query's result: each series' labels and value, as of the last scrape.
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let (code, body) = self
            .get("/api/v1/query", &[("query", expr)])
            .unwrap_or_else(|| panic!("prometheus does not answer:\n{}", self.log_text()));
        assert_eq!(code, 200, "query {expr}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {expr}: {body}"))
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The value of the one series `expr` selects, if there is one.
    pub fn value(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr);
        assert!(r.len() <= 1, "{expr} selects several series: {r:?}");
        r.first().map(|(_, v)| *v)
    }

    /// The state of the scrape target (`up`, the last error), as Prometheus's targets page says.
    pub fn targets(&self) -> String {
        self.get("/api/v1/targets", &[]).map(|(_, b)| b).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
