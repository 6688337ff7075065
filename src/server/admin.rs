//! The admin endpoint (`--admin ADDR`, alias `--metrics`): HTTP/1.1 on
//! hyper, on its own listener so no scraper or prober can disturb the
//! echo listeners.
//!
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text).
//! - `GET /livez`: 200 while the process is serving.
//! - `GET /readyz`: 200 once every listener is bound, 503 from the moment
//!   a shutdown starts (during `--drain-delay` a load balancer sees the
//!   instance leave while it still serves).
//! - `HEAD` as `GET` without a body; other methods 405; other paths 404.
//!
//! A client that sends nothing or garbage cannot hold it: a request head
//! must arrive within [`HEAD_TIMEOUT`] (hyper's header read timeout, which
//! needs a timer set or it is silently off), hyper answers a request that
//! does not parse with 400 at once, and past [`MAX_CLIENTS`] connections a
//! new one gets 503 at once rather than a wait. Probes log at DEBUG only.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{io::AsyncWriteExt, net::TcpListener};
use tracing::debug;

use super::metrics::Metrics;

/// How long a client may take to send a request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; past this a connection gets 503 at once.
pub const MAX_CLIENTS: usize = 1024;
/// Largest request head (and read buffer) per connection.
const MAX_HEAD: usize = 16 * 1024;

/// What the endpoint reports.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// False from the moment a shutdown starts.
    ready: AtomicBool,
}

impl AdminState {
    /// Ready: it is created once every listener is bound.
    pub fn new(metrics: Arc<Metrics>) -> AdminState {
        AdminState {
            metrics,
            ready: AtomicBool::new(true),
        }
    }

    /// A shutdown has started: `/readyz` answers 503 from now on.
    pub fn not_ready(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }
}

/// Serves until the task is aborted (at the end of the shutdown, so that
/// probes see the drain).
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            debug!(%peer, "admin: {MAX_CLIENTS} clients already; 503");
            tokio::spawn(async move {
                let busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\nconnection: close\r\n\r\nbusy\n";
                let _ = tokio::time::timeout(HEAD_TIMEOUT, stream.write_all(busy)).await;
            });
            continue;
        };
        let (http, state) = (http.clone(), state.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&state, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(error) = http.serve_connection(TokioIo::new(stream), service).await {
                debug!(%peer, %error, "admin connection ended");
            }
        });
    }
}

fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    debug!(method = %request.method(), path, "admin request");
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n")
            .map(|mut response| {
                response
                    .headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
                response
            })
            .unwrap_or_default();
    }
    let response = match path {
        "/metrics" => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(state.metrics.render()))),
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /livez or /readyz\n",
        ),
    };
    response.unwrap_or_default()
}

fn text(status: StatusCode, body: &'static str) -> hyper::http::Result<Response<Full<Bytes>>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
}
