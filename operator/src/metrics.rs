//! The operator's own `/metrics` (Prometheus text, the `prometheus` crate as the design
//! names), `/healthz` (the process runs) and `/readyz` (the stores opened and the API server
//! answered), on port 8081 in the chart.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `mailfleet_operator_reconciles_total{kind, result}`: result `ok`, `error`.
    pub reconciles: IntCounterVec,
    /// `mailfleet_operator_reconcile_duration_seconds{kind}`.
    pub duration: HistogramVec,
    /// `mailfleet_operator_store_writes_total{kind}`: reconciles that changed the store.
    pub writes: IntCounterVec,
    /// `mailfleet_operator_leader`: 1 while this pod holds the Lease.
    pub leader: IntGauge,
    pub ready: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "mailfleet_operator_reconciles_total",
                "Reconciles by resource kind and result.",
            ),
            &["kind", "result"],
        )
        .expect("metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "mailfleet_operator_reconcile_duration_seconds",
                "Time one reconcile took, by resource kind.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["kind"],
        )
        .expect("metric");
        let writes = IntCounterVec::new(
            Opts::new(
                "mailfleet_operator_store_writes_total",
                "Reconciles that changed the metadata store, by resource kind.",
            ),
            &["kind"],
        )
        .expect("metric");
        let leader = IntGauge::new(
            "mailfleet_operator_leader",
            "1 while this pod holds the leader Lease.",
        )
        .expect("metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(writes.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("register");
        }
        for kind in ["Domain", "User"] {
            for result in ["ok", "error"] {
                reconciles.with_label_values(&[kind, result]);
            }
            writes.with_label_values(&[kind]);
        }
        Metrics {
            registry,
            reconciles,
            duration,
            writes,
            leader,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }

    /// Serves the endpoints until the process ends.
    pub async fn serve(self, addr: std::net::SocketAddr) -> anyhow::Result<()> {
        use axum::{http::StatusCode, routing::get, Router};
        let m = self.clone();
        let ready = self.ready.clone();
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let m = m.clone();
                    async move { m.render() }
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = ready.clone();
                    async move {
                        if ready.load(Ordering::Relaxed) {
                            (StatusCode::OK, "ready")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "starting")
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind(addr).await?;
        axum::serve(listener, app).await?;
        Ok(())
    }
}
