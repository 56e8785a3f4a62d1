//! The HTTP side of a front-end. For now: the probes an orchestrator asks.
//!
//! - `GET /healthz` (liveness): 200 while the process can answer at all. It checks no
//!   backend on purpose: a Redis outage must not make Kubernetes restart every pod, since a
//!   restart cures nothing and drops every IMAP session.
//! - `GET /readyz` (readiness): asks each storage backend one cheap question
//!   ([`mailfleet_storage::Stores::check`]) under a deadline and answers 200 when all answer,
//!   503 otherwise, with a JSON body naming each backend and its error. A load balancer
//!   stops sending new connections to a node that cannot reach its stores, and sends them
//!   again by itself once the check passes.
//!
//! - `GET /metrics` ([`metrics_router`], on unless `http.metrics = false`): every metric
//!   of the process ([`mailfleet_telemetry`]) in the Prometheus text format. It is on the
//!   probe listener because that is the one a cluster's scraper already reaches, and it
//!   needs no authentication for the same reason the probes do not: the listener is meant
//!   for the cluster network, and no label carries an address, a user or a mailbox.
//!
//! Sockets stay in [`serve`]; [`router`] is plain axum, tested without a network.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use mailfleet_core::net::{PerIpGuard, PerIpLimit};
use mailfleet_storage::Stores;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::Instrument;

#[derive(Clone)]
struct AppState {
    stores: Stores,
    readiness_timeout: Duration,
}

/// The routes, on any listener.
pub fn router(stores: Stores, readiness_timeout: Duration) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            stores,
            readiness_timeout,
        })
}

/// `GET /metrics`, merged into [`router`] when metrics are on. Each scrape first brings
/// the gauges that are read rather than counted up to date: `mailfleet_ready` (the
/// `/readyz` check) and the outbound queue's depth and age (one query of the metadata
/// store), each within `readiness_timeout`; a store that does not answer leaves the
/// queue gauges as they were and `mailfleet_ready` at 0.
pub fn metrics_router(stores: Stores, readiness_timeout: Duration) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(AppState {
            stores,
            readiness_timeout,
        })
}

/// Sets `mailfleet_ready` and the queue gauges.
async fn refresh_gauges(state: &AppState) {
    let m = mailfleet_telemetry::metrics();
    let ready = match tokio::time::timeout(state.readiness_timeout, state.stores.check()).await {
        Ok(checks) => checks.iter().all(|(_, r)| r.is_ok()),
        Err(_) => false,
    };
    m.set_ready(ready);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let stats = tokio::time::timeout(
        state.readiness_timeout,
        state.stores.meta.outbound_queue_stats(now),
    )
    .await;
    match stats {
        Ok(Ok(q)) => {
            let age = |since: Option<i64>| {
                Duration::from_secs(since.map_or(0, |s| u64::try_from(now - s).unwrap_or(0)))
            };
            m.set_queue("due", q.due, age(q.due_since));
            m.set_queue("deferred", q.deferred, age(q.oldest_deferred));
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "reading the queue for the metrics failed"),
        Err(_) => tracing::warn!("reading the queue for the metrics timed out"),
    }
}

async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    refresh_gauges(&state).await;
    let m = mailfleet_telemetry::metrics();
    match m.render() {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, m.content_type())], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering metrics failed: {e}\n"),
            )
                .into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let checks = match tokio::time::timeout(state.readiness_timeout, state.stores.check()).await {
        Ok(checks) => checks
            .into_iter()
            .map(|(name, r)| (name, r.err().map(|e| e.to_string())))
            .collect::<Vec<_>>(),
        Err(_) => vec![(
            "storage",
            Some(format!(
                "no answer within {} ms",
                state.readiness_timeout.as_millis()
            )),
        )],
    };
    let ready = checks.iter().all(|(_, e)| e.is_none());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, e)| {
            let v = match e {
                None => serde_json::json!({"ok": true}),
                Some(e) => serde_json::json!({"ok": false, "error": e}),
            };
            (name.to_string(), v)
        })
        .collect();
    if !ready {
        tracing::warn!(checks = %serde_json::Value::Object(body.clone()), "not ready");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({"ready": ready, "checks": body})),
    )
}

/// Serves `router` on `listener` until `shutdown` fires, counting connections against the
/// node's per-address cap like every other listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut shutdown: mailfleet_core::shutdown::Shutdown,
    per_ip: PerIpLimit,
) {
    let listener = CappedListener {
        inner: listener,
        per_ip,
    };
    let router = router.layer(axum::middleware::from_fn(trace_request));
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "http listener failed");
    }
}

/// Each request is a span (`http.request`); a W3C `traceparent` header makes it a child of
/// the caller's span, so a request traced by a proxy or a client continues its trace here.
/// A malformed header is ignored (a new trace starts), as the W3C recommendation says.
async fn trace_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().as_str().to_string();
    let span = tracing::debug_span!(
        "http.request",
        otel.name = %format_args!("{method} {}", req.uri().path()),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(parent) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        mailfleet_telemetry::trace::set_parent(&span, parent);
    }
    let response = next.run(req).instrument(span.clone()).await;
    span.record(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    );
    response
}

/// A TCP listener that refuses (closes at once) connections from an address that already
/// holds its share of the node's connections ([`PerIpLimit`]); an HTTP client sees a
/// reset connection, as from nginx's `limit_conn`, without a request read or a task spawned.
struct CappedListener {
    inner: tokio::net::TcpListener,
    per_ip: PerIpLimit,
}

/// An accepted connection and its place in the per-address count (released on drop).
struct CountedStream {
    stream: tokio::net::TcpStream,
    _guard: PerIpGuard,
}

impl axum::serve::Listener for CappedListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // As axum's own TcpListener does: back off on errors such as EMFILE.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.per_ip.try_acquire(peer.ip()) {
                Some(guard) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        CountedStream {
                            stream,
                            _guard: guard,
                        },
                        peer,
                    );
                }
                None => {
                    tracing::info!(peer = %peer, "http connection refused: too many from this address");
                    drop(stream);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_json(router: Router, path: &str) -> (StatusCode, serde_json::Value) {
        let resp = router
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn ready_when_every_backend_answers() {
        let dir = tempfile::tempdir().expect("tmp");
        let stores = mailfleet_storage::embedded::open(dir.path(), 8).expect("stores");
        let (status, body) = get_json(router(stores, Duration::from_secs(5)), "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["ready"], true);
        for backend in ["metadata", "blobs", "coordination"] {
            assert_eq!(body["checks"][backend]["ok"], true, "{body}");
        }
    }

    #[tokio::test]
    async fn not_ready_names_the_failing_backend() {
        let dir = tempfile::tempdir().expect("tmp");
        let stores = mailfleet_storage::embedded::open(dir.path(), 8).expect("stores");
        // Take the blob directory away and put a file in its place: reads now fail.
        std::fs::remove_dir_all(dir.path().join("blobs")).expect("rm");
        std::fs::write(dir.path().join("blobs"), b"not a directory").expect("file");
        let (status, body) =
            get_json(router(stores.clone(), Duration::from_secs(5)), "/readyz").await;
        let healthz = router(stores, Duration::from_secs(5))
            .oneshot(Request::get("/healthz").body(Body::empty()).expect("req"))
            .await
            .expect("resp");
        assert_eq!(
            healthz.status(),
            StatusCode::OK,
            "liveness ignores backends"
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["checks"]["blobs"]["ok"], false, "{body}");
        assert_eq!(body["checks"]["metadata"]["ok"], true, "{body}");
    }

    /// `GET /metrics` answers in the Prometheus text format with the families every
    /// front-end counts in, and with what was counted.
    #[tokio::test]
    async fn metrics_are_served_in_prometheus_text_format() {
        let dir = tempfile::tempdir().expect("tmp");
        let stores = mailfleet_storage::embedded::open(dir.path(), 8).expect("stores");
        let m = mailfleet_telemetry::metrics();
        m.imap.record(
            m.imap.command("NOOP"),
            mailfleet_telemetry::ImapStatus::Ok,
            Duration::ZERO,
        );
        let app = router(stores.clone(), Duration::from_secs(5))
            .merge(metrics_router(stores, Duration::from_secs(5)));
        let resp = app
            .oneshot(Request::get("/metrics").body(Body::empty()).expect("req"))
            .await
            .expect("resp");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/plain; version=0.0.4")
        );
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .expect("body");
        let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
        for (family, kind) in [
            ("mailfleet_build_info", "gauge"),
            ("mailfleet_connections_active", "gauge"),
            ("mailfleet_connections_total", "counter"),
            ("mailfleet_tls_handshakes_total", "counter"),
            ("mailfleet_commands_total", "counter"),
            ("mailfleet_command_duration_seconds", "histogram"),
            ("mailfleet_smtp_messages_accepted_total", "counter"),
            ("mailfleet_smtp_delivery_duration_seconds", "histogram"),
            ("process_resident_memory_bytes", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{family} ({kind}) missing"
            );
        }
        let noop = r#"mailfleet_commands_total{command="NOOP",protocol="imap",result="ok"} "#;
        let count: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(noop))
            .and_then(|v| v.parse().ok())
            .expect("the NOOP series");
        assert!(count >= 1.0, "{count}");
        // Without the metrics router (`http.metrics = false`) there is no such page.
        let dir = tempfile::tempdir().expect("tmp");
        let stores = mailfleet_storage::embedded::open(dir.path(), 8).expect("stores");
        let resp = router(stores, Duration::from_secs(5))
            .oneshot(Request::get("/metrics").body(Body::empty()).expect("req"))
            .await
            .expect("resp");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
}
