//! WebSocket echo (RFC 6455) on tokio-tungstenite, over a connection hyper
//! has upgraded. Every data message comes back as one message of the same
//! type and payload (a fragmented one whole); ping gets pong; a close frame
//! gets a close frame with the same code, then the server closes. Over
//! `max_frame_length` is 1009, invalid UTF-8 in text 1007, a protocol
//! violation 1002; at a graceful shutdown pending echoes go out, then 1001.
//! No extension is negotiated.
//!
//! Echoes of messages already read are sent in one flush, as the TCP echo
//! writes a whole batch of frames at once. Between messages the WebSocket
//! is parked (see [`park`]): the bare stream waits for readiness holding no
//! buffer, as the TCP echo does.

mod park;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http_body_util::Full;
use hyper::{header, Request, Response, StatusCode};
use tokio_tungstenite::{
    tungstenite::{
        self,
        protocol::{frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};

use super::shutdown::{Stage, Stages};
use super::{
    echo::{ConnectionSettings, LINGER},
    http::status,
    metrics::Metrics,
    reason::CloseReason,
    session::{Connection, Shared},
    timer::IdleTimer,
};
use crate::{codec::FrameError, stream::EchoStream};
use park::Scanned;

/// Bytes read from the socket at a time. tungstenite allocates this while
/// a WebSocket is unparked, so it is kept small (its default is 128 KiB).
const READ_BUFFER: usize = 4 * 1024;

type Socket<S> = WebSocketStream<Scanned<S>>;

/// Should tokio-tungstenite's constructor ever wait (it does not today).
const SETUP_WAITED: &str = "setting up the WebSocket would have waited";

/// The handshake's answer when `request` asks for a WebSocket: 101 with
/// the accept key, or 400/426 when the request is not a valid upgrade.
/// `None` for any other request.
pub fn accept<B>(request: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let headers = request.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY);
    if request.method() != hyper::Method::GET
        || !has(header::CONNECTION, "upgrade")
        || key.is_none()
    {
        return Some(status(
            StatusCode::BAD_REQUEST,
            "not a valid WebSocket upgrade\n",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut response = status(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only\n");
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            header::HeaderValue::from_static("13"),
        );
        return Some(response);
    }
    let accept = tungstenite::handshake::derive_accept_key(key?.as_bytes());
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let set = response.headers_mut();
    set.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    set.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    set.insert(header::SEC_WEBSOCKET_ACCEPT, accept.parse().ok()?);
    Some(response)
}

/// Echoes messages until the WebSocket ends; returns why. `stream` is the
/// connection hyper upgraded, `already` what hyper read past the request.
pub async fn echo<S: EchoStream>(
    stream: S,
    already: Bytes,
    connection: &Connection,
    settings: &ConnectionSettings,
    shared: &Shared,
) -> CloseReason {
    let max = settings.codec.max_frame_length();
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(READ_BUFFER);
    let unpark = |stream, already| unpark(stream, already, config);
    let scanned = Scanned::new(stream, &already);
    // A copy: `already` is a slice of hyper's whole read buffer, which it
    // would otherwise keep for the life of the WebSocket.
    let copied = already.to_vec();
    drop(already);
    let Some(mut ws) = unpark(scanned, copied) else {
        return CloseReason::Error(std::io::Error::other(SETUP_WAITED));
    };
    let metrics = shared.gate.metrics();
    let counters = metrics.map(|metrics| metrics.echo(connection.kind));
    let shutdown = &connection.shutdown;
    // Pinned once (a new cancellation future per wake would lock the token
    // each time), and one registration for both stages, not two.
    let mut stages = std::pin::pin!(shutdown.stages());
    // The same lazy timer as the TCP echo: activity only records a time.
    let mut idle = IdleTimer::new(settings.idle_timeout, None, None);
    loop {
        // By their flags: a stage may have passed while a burst ran.
        if shutdown.is_cut() {
            return CloseReason::Cut;
        }
        if shutdown.is_draining() {
            let reason = CloseReason::Shutdown;
            return Box::pin(close(&mut ws, CloseCode::Away, reason, metrics)).await;
        }
        if ws.get_ref().holds_nothing() {
            // Moved out through a binding dropped here, so the box is freed
            // too, not only what it held.
            let mut scanned = {
                let parked = ws;
                (*parked).into_inner()
            };
            let woke = match parked(&mut scanned.stream, stages.as_mut(), &mut idle).await {
                Ok(woke) => woke,
                Err(end) => return end,
            };
            ws = match unpark(Scanned::new(scanned.stream, &[]), Vec::new()) {
                Some(ws) => ws,
                None => return CloseReason::Error(std::io::Error::other(SETUP_WAITED)),
            };
            if let Some(reason) = woke {
                return Box::pin(close(&mut ws, CloseCode::Away, reason, metrics)).await;
            }
        }
        let item = tokio::select! {
            biased;
            item = ws.next() => item,
            stage = &mut stages => match stage {
                Stage::Cut => return CloseReason::Cut,
                Stage::Drain => return Box::pin(close(&mut ws, CloseCode::Away, CloseReason::Shutdown, metrics)).await,
            },
            reason = idle.expired(false) => return Box::pin(close(&mut ws, CloseCode::Away, reason, metrics)).await,
        };
        idle.touch();
        // A client that does not read its echoes holds the burst in a
        // write: only the cut ends it there.
        let ended = tokio::select! {
            biased;
            end = burst(&mut ws, item, counters, max, metrics) => end,
            () = until_cut(stages.as_mut()) => Some(CloseReason::Cut),
        };
        if let Some(end) = ended {
            return end;
        }
        idle.touch();
    }
}

/// The WebSocket over `stream`, boxed: parking drops it (and its buffers)
/// and keeps only the stream. tokio-tungstenite's constructor is an async
/// fn that never waits; run at once, its state is not kept in the caller's.
fn unpark<S: EchoStream>(
    stream: Scanned<S>,
    already: Vec<u8>,
    config: WebSocketConfig,
) -> Option<Box<Socket<S>>> {
    WebSocketStream::from_partially_read(stream, already, Role::Server, Some(config))
        .now_or_never()
        .map(Box::new)
}

/// Waits, parked, for the next input; `Ok(Some)` when the WebSocket is to
/// be closed instead (the drain, the idle timeout), `Err` when it ends at
/// once (the cut, a socket error).
async fn parked<S: EchoStream>(
    stream: &mut S,
    mut stages: std::pin::Pin<&mut Stages<'_>>,
    idle: &mut IdleTimer,
) -> Result<Option<CloseReason>, CloseReason> {
    // Input first, so that what arrived before the drain is echoed before
    // the close; the cut is seen by its flag at the top of the loop, or
    // wakes the task through `stages`.
    tokio::select! {
        biased;
        // `move`: the closure holds the `&mut`, so the stream need only be
        // Send, not Sync.
        ready = std::future::poll_fn(move |cx| stream.poll_read_ready(cx)) => match ready {
            Ok(()) => Ok(None),
            Err(error) => Err(CloseReason::Error(error)),
        },
        stage = &mut stages => match stage {
            Stage::Cut => Err(CloseReason::Cut),
            Stage::Drain => Ok(Some(CloseReason::Shutdown)),
        },
        reason = idle.expired(false) => Ok(Some(reason)),
    }
}

/// Resolves at the cut (passing the drain by).
async fn until_cut(mut stages: std::pin::Pin<&mut Stages<'_>>) {
    while stages.as_mut().await != Stage::Cut {}
}

/// Echoes `item` and every message already readable after it, then
/// flushes once; `Some` when the WebSocket has ended.
async fn burst<S: EchoStream>(
    ws: &mut Socket<S>,
    mut item: Option<Result<Message, tungstenite::Error>>,
    counters: Option<&super::metrics::EchoCounters>,
    max: usize,
    metrics: Option<&Metrics>,
) -> Option<CloseReason> {
    // Echo every message that is already readable, then flush once.
    loop {
        match item {
            Some(Ok(message)) if message.is_text() || message.is_binary() => {
                if let Some(counters) = counters {
                    let len = message.len() as u64;
                    counters.bytes_received.inc_by(len);
                    counters.bytes_echoed.inc_by(len);
                    counters.echoed(1);
                }
                if let Err(error) = ws.feed(message).await {
                    return Some(Box::pin(from_error(ws, error, max, metrics)).await);
                }
            }
            other => {
                if let Err(error) = ws.flush().await {
                    return Some(Box::pin(from_error(ws, error, max, metrics)).await);
                }
                if let Some(end) = Box::pin(control(ws, other, max, metrics)).await {
                    return Some(end);
                }
            }
        }
        match ws.next().now_or_never() {
            Some(next) => item = next,
            None => break,
        }
    }
    if let Err(error) = ws.flush().await {
        return Some(Box::pin(from_error(ws, error, max, metrics)).await);
    }
    None
}

// The ends (close, errors, control frames) are boxed where they are called:
// inline, their futures (timeouts, lingering reads) would size the state
// every parked WebSocket keeps.

/// Everything but a data message: `Some` when the WebSocket has ended.
async fn control<S: EchoStream>(
    ws: &mut Socket<S>,
    item: Option<Result<Message, tungstenite::Error>>,
    max: usize,
    metrics: Option<&Metrics>,
) -> Option<CloseReason> {
    match item {
        None => Some(CloseReason::ClientClosed),
        // tungstenite has queued the reply: pong, or the close frame with
        // the client's code, which the flush before this sent.
        Some(Ok(Message::Close(frame))) => {
            if let Some(metrics) = metrics {
                metrics.websocket_closed(frame.map_or(1005, |frame| u16::from(frame.code)));
            }
            linger(ws).await;
            Some(CloseReason::ClientClosed)
        }
        Some(Ok(_)) => None,
        Some(Err(error)) => Some(from_error(ws, error, max, metrics).await),
    }
}

/// A read or write error: the close code it calls for, sent when the
/// connection can still carry it.
async fn from_error<S: EchoStream>(
    ws: &mut Socket<S>,
    error: tungstenite::Error,
    max: usize,
    metrics: Option<&Metrics>,
) -> CloseReason {
    use tungstenite::Error;
    let invalid = |what: String| {
        CloseReason::Error(std::io::Error::new(std::io::ErrorKind::InvalidData, what))
    };
    match error {
        Error::Capacity(problem) => {
            let reason = CloseReason::FrameTooLong(FrameError::LengthTooLarge {
                length: match problem {
                    tungstenite::error::CapacityError::MessageTooLong { size, .. } => size,
                    _ => max + 1,
                },
                limit: max,
            });
            close(ws, CloseCode::Size, reason, metrics).await
        }
        Error::Utf8(_) => {
            close(
                ws,
                CloseCode::Invalid,
                invalid("invalid UTF-8 in a text message".into()),
                metrics,
            )
            .await
        }
        Error::Protocol(problem) => {
            close(
                ws,
                CloseCode::Protocol,
                invalid(format!("WebSocket protocol violation: {problem}")),
                metrics,
            )
            .await
        }
        Error::ConnectionClosed | Error::AlreadyClosed => CloseReason::ClientClosed,
        Error::Io(error) => CloseReason::Error(error),
        other => CloseReason::Error(std::io::Error::other(other)),
    }
}

/// Sends a close frame with `code`, then waits (at most [`LINGER`]) for the
/// client's reply, so the close is not lost to a reset.
async fn close<S: EchoStream>(
    ws: &mut Socket<S>,
    code: CloseCode,
    reason: CloseReason,
    metrics: Option<&Metrics>,
) -> CloseReason {
    if let Some(metrics) = metrics {
        metrics.websocket_closed(u16::from(code));
    }
    let frame = CloseFrame {
        code,
        reason: reason.label().into(),
    };
    if tokio::time::timeout(LINGER, ws.close(Some(frame)))
        .await
        .is_ok()
    {
        linger(ws).await;
    }
    reason
}

/// Reads (and drops) what the client still sends until it closes.
async fn linger<S: EchoStream>(ws: &mut Socket<S>) {
    let _ =
        tokio::time::timeout(LINGER, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}
