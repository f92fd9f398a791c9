//! Hostile clients: bad frames, slow readers, floods, slowloris, huge headers,
//! odd paths. Each gets a clear answer, and the host keeps serving everyone else.

use std::time::{Duration, Instant};

use dormouse_host::config::Limits;
use dormouse_tests::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_the_right_close_code_and_the_room_hears_it() {
    let server = Server::start(Options {
        limits: Limits {
            message_bytes: 1024,
            ..Options::main("probe").limits
        },
        ..Options::main("probe")
    })
    .await;
    let mut watcher = server.ws("/parties/main/frames").await;
    let too_big = vec![b'x'; 2000];
    let cases: [(&str, Vec<u8>, u16); 6] = [
        ("utf8", frame(0x81, &[0xff, 0xfe, 0xfd], true), 1007),
        ("unmasked", frame(0x81, b"hi", false), 1002),
        ("rsv", frame(0xc1, b"hi", true), 1002),
        ("opcode", frame(0x83, b"hi", true), 1002),
        ("big", frame(0x82, &too_big, true), 1009),
        // A header that claims 2^62 bytes: refused before any is read or allocated.
        (
            "huge",
            vec![0x82, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            1009,
        ),
    ];
    for (id, bytes, want) in cases {
        let mut tcp = raw_ws(&server, &format!("/parties/main/frames?_pk={id}")).await;
        tcp.write_all(&bytes).await.expect("write");
        assert_eq!(close_frame(&mut tcp).await.0, want, "case {id}");
        // The room got on-close with the same code (and not was_clean).
        let want_close = format!("{id}:{want}:false");
        let deadline = Instant::now() + WAIT;
        loop {
            send_text(&mut watcher, "last-close").await;
            if recv_text(&mut watcher).await == want_close {
                break;
            }
            assert!(Instant::now() < deadline, "on-close for {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A fragmented message over the limit, each fragment under it: 1009 too.
    let mut tcp = raw_ws(&server, "/parties/main/frames?_pk=fragments").await;
    tcp.write_all(&frame(0x01, &[b'a'; 600], true))
        .await
        .expect("write");
    tcp.write_all(&frame(0x80, &[b'b'; 600], true))
        .await
        .expect("write");
    assert_eq!(close_frame(&mut tcp).await.0, 1009);
    ping(&mut watcher)
        .await
        .expect("the room's other socket is served");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_1008_and_the_room_carries_on() {
    let server = Server::start(Options {
        limits: Limits {
            outbound_queue_bytes: 256 << 10,
            ..Options::main("relay").limits
        },
        ..Options::main("relay")
    })
    .await;
    let mut sender = server.ws("/parties/main/busy").await;
    let mut reader = server.ws("/parties/main/busy").await;
    // A client with a tiny receive buffer that never reads a byte.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stalled = socket.connect(server.addr).await.expect("connect");
    let request = upgrade_request(&server, "/parties/main/busy");
    stalled.write_all(request.as_bytes()).await.expect("write");
    server
        .wait_metric("dormouse_connections{party=\"main\"}", 3.0)
        .await;

    // 32 MiB through the room: far past the kernel's buffers and the queue.
    let chunk = "y".repeat(32 << 10);
    let started = Instant::now();
    for i in 0..1024 {
        sender
            .send(Message::text(format!("{i}:{chunk}")))
            .await
            .expect("send");
        let got = recv_text(&mut reader).await;
        assert!(got.starts_with(&format!("{i}:")), "in order");
    }
    println!(
        "1024 x 32 KiB relayed past a stalled client in {:?}",
        started.elapsed()
    );
    // The stalled client was closed; the other two are still in the room.
    server
        .wait_metric("dormouse_connections{party=\"main\"}", 2.0)
        .await;
    send_text(&mut sender, "still here").await;
    assert_eq!(recv_text(&mut reader).await, "still here");
    drop(stalled);
    server.stop().await;
}

/// A burst of messages whose hooks share one commit, each answering 4 KB:
/// 160 KB of answers against a 64 KiB outbound queue. A group stops at half
/// the queue, and after releasing a large one the room lets the socket
/// tasks write it out before the next group runs (without that, two
/// groups' output met in the queue and the client was closed as too slow
/// at its 16th answer). A client that reads gets every answer, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_large_answers_fits_a_reading_clients_queue() {
    let server = Server::start(Options {
        limits: Limits {
            outbound_queue_bytes: 64 << 10,
            ..Options::main("probe").limits
        },
        ..Options::main("probe")
    })
    .await;
    let mut c = server.ws("/parties/main/burst").await;
    // The room works 300 ms on the first; the 40 others queue meanwhile and
    // run as one group.
    send_text(&mut c, "bulk:1:300").await;
    for _ in 0..40 {
        send_text(&mut c, "bulk:4000:0").await;
    }
    assert_eq!(recv_text(&mut c).await, "b");
    for i in 0..40 {
        match recv(&mut c).await {
            Message::Text(t) => assert_eq!(t.len(), 4000, "answer {i}"),
            other => panic!("answer {i}: {other:?}"),
        }
    }
    send_text(&mut c, "whoami").await;
    assert_eq!(recv_text(&mut c).await, "main/burst");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_upgrades_is_served_and_cleaned_up() {
    let server = Server::start(Options::main("relay")).await;
    let opens = (0..600).map(|i| {
        let url = format!("ws://{}/parties/main/flood-{}", server.addr, i % 100);
        async move {
            tokio_tungstenite::connect_async(url)
                .await
                .map(|(ws, _)| ws)
        }
    });
    let clients: Vec<_> = futures_util::future::join_all(opens).await;
    let open = clients.iter().filter(|c| c.is_ok()).count();
    assert_eq!(open, 600, "every upgrade in the flood is served");
    server
        .wait_metric("dormouse_connections{party=\"main\"}", 600.0)
        .await;
    drop(clients);
    server
        .wait_metric("dormouse_connections{party=\"main\"}", 0.0)
        .await;
    let mut a = server.ws("/parties/main/after").await;
    let mut b = server.ws("/parties/main/after").await;
    send_text(&mut a, "hello").await;
    assert_eq!(recv_text(&mut b).await, "hello");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_at_the_header_timeout() {
    let server = Server::start(Options {
        limits: Limits {
            header_timeout_ms: 300,
            ..Options::main("relay").limits
        },
        ..Options::main("relay")
    })
    .await;
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /parties/main/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    // One header byte every 50 ms, never finishing.
    let dribble = async {
        loop {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            let mut buf = [0u8; 256];
            let read = tokio::time::timeout(Duration::from_millis(50), slow.read(&mut buf));
            // Closed (0 bytes, or an error): cut off. A timeout: go on.
            if let Ok(Ok(0) | Err(_)) = read.await {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, dribble)
        .await
        .expect("the server hangs up");
    println!("slowloris cut off after {:?}", started.elapsed());
    assert_eq!(
        server.http("GET", "/_dormouse/health", "").await,
        (200, "ok\n".into())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let server = Server::start(Options::main("relay")).await;
    let request = format!(
        "GET /parties/main/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200 << 10)
    );
    let status = raw_http(server.addr, request.as_bytes())
        .await
        .map(|(status, _)| status);
    assert!(matches!(status, Ok(431)), "{status:?}");
    assert_eq!(
        server.http("GET", "/_dormouse/health", "").await,
        (200, "ok\n".into())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_paths_get_a_one_line_4xx() {
    let server = Server::start(Options::main("probe")).await;
    let long = "x".repeat(257);
    let cases: Vec<(String, u16)> = vec![
        ("/parties/main/..%2F..%2Fetc%2Fpasswd".into(), 400),
        ("/parties/../main/x".into(), 400),
        ("/parties/%6Dain/x".into(), 400),
        ("/parties/MAIN/x".into(), 400),
        ("/parties/main/%C0%AF".into(), 400),
        ("/parties/main/%FF%FE".into(), 400),
        (format!("/parties/main/{long}"), 400),
        ("/parties/main".into(), 404),
        ("/../../etc/passwd".into(), 404),
        ("/%2e%2e/%2e%2e/etc/passwd".into(), 404),
        ("/parties/nope/x".into(), 404),
        // A NUL could not be kept by a cluster's PostgreSQL: refused on
        // every node alike.
        ("/parties/main/a%00b".into(), 400),
    ];
    for (path, want) in cases {
        let (status, body) = server.http("GET", &path, "").await;
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "{path}: {body:?}");
    }
    // Odd but valid: a room id with spaces and non-ASCII is one room.
    let (status, body) = server.http("GET", "/parties/main/a%20b%E2%9C%93", "").await;
    assert_eq!((status, body.as_str()), (200, "probe main/a b\u{2713}"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pk_replaces_the_open_connection() {
    let server = Server::start(Options::main("probe")).await;
    let mut old = server.ws("/parties/main/pk?_pk=same").await;
    let mut other = server.ws("/parties/main/pk?_pk=other").await;
    let mut new = server.ws("/parties/main/pk?_pk=same").await;
    match recv(&mut old).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1000),
        m => panic!("the old socket should be closed, got {m:?}"),
    }
    assert_eq!(old.next().await.map(|r| r.is_ok()), None);
    send_text(&mut new, "last-close").await;
    assert_eq!(recv_text(&mut new).await, "same:1000:true");
    send_text(&mut other, "list").await;
    let mut ids: Vec<String> = recv_text(&mut other)
        .await
        .split(',')
        .map(String::from)
        .collect();
    ids.sort();
    assert_eq!(ids, ["other", "same"]);
    server.stop().await;
}

/// A body that dribbles in is cut off at `body_timeout_ms` with a 408, and
/// counted; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_gets_408() {
    let server = Server::start(Options {
        limits: Limits {
            body_timeout_ms: 300,
            ..Options::main("counter").limits
        },
        ..Options::main("counter")
    })
    .await;
    // Headers promise 100 bytes; three come.
    let request = b"POST /parties/main/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc";
    let started = Instant::now();
    let answer = raw_http(server.addr, request).await;
    let (status, body) = answer.expect("an answer");
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("body_timeout_ms"), "{body}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(server.metric("dormouse_body_timeouts_total").await, 1.0);
    assert_eq!(
        server.http("GET", "/_dormouse/health", "").await,
        (200, "ok\n".into())
    );
    server.stop().await;
}

/// Past `max_connections`, a new connection gets a one-line 503 and is
/// closed; the open sockets keep working, and once one closes there is room
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_and_the_open_ones_kept() {
    let server = Server::start(Options {
        limits: Limits {
            max_connections: Some(2),
            ..Options::main("relay").limits
        },
        ..Options::main("relay")
    })
    .await;
    let mut a = server.ws("/parties/main/cap").await;
    let mut b = server.ws("/parties/main/cap").await;
    let (status, body) = http(server.addr, "GET", "/_dormouse/health", "")
        .await
        .expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("as many connections"), "{body}");
    // The two open sockets still relay.
    send_text(&mut a, "still here").await;
    assert_eq!(recv_text(&mut b).await, "still here");
    // One leaves: a new connection is taken again.
    a.close(None).await.expect("close");
    drop(a);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _) = http(server.addr, "GET", "/_dormouse/health", "")
            .await
            .expect("an answer");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a socket closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(b);
    assert!(server.metric("dormouse_connections_refused_total").await >= 1.0);
    server.stop().await;
}
