//! The WebSocket load (`echo-client bench ws://…`): binary messages of
//! `--size` bytes, up to `--pipeline` in flight per connection, each echo
//! checked byte for byte against the message it answers.

use std::{collections::VecDeque, rc::Rc, time::Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};

use super::{
    tally::{Tally, PATTERN_SPAN},
    Plan,
};
use crate::client::{rng, websocket::WsConn};

/// Drives one WebSocket until the run ends (the task is aborted).
pub async fn run(conn: WsConn, plan: Plan, pattern: Rc<Vec<u8>>, tally: Rc<Tally>, index: usize) {
    let _open = super::tally::Open::new(&tally);
    match conn {
        WsConn::Plain(ws) => drive(*ws, &plan, &pattern, &tally, index).await,
        WsConn::Tls(ws) => drive(*ws, &plan, &pattern, &tally, index).await,
    }
}

async fn drive<S>(
    mut ws: WebSocketStream<S>,
    plan: &Plan,
    pattern: &[u8],
    tally: &Tally,
    index: usize,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut state = rng::seed() ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03) | 1;
    let mut in_flight: VecDeque<(usize, Instant)> = VecDeque::with_capacity(plan.pipeline);
    let mut first_pending = true;
    loop {
        while in_flight.len() < plan.pipeline {
            let offset = (rng::next(&mut state) % PATTERN_SPAN as u64) as usize;
            let message = Message::binary(pattern[offset..offset + plan.size].to_vec());
            if let Err(error) = ws.feed(message).await {
                return tally.error(format!("send: {error}"));
            }
            in_flight.push_back((offset, Instant::now()));
        }
        if let Err(error) = ws.flush().await {
            return tally.error(format!("send: {error}"));
        }
        let echoed = match ws.next().await {
            Some(Ok(Message::Binary(echoed))) => echoed,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(other)) => return tally.error(format!("unexpected message: {other:?}")),
            Some(Err(error)) => return tally.error(format!("receive: {error}")),
            None => return tally.error("the server closed the WebSocket".into()),
        };
        let Some((offset, sent_at)) = in_flight.pop_front() else {
            return tally.error("an echo nobody asked for".into());
        };
        if echoed[..] != pattern[offset..offset + plan.size] {
            tally.mismatches.set(tally.mismatches.get() + 1);
        }
        let now = Instant::now();
        if std::mem::take(&mut first_pending) {
            tally.first_echo(sent_at, now);
        }
        tally.completed(sent_at, now);
    }
}
