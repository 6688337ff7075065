//! HTTP/1.1 on `ws:` and `wss:` listeners, on hyper: a WebSocket upgrade
//! on any path becomes a WebSocket echo ([`super::websocket`]); any other
//! request is answered with a JSON object describing it (method, path,
//! query, headers, body, client address after PROXY, TLS details).
//!
//! The connection is admitted, PROXY-read and TLS-terminated like any
//! other (see [`super::session`]); this module only speaks HTTP over it.
//! Keep-alive and HTTP/1.0 are hyper's; a body over `max_frame_length`
//! gets 413; a drain lets in-flight requests finish and closes idle
//! keep-alive connections.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, header, upgrade::OnUpgrade, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::debug;

use super::{
    reason::CloseReason,
    session::{Connection, Live, Shared},
    websocket,
};
use crate::stream::EchoStream;

/// How long a request head may take when the frame timeout is off.
const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What a `wss:` handshake negotiated, for the JSON echo.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TlsInfo {
    pub version: String,
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub client_subject: Option<String>,
}

impl TlsInfo {
    pub fn of(session: &rustls::ServerConnection, client_subject: Option<String>) -> TlsInfo {
        let version = match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            other => format!("{other:?}"),
        };
        TlsInfo {
            version,
            sni: session.server_name().map(str::to_owned),
            alpn: session
                .alpn_protocol()
                .map(|alpn| String::from_utf8_lossy(alpn).into_owned()),
            client_subject,
        }
    }
}

/// What every request on one connection shares.
struct Context {
    client: String,
    listener: Arc<str>,
    tls: Option<TlsInfo>,
    max_body: usize,
    metrics: Option<Arc<super::metrics::Metrics>>,
    /// The upgrade of the request that asked for a WebSocket, for the
    /// connection's task to take once hyper hands the stream back.
    upgrade: Mutex<Option<OnUpgrade>>,
}

/// Serves HTTP on one connection until it closes, is drained or cut;
/// a WebSocket upgrade continues as a WebSocket echo in this same task, so
/// it keeps the connection's admission and shutdown.
pub async fn serve<S: EchoStream + Send + 'static>(
    stream: S,
    connection: Connection,
    tls: Option<TlsInfo>,
    shared: &Shared,
    live: &Live,
) {
    let opened = Instant::now();
    // Boxed, and freed once hyper is done: a WebSocket keeps only this
    // function's small state, not the HTTP exchange's.
    let (served, upgrade) = Box::pin(exchange(stream, &connection, tls, shared, live)).await;
    // hyper hands back the stream it was given (and what it read past
    // the request), so the WebSocket runs on it directly: readiness
    // without a buffer while idle, and no boxed I/O layer per read.
    let reason = match (served, upgrade) {
        (Ok(()), Some(upgrade)) => match upgrade.await.map(|up| up.downcast::<TokioIo<S>>()) {
            Ok(Ok(parts)) => {
                Box::pin(websocket::echo(
                    parts.io.into_inner(),
                    parts.read_buf,
                    &connection,
                    &live.settings,
                    shared,
                ))
                .await
            }
            Ok(Err(_)) => CloseReason::Error(std::io::Error::other(
                "the upgraded connection is not the stream that was served",
            )),
            Err(error) => CloseReason::Error(std::io::Error::other(error)),
        },
        (Ok(()), None) => CloseReason::ClientClosed,
        (Err(reason), _) => reason,
    };
    if let Some(metrics) = shared.gate.metrics() {
        metrics.closed(&reason, opened.elapsed());
    }
    let peer = &connection.peer;
    if reason.is_routine() {
        debug!(%peer, %reason, "connection from {peer} closed: {reason}");
    } else {
        tracing::info!(%peer, %reason, "connection from {peer} closed: {reason}");
    }
}

/// HTTP on `stream` until hyper is done with it; the upgrade a WebSocket
/// request asked for, if any.
async fn exchange<S: EchoStream + Send + 'static>(
    stream: S,
    connection: &Connection,
    tls: Option<TlsInfo>,
    shared: &Shared,
    live: &Live,
) -> (Result<(), CloseReason>, Option<OnUpgrade>) {
    let context = Arc::new(Context {
        client: connection.peer.clone(),
        listener: connection.listener.clone(),
        tls,
        max_body: live.settings.codec.max_frame_length(),
        metrics: shared.gate.metrics_handle(),
        upgrade: Mutex::new(None),
    });
    let service = {
        let context = context.clone();
        hyper::service::service_fn(move |request| respond(request, context.clone()))
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(live.settings.frame_timeout.unwrap_or(DEFAULT_HEAD_TIMEOUT));
    // Boxed and dropped once served: a WebSocket that outlives the HTTP
    // exchange does not keep hyper's connection state (buffers, parser) in
    // its task.
    let mut conn = Box::pin(
        http.serve_connection(TokioIo::new(stream), service)
            .with_upgrades(),
    );
    let shutdown = &connection.shutdown;
    let served = tokio::select! {
        biased;
        _ = shutdown.cut() => Err(CloseReason::Cut),
        served = &mut conn => served.map_err(http_error),
        _ = shutdown.draining() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = shutdown.cut() => Err(CloseReason::Cut),
                served = &mut conn => served.map_err(http_error).and(Err(CloseReason::Shutdown)),
            }
        }
    };
    drop(conn);
    let upgrade = context
        .upgrade
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    (served, upgrade)
}

fn http_error(error: hyper::Error) -> CloseReason {
    if error.is_timeout() {
        CloseReason::IdleTimeout
    } else {
        CloseReason::Error(std::io::Error::other(error))
    }
}

async fn respond(
    request: Request<Incoming>,
    context: Arc<Context>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = answer(request, &context).await;
    if let Some(metrics) = &context.metrics {
        metrics.http_response(response.status().as_u16());
    }
    Ok(response)
}

async fn answer(mut request: Request<Incoming>, context: &Context) -> Response<Full<Bytes>> {
    debug!(method = %request.method(), path = request.uri().path(), "http request");
    if let Some(response) = websocket::accept(&request) {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            *context
                .upgrade
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                Some(hyper::upgrade::on(&mut request));
        }
        return response;
    }
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, context.max_body).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body over max_frame_length\n",
            );
        }
    };
    let described = describe(&parts, &body, context);
    let mut response = Response::new(Full::new(Bytes::from(described.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The contract's JSON description of a request.
fn describe(
    parts: &hyper::http::request::Parts,
    body: &Bytes,
    context: &Context,
) -> serde_json::Value {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let mut described = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "headers": headers,
        "body_bytes": body.len(),
        "client": context.client,
        "listener": &*context.listener,
        "tls": context.tls,
        "hostname": hostname(),
    });
    if let Some(instance) = instance() {
        described["instance"] = instance.clone();
    }
    match std::str::from_utf8(body) {
        Ok(text) => described["body"] = text.into(),
        Err(_) => {
            described["body_base64"] = base64::engine::general_purpose::STANDARD
                .encode(body)
                .into()
        }
    }
    described
}

pub(super) fn status(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Kubernetes pod identity from the Downward API (`POD_NAME`,
/// `POD_NAMESPACE`, `NODE_NAME`), when any is set; read once.
fn instance() -> Option<&'static serde_json::Value> {
    static INSTANCE: std::sync::OnceLock<Option<serde_json::Value>> = std::sync::OnceLock::new();
    INSTANCE
        .get_or_init(|| {
            let var = |name| std::env::var(name).ok().filter(|value| !value.is_empty());
            let (pod, namespace, node) = (var("POD_NAME"), var("POD_NAMESPACE"), var("NODE_NAME"));
            (pod.is_some() || namespace.is_some() || node.is_some())
                .then(|| serde_json::json!({ "pod": pod, "namespace": namespace, "node": node }))
        })
        .as_ref()
}

/// This instance's name, read once: the pod's (`POD_NAME`) under
/// Kubernetes, else the machine's.
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("POD_NAME")
            .ok()
            .filter(|name| !name.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|name| name.trim().to_owned())
            .unwrap_or_default()
    })
}
