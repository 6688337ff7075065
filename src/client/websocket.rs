//! The client's WebSocket side (`ws://HOST:PORT/PATH`, `wss://…`): the
//! opening handshake over a connection [`super::connect`] made, and the
//! interactive exchange. Each stdin line, without its line ending, is one
//! text message (`--binary`: binary); each echo is printed followed by
//! `\n`. End of input sends a close frame (1000) and waits for the
//! server's close and for every echo.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tokio_tungstenite::{
    tungstenite::{
        protocol::{frame::coding::CloseCode, CloseFrame},
        Message,
    },
    WebSocketStream,
};

use super::{connect::Target, ClientError};
use crate::{addr::Endpoint, tls::ClientStream};

/// A WebSocket over plain TCP or TLS (boxed: tungstenite's state is a few
/// hundred bytes, and rustls's more).
pub enum WsConn {
    Plain(Box<WebSocketStream<TcpStream>>),
    Tls(Box<WebSocketStream<ClientStream<TcpStream>>>),
}

/// The opening handshake over `stream`, within `timeout`.
pub async fn handshake<S>(
    target: &Target,
    stream: S,
    timeout: Duration,
) -> Result<WebSocketStream<S>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (scheme, addr) = match &target.endpoint {
        Endpoint::Wss(addr) => ("wss", addr),
        Endpoint::Ws(addr) => ("ws", addr),
        other => unreachable!("{other} is not a WebSocket address"),
    };
    let url = format!("{scheme}://{addr}{}", target.path);
    let failed =
        |why: String| ClientError::Failed(format!("WebSocket handshake with {url} failed: {why}"));
    let (ws, _response) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::client_async(url.as_str(), stream),
    )
    .await
    .map_err(|_| failed(format!("timed out after {}s", timeout.as_secs_f64())))?
    .map_err(|error| failed(error.to_string()))?;
    Ok(ws)
}

/// Sends every line of `input` as a message and prints every echo.
pub async fn exchange<I, O>(
    conn: WsConn,
    input: I,
    output: O,
    binary: bool,
    timeout: Duration,
) -> Result<(), ClientError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    match conn {
        WsConn::Plain(ws) => run(*ws, input, output, binary, timeout).await,
        WsConn::Tls(ws) => run(*ws, input, output, binary, timeout).await,
    }
}

async fn run<S, I, O>(
    ws: WebSocketStream<S>,
    input: I,
    mut output: O,
    binary: bool,
    timeout: Duration,
) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let failed = |why: String| ClientError::Failed(why);
    let (mut sink, mut stream) = ws.split();
    let sending = async {
        let mut input = BufReader::new(input);
        let (mut line, mut sent) = (Vec::new(), 0u64);
        loop {
            line.clear();
            let read = input.read_until(b'\n', &mut line).await;
            if read.map_err(|e| failed(format!("cannot read stdin: {e}")))? == 0 {
                break;
            }
            let payload = line.strip_suffix(b"\n").unwrap_or(&line);
            let payload = payload.strip_suffix(b"\r").unwrap_or(payload).to_vec();
            let message = if binary {
                Message::binary(payload)
            } else {
                let text = String::from_utf8(payload).map_err(|_| {
                    ClientError::Usage(format!("line {} is not UTF-8; use --binary", sent + 1))
                })?;
                Message::text(text)
            };
            sink.send(message)
                .await
                .map_err(|e| failed(format!("cannot send: {e}")))?;
            sent += 1;
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        sink.send(Message::Close(Some(close)))
            .await
            .map_err(|e| failed(format!("cannot send the close frame: {e}")))?;
        Ok::<u64, ClientError>(sent)
    };
    let receiving = async {
        let mut received = 0u64;
        while let Some(message) = stream.next().await {
            let payload = match message.map_err(|e| failed(format!("connection failed: {e}")))? {
                Message::Text(text) => text.as_bytes().to_vec(),
                Message::Binary(bytes) => bytes.to_vec(),
                Message::Close(frame) => {
                    let code = frame.map_or(1005, |frame| u16::from(frame.code));
                    if code != 1000 {
                        return Err(failed(format!("the server closed with code {code}")));
                    }
                    break;
                }
                _ => continue,
            };
            received += 1;
            let written = async {
                output.write_all(&payload).await?;
                output.write_all(b"\n").await?;
                output.flush().await
            };
            if written.await.is_err() {
                return Err(ClientError::StdoutClosed);
            }
        }
        Ok::<u64, ClientError>(received)
    };
    tokio::pin!(receiving);
    let sent = tokio::select! {
        sent = sending => sent?,
        received = &mut receiving => {
            received?;
            return Err(failed("the server closed before the end of input".into()));
        }
    };
    let received = tokio::time::timeout(timeout, receiving)
        .await
        .map_err(|_| {
            failed(format!(
                "no close from the server within {}s",
                timeout.as_secs_f64()
            ))
        })??;
    if received != sent {
        return Err(failed(format!("{sent} message(s) sent, {received} echoed")));
    }
    Ok(())
}
