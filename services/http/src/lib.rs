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
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "http listener failed");
    }
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
}
