//! Baseline: the line echo most users write first —
//! `Framed<TcpStream, LinesCodec>` and one `send` (write + flush) per line.
//!
//! `cargo run --release --example naive_lines_echo -- 127.0.0.1:7001`

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::{Framed, LinesCodec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6143".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut lines = Framed::new(socket, LinesCodec::new_with_max_length(65536));
            while let Some(Ok(line)) = lines.next().await {
                if lines.send(line).await.is_err() {
                    return;
                }
            }
        });
    }
}
