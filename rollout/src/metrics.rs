//! A roll's Prometheus metrics (`kubectl kiln roll --metrics-bind-address`): while a roll runs,
//! as a Job nobody watches, `GET /metrics` says how far it got and whether it is stuck. The
//! registry is prometheus-client's, encoded as OpenMetrics text, which Prometheus scrapes.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`RollMetrics::render`], as Prometheus asks for it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One roll's figures, labelled with its pool (`selector`) and `target` bundle.
pub struct RollMetrics {
    registry: Registry,
    /// Nodes of the pool the roll has to move (not on the target bundle when it started).
    pub to_roll: Gauge,
    /// Nodes being drained, replaced or reprovisioned now.
    pub in_flight: Gauge,
    /// Nodes moved to the target bundle: replaced by a new node, or reprovisioned in place.
    pub replaced: Counter,
    /// Nodes the roll halted on (left cordoned and annotated with why).
    pub halted_nodes: Counter,
    /// 1 once the roll halted: it starts no other node.
    pub halted: Gauge,
    /// 1 while the roll is paused (`kubectl kiln roll pause`).
    pub paused: Gauge,
    /// How long each drain took, blocked ones included.
    pub drain_seconds: Histogram,
}

impl RollMetrics {
    pub fn new(selector: &str, target: &str) -> RollMetrics {
        let labels = [
            (Cow::Borrowed("pool"), Cow::Owned(selector.to_string())),
            (Cow::Borrowed("target"), Cow::Owned(target.to_string())),
        ];
        let mut registry = Registry::with_prefix_and_labels("kiln_roll", labels.into_iter());
        let m = RollMetrics {
            to_roll: Gauge::default(),
            in_flight: Gauge::default(),
            replaced: Counter::default(),
            halted_nodes: Counter::default(),
            halted: Gauge::default(),
            paused: Gauge::default(),
            // 1 s to about 4.5 h: a drain waits on budgets for minutes to hours.
            drain_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            registry: Registry::default(),
        };
        registry.register(
            "nodes_to_roll",
            "Nodes of the pool not on the target bundle when the roll started",
            m.to_roll.clone(),
        );
        registry.register(
            "nodes_in_flight",
            "Nodes being drained, replaced or reprovisioned now",
            m.in_flight.clone(),
        );
        registry.register(
            "nodes_replaced",
            "Nodes moved to the target bundle: replaced by a new node or reprovisioned in place",
            m.replaced.clone(),
        );
        registry.register(
            "nodes_halted",
            "Nodes the roll halted on, left cordoned with the reason in their annotations and Events",
            m.halted_nodes.clone(),
        );
        registry.register(
            "halted",
            "1 once the roll halted: no other node starts",
            m.halted.clone(),
        );
        registry.register(
            "paused",
            "1 while the roll is paused (kubectl kiln roll pause)",
            m.paused.clone(),
        );
        registry.register_with_unit(
            "drain_duration",
            "How long each drain of the roll took, blocked ones included",
            Unit::Seconds,
            m.drain_seconds.clone(),
        );
        RollMetrics { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Text that is not an address to listen on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address to listen on (host:port, or :port for every address)")]
pub struct BadBindAddress(pub String);

/// `:9090` (every address, as controller-runtime's `--metrics-bind-address` takes it) or
/// `host:port`.
pub fn parse_bind_address(s: &str) -> Result<SocketAddr, BadBindAddress> {
    let full = match s.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => s.to_string(),
    };
    full.parse().map_err(|_| BadBindAddress(s.to_string()))
}

/// A listening metrics endpoint; it stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listen on `addr` (bound now, so a port in use is an error before the roll touches anything)
/// and serve `GET /metrics`.
pub async fn serve(addr: SocketAddr, metrics: Arc<RollMetrics>) -> Result<Server> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for --metrics-bind-address"))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], m.render()) }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the metrics endpoint stopped: {e}");
        }
    });
    Ok(Server { addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_each_figure_with_the_pool_and_target() {
        let m = RollMetrics::new("pool=blue", "B");
        m.to_roll.set(3);
        m.in_flight.inc();
        m.replaced.inc();
        m.drain_seconds.observe(5.0);
        let text = m.render();
        for line in [
            "# TYPE kiln_roll_nodes_replaced counter",
            "kiln_roll_nodes_replaced_total{pool=\"pool=blue\",target=\"B\"} 1",
            "kiln_roll_nodes_to_roll{pool=\"pool=blue\",target=\"B\"} 3",
            "kiln_roll_nodes_in_flight{pool=\"pool=blue\",target=\"B\"} 1",
            "kiln_roll_nodes_halted_total{pool=\"pool=blue\",target=\"B\"} 0",
            "# UNIT kiln_roll_drain_duration_seconds seconds",
            "kiln_roll_drain_duration_seconds_count{pool=\"pool=blue\",target=\"B\"} 1",
            "kiln_roll_drain_duration_seconds_bucket{pool=\"pool=blue\",target=\"B\",le=\"4.0\"} 0",
            "kiln_roll_drain_duration_seconds_bucket{pool=\"pool=blue\",target=\"B\",le=\"8.0\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn bind_addresses_are_host_port_or_a_bare_port() {
        assert_eq!(parse_bind_address(":9090").unwrap(), "0.0.0.0:9090".parse().unwrap());
        assert_eq!(
            parse_bind_address("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert!(parse_bind_address("9090")
            .unwrap_err()
            .to_string()
            .contains("\"9090\" is not an address"));
    }
}
