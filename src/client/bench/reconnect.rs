//! `--reconnect`: one connection per message.

use std::{
    io,
    rc::Rc,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use tokio_util::codec::Encoder;

use super::{
    tally::{Tally, PATTERN_SPAN},
    Plan,
};
use crate::{
    client::{rng, Conn},
    codec::{EchoCodec, Framing},
};

/// `--reconnect`: each message on its own connection (TLS handshake
/// included), timed from the connect to the verified echo. With
/// `--tls-resume` each slot resumes its own sessions, like one of N
/// separate clients.
pub async fn reconnect_loop(
    plan: Plan,
    mut codec: EchoCodec,
    pattern: Rc<Vec<u8>>,
    tally: Rc<Tally>,
    index: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut rng = rng::seed() ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03) | 1;
    let mut message = BytesMut::new();
    let mut echoed = vec![0u8; plan.wire_size()];
    // Each slot is one client, resuming its own sessions.
    let target = match plan.tls_resume {
        true => plan.target.with_own_sessions(),
        false => plan.target.clone(),
    };
    loop {
        let offset = (rng::next(&mut rng) % PATTERN_SPAN as u64) as usize;
        let payload = &pattern[offset..offset + plan.size];
        message.clear();
        if plan.framing == Framing::Lines {
            message.extend_from_slice(&payload[..plan.size - 1]);
            message.extend_from_slice(b"\n");
        } else {
            codec
                .encode(payload, &mut message)
                .expect("size was validated against the frame limit");
        }
        let started = Instant::now();
        let result = async {
            macro_rules! exchange {
                ($stream:expr) => {{
                    let mut stream = $stream;
                    stream.write_all(&message).await?;
                    stream.read_exact(&mut echoed).await?;
                    stream.shutdown().await
                }};
            }
            let (conn, phases) = target
                .open_timed(plan.connect_timeout)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            tally.opened(phases);
            // Every connection is a setup: `handshake_us` is theirs.
            tally.set_up(started);
            match conn {
                Conn::Tcp(stream) => exchange!(stream),
                Conn::Tls(stream) => exchange!(stream),
                #[cfg(unix)]
                Conn::Unix(stream) => exchange!(stream),
                Conn::Quic(stream) => exchange!(stream),
                Conn::Udp(_) | Conn::WebSocket(_) => {
                    unreachable!("--reconnect is refused with --udp and WebSocket addresses")
                }
            }
        }
        .await;
        // Every message is its connection's first (and only) echo; its
        // time runs from the connect.
        match result {
            Ok(()) => {
                if echoed[..] != message[..] {
                    tally.mismatches.set(tally.mismatches.get() + 1);
                }
                let now = Instant::now();
                tally.first_echo(started, now);
                tally.completed(started, now);
            }
            Err(error) => {
                tally.error(format!("connection failed: {error}"));
                // Do not spin on a server that refuses everything.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
