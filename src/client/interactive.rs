//! The interactive client: stdin lines out, echoes to stdout.
//!
//! Sending and receiving run at once, so a large pipe (`seq 1 100000 |
//! echo-client`) never deadlocks on full socket buffers. At end of stdin the
//! client half-closes, waits (bounded by `--timeout`) for every echo, and
//! checks that everything it sent came back.

use std::{io, time::Duration};

use bytes::BytesMut;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::UdpSocket,
};
use tokio_util::codec::{Decoder, Encoder};

use super::ClientError;
use crate::{
    addr::{Endpoint, MAX_UDP_PAYLOAD, UDP_RECEIVE_BUFFER},
    codec::EchoCodec,
};

/// Bytes of stdin gathered before a write, when more input is waiting.
const SEND_BATCH: usize = 64 * 1024;

/// What one direction of the exchange moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    frames: u64,
    bytes: u64,
}

/// Sends every line of `input` and prints every echo to `output`.
pub async fn exchange<R, W, I, O>(
    from_server: R,
    to_server: W,
    input: I,
    output: O,
    codec: EchoCodec,
    timeout: Duration,
) -> Result<(), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let receive = receive_echoes(from_server, output, codec);
    tokio::pin!(receive);
    let sent = tokio::select! {
        sent = send_lines(input, to_server, codec) => {
            sent.map_err(|error| ClientError::Failed(format!("connection lost while sending: {error}")))?
        }
        received = &mut receive => {
            let received = received?;
            return Err(ClientError::Failed(format!(
                "server closed the connection before the input ended ({} bytes echoed)",
                received.bytes
            )));
        }
    };
    let received = tokio::time::timeout(timeout, receive).await.map_err(|_| {
        ClientError::Failed(format!(
            "timed out after {}s waiting for the last echoes",
            timeout.as_secs_f64()
        ))
    })??;
    if received != sent {
        return Err(ClientError::Failed(format!(
            "server closed the connection after echoing {} of {} bytes",
            received.bytes, sent.bytes
        )));
    }
    Ok(())
}

/// UDP: each line of `input` is one datagram; its reply is printed exactly,
/// or reported lost after `timeout`. Fails (exit 1) if any reply was lost.
pub async fn udp_exchange<I, O>(
    addr: &Endpoint,
    socket: UdpSocket,
    input: I,
    mut output: O,
    timeout: Duration,
) -> Result<(), ClientError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let failed = |why: String| ClientError::Failed(format!("udp:{addr}: {why}"));
    let mut input = BufReader::new(input);
    let (mut line, mut reply) = (Vec::new(), vec![0u8; UDP_RECEIVE_BUFFER]);
    let (mut sent, mut lost) = (0u64, 0u64);
    loop {
        line.clear();
        if input
            .read_until(b'\n', &mut line)
            .await
            .map_err(|error| failed(format!("cannot read stdin: {error}")))?
            == 0
        {
            break;
        }
        sent += 1;
        if line.len() > MAX_UDP_PAYLOAD {
            return Err(failed(format!(
                "line {sent} is {} bytes, more than one datagram holds ({MAX_UDP_PAYLOAD})",
                line.len()
            )));
        }
        socket
            .send(&line)
            .await
            .map_err(|error| failed(error.to_string()))?;
        // Wait for this datagram's reply; a late reply to an earlier one is skipped.
        let answered = tokio::time::timeout(timeout, async {
            loop {
                match socket.recv(&mut reply).await {
                    Ok(len) if reply[..len] == line[..] => return Ok(()),
                    Ok(_) => continue,
                    Err(error) => return Err(error),
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(())) => write_output(&mut output, &line).await?,
            Ok(Err(error)) => return Err(failed(error.to_string())),
            Err(_) => {
                lost += 1;
                eprintln!(
                    "echo-client: no reply to line {sent} within {}s (lost, or dropped by the server's rate limit)",
                    timeout.as_secs_f64()
                );
            }
        }
    }
    if lost > 0 {
        return Err(failed(format!("{lost} of {sent} datagrams got no reply")));
    }
    Ok(())
}

/// Sends each line as one frame, batching lines that are already waiting
/// into one write; half-closes at end of input.
async fn send_lines<I, W>(input: I, mut to_server: W, mut codec: EchoCodec) -> io::Result<Tally>
where
    I: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut input = BufReader::with_capacity(SEND_BATCH, input);
    let mut line = Vec::new();
    let mut batch = BytesMut::new();
    let mut tally = Tally::default();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        codec.encode(&line, &mut batch)?;
        tally.frames += 1;
        tally.bytes += line.len() as u64;
        // Send when no more input is already buffered, so an interactive
        // line goes out at once and a pipe goes out in large writes.
        if input.buffer().is_empty() || batch.len() >= SEND_BATCH {
            to_server.write_all(&batch).await?;
            batch.clear();
        }
    }
    to_server.write_all(&batch).await?;
    to_server.shutdown().await?;
    Ok(tally)
}

/// Prints every echoed frame exactly as sent (`length` payloads without
/// their header) until the server closes.
async fn receive_echoes<R, O>(
    mut from_server: R,
    mut output: O,
    mut codec: EchoCodec,
) -> Result<Tally, ClientError>
where
    R: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let lost = |error: io::Error| ClientError::Failed(format!("connection lost: {error}"));
    let mut buf = BytesMut::with_capacity(SEND_BATCH);
    let mut tally = Tally::default();
    loop {
        let read = from_server.read_buf(&mut buf).await.map_err(lost)?;
        let mut printed = BytesMut::new();
        loop {
            let frame = if read == 0 {
                codec.decode_eof(&mut buf)
            } else {
                codec.decode(&mut buf)
            };
            match frame.map_err(|error| ClientError::Failed(format!("bad echo: {error}")))? {
                Some(frame) => {
                    tally.frames += 1;
                    tally.bytes += frame.len() as u64;
                    printed.unsplit(frame);
                }
                None => break,
            }
        }
        write_output(&mut output, &printed).await?;
        if read == 0 {
            return Ok(tally);
        }
        buf.reserve(SEND_BATCH);
    }
}

async fn write_output<O: AsyncWrite + Unpin>(
    output: &mut O,
    bytes: &[u8],
) -> Result<(), ClientError> {
    let result = async {
        output.write_all(bytes).await?;
        output.flush().await
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Err(ClientError::StdoutClosed),
        Err(error) => Err(ClientError::Failed(format!(
            "cannot write to stdout: {error}"
        ))),
    }
}
