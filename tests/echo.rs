//! The echo itself, over real sockets: framings, concurrency, half-close,
//! frame limits and several listeners.

mod common;

use common::*;
use echod::{Config, Framing};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn with_framing(framing: Framing) -> Config {
    Config {
        framing,
        ..config()
    }
}

#[tokio::test]
async fn lines_are_echoed_byte_for_byte_with_crlf_and_non_utf8_bytes() {
    let server = TestServer::start(config()).await;
    let input = b"hello\nwindows\r\n\xff\xfe not utf-8 \x00\n\n";
    assert_eq!(round_trip(server.addr(), input).await, input);
    server.shutdown().await;
}

#[tokio::test]
async fn each_line_is_echoed_as_soon_as_it_is_complete() {
    let server = TestServer::start(config()).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    for line in [&b"one\n"[..], b"two\r\n", b"three\n"] {
        assert_eq!(echo_once(&mut stream, line).await, line);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn final_line_without_newline_is_echoed_at_end_of_input() {
    let server = TestServer::start(config()).await;
    assert_eq!(
        round_trip(server.addr(), b"a\nno newline").await,
        b"a\nno newline"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn raw_framing_echoes_every_byte() {
    let server = TestServer::start(with_framing(Framing::Raw)).await;
    let input = pattern(300_000, 7);
    assert_eq!(round_trip(server.addr(), &input).await, input);
    // Raw has no frames, so no frame limit: one long "line" comes back too.
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(
        echo_once(&mut stream, b"partial, no newline").await,
        b"partial, no newline"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn raw_framing_ignores_the_frame_limit() {
    let server = TestServer::start(Config {
        max_frame_length: 16,
        ..with_framing(Framing::Raw)
    })
    .await;
    let input = vec![b'x'; 100_000];
    assert_eq!(round_trip(server.addr(), &input).await, input);
    server.shutdown().await;
}

#[tokio::test]
async fn length_frames_round_trip_including_an_empty_frame() {
    let server = TestServer::start(with_framing(Framing::Length)).await;
    let mut input = length_frame(b"hello");
    input.extend(length_frame(b""));
    input.extend(length_frame(&pattern(65_536, 1)));
    assert_eq!(round_trip(server.addr(), &input).await, input);

    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let empty = length_frame(b"");
    assert_eq!(echo_once(&mut stream, &empty).await, empty);
    server.shutdown().await;
}

#[tokio::test]
async fn truncated_length_frame_at_end_of_input_is_dropped_after_whole_frames() {
    let server = TestServer::start(with_framing(Framing::Length)).await;
    let whole = length_frame(b"whole");
    let mut input = whole.clone();
    input.extend_from_slice(&length_frame(b"truncated")[..8]);
    assert_eq!(round_trip(server.addr(), &input).await, whole);
    server.shutdown().await;
}

#[tokio::test]
async fn a_frame_of_exactly_the_limit_is_echoed() {
    let server = TestServer::start(Config {
        max_frame_length: 1024,
        ..config()
    })
    .await;
    let mut line = vec![b'x'; 1023];
    line.push(b'\n');
    assert_eq!(round_trip(server.addr(), &line).await, line);
    server.shutdown().await;

    let server = TestServer::start(Config {
        max_frame_length: 1024,
        ..with_framing(Framing::Length)
    })
    .await;
    let frame = length_frame(&[9; 1024]);
    assert_eq!(round_trip(server.addr(), &frame).await, frame);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_clients_each_get_their_own_bytes_back() {
    let server = TestServer::start(config()).await;
    let addr = server.addr();
    let clients: Vec<_> = (0..300u32)
        .map(|client| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let mut all = Vec::new();
                for message in 0..20 {
                    let line = format!(
                        "client {client} message {message} {}\n",
                        "x".repeat(client as usize)
                    );
                    assert_eq!(
                        echo_once(&mut stream, line.as_bytes()).await,
                        line.as_bytes()
                    );
                    all.extend_from_slice(line.as_bytes());
                }
                stream.shutdown().await.unwrap();
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty(), "client {client} got extra bytes");
                all.len()
            })
        })
        .collect();
    let mut total = 0;
    for client in clients {
        total += client.await.expect("client verified its echoes");
    }
    assert!(total > 300 * 20 * 20);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_sent_then_half_close_comes_back_identical() {
    for framing in [Framing::Lines, Framing::Raw] {
        let server = TestServer::start(with_framing(framing)).await;
        // Lines of varied length, so frames straddle every read boundary.
        let mut input = Vec::with_capacity(4 << 20);
        let mut n = 0usize;
        while input.len() < 4 << 20 {
            input.extend_from_slice(
                &pattern(n % 5000, n as u8)
                    .iter()
                    .map(|&b| if b == b'\n' { b'.' } else { b })
                    .collect::<Vec<_>>(),
            );
            input.push(b'\n');
            n += 1;
        }
        let echoed = round_trip(server.addr(), &input).await;
        assert_eq!(echoed.len(), input.len(), "{framing}: length differs");
        assert!(echoed == input, "{framing}: bytes differ");
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_line_closes_that_connection_and_others_are_still_served() {
    let server = TestServer::start(Config {
        max_frame_length: 1024,
        ..config()
    })
    .await;
    let mut bystander = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(echo_once(&mut bystander, b"before\n").await, b"before\n");

    let mut abuser = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(
        echo_once(&mut abuser, b"fine first\n").await,
        b"fine first\n"
    );
    let (mut reader, mut writer) = abuser.into_split();
    let flood = tokio::spawn(async move {
        // 1 MiB with no newline: the server must not wait for its end. The
        // write fails once the server has closed, which is the point.
        let _ = writer.write_all(&vec![b'x'; 1 << 20]).await;
    });
    let mut echoed = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut echoed)).await;
    assert!(
        closed.is_ok(),
        "the server kept the oversized connection open"
    );
    assert!(echoed.is_empty(), "part of the oversized frame was echoed");
    flood.await.unwrap();

    assert_eq!(echo_once(&mut bystander, b"after\n").await, b"after\n");
    assert_eq!(
        round_trip(server.addr(), b"new client\n").await,
        b"new client\n"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn frames_before_an_oversized_one_are_echoed_then_the_connection_closes() {
    let server = TestServer::start(Config {
        max_frame_length: 8,
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"ok\nfine\n0123456789\nnever\n")
        .await
        .unwrap();
    let (echoed, _) = read_until_closed(&mut stream).await;
    assert_eq!(echoed, b"ok\nfine\n");
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_length_header_closes_the_connection_without_waiting_for_the_body() {
    let server = TestServer::start(Config {
        max_frame_length: 1024,
        ..with_framing(Framing::Length)
    })
    .await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let mut input = length_frame(b"ok");
    input.extend_from_slice(&(1u32 << 30).to_be_bytes());
    stream.write_all(&input).await.unwrap();
    let (echoed, _) = read_until_closed(&mut stream).await;
    assert_eq!(echoed, length_frame(b"ok"));
    assert_eq!(
        round_trip(server.addr(), &length_frame(b"next")).await,
        length_frame(b"next")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn several_listeners_on_ipv4_and_ipv6_all_serve() {
    let server = TestServer::start(Config {
        listen: vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            "[::1]:0".parse().unwrap(),
        ],
        ..config()
    })
    .await;
    assert_eq!(server.addrs.len(), 3);
    assert!(server.addrs[2].is_ipv6());
    for addr in server.addrs.clone() {
        let line = format!("via {addr}\n");
        assert_eq!(round_trip(addr, line.as_bytes()).await, line.as_bytes());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_host_name_is_resolved_and_served() {
    let server = TestServer::start(Config {
        listen: vec!["localhost:0".parse().unwrap()],
        ..config()
    })
    .await;
    assert!(!server.addrs.is_empty());
    assert!(server.addrs.iter().all(|addr| addr.ip().is_loopback()));
    assert_eq!(round_trip(server.addr(), b"named\n").await, b"named\n");
    server.shutdown().await;
}
