//! Baseline for WebSocket benchmarks: the shape of tokio-tungstenite's own
//! `examples/echo-server.rs` — accept, upgrade with `accept_async`, then
//! forward every text and binary message back — so `echo-client bench
//! ws://…` can compare echod's WebSocket echo with the library used as its
//! authors show. Not part of the product.
//!
//!     cargo run --release --example tungstenite_echo 127.0.0.1:9002

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo(stream: TcpStream) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (write, read) = ws.split();
    let _ = read
        .try_filter(|message| future::ready(message.is_text() || message.is_binary()))
        .forward(write)
        .await;
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(echo(stream));
    }
    Ok(())
}
