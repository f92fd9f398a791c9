//! Close codes reach a client that is still sending: the host writes its
//! close frame, shuts its write side, and reads (and drops) what the client
//! sends until it stops, so no TCP reset discards the frame before the
//! client reads it.

use std::time::{Duration, Instant};

use dormouse_tests::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// How long the host lingers at most (`CLOSE_GRACE` in socket.rs), with room
/// for a loaded machine.
const LINGER_BOUND: Duration = Duration::from_secs(10);

/// `ws` 8 and `partysocket` send 2 MiB to a room whose limit is 1 MiB: every
/// try sees 1009 and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_sending_too_much_see_1009_and_the_reason() {
    let server = Server::start(Options::main("relay")).await;
    let (_node, mut lines) = node("close-codes.mjs", &[&server.addr.to_string(), "50"]).await;
    let mut out = Vec::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            out.push(line);
        }
    };
    tokio::time::timeout(WAIT * 6, read)
        .await
        .expect("node finishes in time");
    assert_eq!(
        out,
        [
            "ws 50/50: 1009 message too big",
            "partysocket 1009 message too big"
        ],
    );
    server.stop().await;
}

/// Invalid UTF-8 and a protocol error, each followed by a megabyte more from
/// the client: the client still reads 1007 and 1002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_followed_by_more_data_still_get_their_code() {
    let server = Server::start(Options::main("relay")).await;
    let more = frame(0x82, &vec![7u8; 1 << 20], true);
    let cases: [(&str, Vec<u8>, u16); 2] = [
        ("utf8", frame(0x81, &[0xff, 0xfe, 0xfd], true), 1007),
        ("rsv", frame(0xc1, b"hi", true), 1002),
    ];
    for (id, bad, want) in cases {
        let mut tcp = raw_ws(&server, &format!("/parties/main/more?_pk={id}")).await;
        tcp.write_all(&bad).await.expect("write");
        // The host may already be closing: a refused write is its business.
        let _ = tcp.write_all(&more).await;
        let (code, reason) = close_frame(&mut tcp).await;
        assert_eq!(code, want, "case {id}: {reason}");
    }
    server.stop().await;
}

/// A guest's close(4000, "bye") while the client is in the middle of
/// sending two megabytes: the client reads 4000 "bye".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_close_reaches_a_client_that_is_mid_send() {
    let server = Server::start(Options::main("probe")).await;
    let mut ws = server.ws("/parties/main/bye").await;
    send_text(&mut ws, "close:4000:bye").await;
    for _ in 0..16 {
        if ws
            .send(Message::binary(vec![1u8; 128 << 10]))
            .await
            .is_err()
        {
            break;
        }
    }
    match recv(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4000, "bye"));
        }
        other => panic!("expected the guest's close, got {other:?}"),
    }
    server.stop().await;
}

/// A client that never stops sending after the host closes is cut off after
/// the grace or the budget; the host reads into one fixed buffer, so its
/// memory does not grow with what the client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_stops_sending_is_cut_off() {
    let server = Server::start(Options::main("probe")).await;
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let mut tcp = raw_ws(&server, "/parties/main/firehose").await;
    tcp.write_all(&frame(0x81, b"close:4000:bye", true))
        .await
        .expect("write");
    let before = rss();
    let chunk = frame(0x82, &vec![9u8; 64 << 10], true);
    let started = Instant::now();
    let mut sent = 0usize;
    let (mut reader, mut writer) = tcp.into_split();
    // Keep reading, so the client side never stalls the test.
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    loop {
        let write = tokio::time::timeout(LINGER_BOUND, writer.write_all(&chunk)).await;
        match write {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => break,
            Err(_) => panic!("the host never cut the client off ({sent} bytes sent)"),
        }
        assert!(
            started.elapsed() < LINGER_BOUND,
            "still accepted after {:?} ({sent} bytes)",
            started.elapsed()
        );
    }
    drain.abort();
    let grown = rss().saturating_sub(before);
    assert!(sent >= 1 << 20, "the host lingered: {sent} bytes read");
    assert!(grown < 32 << 10, "memory grew by {grown} KiB");
    server.stop().await;
}
