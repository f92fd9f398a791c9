//! The JavaScript SDK's surface, in a TypeScript room built by `dormouse
//! build` (tests/guests/surface-ts): connection state across hibernation,
//! tags, alarms, storage values, room-to-room fetch, `onRequest` with a
//! `Response`, and a throw in a hook, which is a trap as a Rust panic is.
//! And a server written the way PartyKit's docs write one
//! (examples/items-ts), driven by the real partysocket client.

use dormouse_tests::*;
use tokio_tungstenite::tungstenite::Message;

const HIBERNATED: &str = "dormouse_rooms{party=\"main\",state=\"hibernated\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_tags_and_storage_survive_hibernation() {
    let server = Server::start(Options::main("surface-ts").idle(50)).await;
    let mut a = server.ws("/parties/main/s?tag=red").await;
    let mut b = server.ws("/parties/main/s?tag=red").await;
    let mut c = server.ws("/parties/main/s?tag=blue").await;
    assert_eq!(ask(&mut a, "state").await, "state 1");
    assert_eq!(ask(&mut a, "put:k:{\"x\":[1,2]}").await, "ok");
    server.wait_metric(HIBERNATED, 1.0).await;
    assert_eq!(ask(&mut a, "state").await, "state 2");
    assert_eq!(ask(&mut b, "state").await, "state 1");
    assert_eq!(ask(&mut c, "tagged:red").await, "2");
    assert_eq!(
        ask(&mut c, "uri").await,
        "http://localhost/parties/main/s?tag=blue"
    );
    assert_eq!(ask(&mut c, "tagged:blue").await, "1");
    // A number and a boolean go as their strings, as on PartyKit.
    assert_eq!(ask(&mut c, "number:0").await, "0");
    assert_eq!(recv_text(&mut c).await, "true");
    assert_eq!(recv_text(&mut a).await, "true");
    assert_eq!(recv_text(&mut b).await, "true");
    assert_eq!(ask(&mut c, "get:k").await, r#"{"x":[1,2]}"#);
    assert_eq!(ask(&mut c, "get:nothing").await, "null");
    assert_eq!(
        ask(&mut c, "types").await,
        "types true,true,true,true,true 1 typed"
    );
    drop(b);
    let closed = recv_text(&mut a).await;
    assert!(
        closed.starts_with("closed ") && closed.ends_with(" 1006"),
        "{closed}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_fire_into_a_sleeping_room() {
    let server = Server::start(Options::main("surface-ts").idle(50)).await;
    let mut a = server.ws("/parties/main/a").await;
    assert_eq!(ask(&mut a, "alarm:300").await, "alarm set true");
    server.wait_metric(HIBERNATED, 1.0).await;
    assert_eq!(recv_text(&mut a).await, "alarm fired 1");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_request_answers_with_a_response_and_rooms_call_rooms() {
    let server = Server::start(Options::main("surface-ts")).await;
    let (status, body) = server.http("POST", "/parties/main/r/sub", "hi").await;
    assert_eq!(status, 201);
    assert_eq!(
        body,
        r#"{"method":"POST","path":"/parties/main/r/sub","body":"hi","room":"r"}"#
    );
    assert_eq!(
        server.http("PUT", "/parties/main/r", r#"{"n":21}"#).await,
        (200, "42".into())
    );
    // No Cloudflare edge here: `cf` is empty but for the country its
    // proxy says, when it is in front.
    assert_eq!(
        server.http("GET", "/parties/main/r/cf", "").await,
        (200, "{}".into())
    );
    let request = format!(
        "GET /parties/main/r/cf HTTP/1.1\r\nHost: {}\r\ncf-ipcountry: NZ\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let (_, cf) = raw_http(server.addr, request.as_bytes())
        .await
        .expect("an answer");
    assert_eq!(cf, r#"{"country":"NZ"}"#);
    let mut a = server.ws("/parties/main/caller").await;
    assert_eq!(
        ask(&mut a, "fetch:callee").await,
        r#"fetched 201 {"method":"POST","path":"/parties/main/callee/hello","body":"ping","room":"callee"}"#
    );
    server.stop().await;
}

/// A throw in a hook rolls it back like a Rust panic: its writes and
/// messages are gone, the instance is dropped, the sockets stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throw_in_a_hook_is_a_trap() {
    let server = Server::start(Options::main("surface-ts")).await;
    let traps = "dormouse_guest_traps_total{party=\"main\",kind=\"trap\"}";
    let mut logs = server.host.logs().subscribe();
    let mut a = server.ws("/parties/main/t").await;
    send_text(&mut a, "throw").await;
    // The error's message and stack reach the room's log.
    let said = tokio::time::timeout(WAIT, async {
        loop {
            let line = logs.recv().await.expect("log stream open");
            if line.level == "error" && line.message.starts_with("onMessage threw") {
                return line.message.clone();
            }
        }
    })
    .await
    .expect("the throw is logged");
    assert!(said.contains("Error: boom"), "{said}");
    assert_eq!(
        ask(&mut a, "get:doomed").await,
        "null",
        "the write was rolled back"
    );
    assert_eq!(server.metric(traps).await, 1.0);
    // A throw in onConnect refuses the upgrade; in onRequest it is a 500.
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/parties/main/t?throw=1", server.addr))
            .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 500),
        other => panic!("a throwing onConnect refuses the upgrade, got {other:?}"),
    }
    assert_eq!(server.http("GET", "/parties/main/t/throw", "").await.0, 500);
    assert_eq!(server.metric(traps).await, 3.0);
    assert_eq!(ask(&mut a, "state").await, "state 1", "the socket stays");

    // In onClose: its broadcast is dropped with it.
    assert_eq!(ask(&mut a, "put:doom-close:true").await, "ok");
    let b = server.ws("/parties/main/t").await;
    drop(b);
    server.wait_metric(traps, 4.0).await;
    assert_eq!(
        ask(&mut a, "put:doom-close:false").await,
        "ok",
        "no `closed` line came first"
    );

    // In onAlarm: a trap, then retried (2 s later) until it succeeds.
    assert_eq!(ask(&mut a, "put:doom-alarm:true").await, "ok");
    assert_eq!(ask(&mut a, "alarm:0").await, "alarm set true");
    server.wait_metric(traps, 5.0).await;
    assert_eq!(ask(&mut a, "put:doom-alarm:false").await, "ok");
    assert_eq!(recv_text(&mut a).await, "alarm fired 1");
    server.stop().await;
}

/// PartyKit's partial-state-loading pattern, in a server whose only change
/// from PartyKit is its import line, with partysocket as the client; the
/// room hibernates between messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partykit_server_runs_with_its_import_changed() {
    let server = Server::start(Options::main("items-ts").idle(50)).await;
    let wakes = "dormouse_wakes_total{party=\"main\"}";
    let out = node_lines("items.mjs", &[&server.addr.to_string(), "shopping"]).await;
    assert_eq!(
        out,
        [
            "refused 401",
            "synced 0",
            "added, bob saw milk",
            "voted, ada saw 1",
            "a newcomer syncs milk with 1 vote"
        ]
    );
    assert!(
        server.metric(wakes).await >= 3.0,
        "it hibernated between messages"
    );
    server.stop().await;
}

/// A hook whose promise never settles ends without committing, like a trap;
/// the room goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_never_settles_commits_nothing() {
    let server = Server::start(Options::main("surface-ts")).await;
    let mut a = server.ws("/parties/main/h").await;
    send_text(&mut a, "hang").await;
    assert_eq!(ask(&mut a, "get:doomed").await, "null");
    // componentize-js finds nothing left to run and ends the call: a trap,
    // at once (a promise kept pending by a busy loop meets the deadline).
    let traps = "dormouse_guest_traps_total{party=\"main\",kind=\"trap\"}";
    assert_eq!(server.metric(traps).await, 1.0);
    server.stop().await;
}

/// Timers as PartyKit's cursors example uses them: updates batched and
/// flushed by a `setInterval` every 16 ms, a close flushed as a `remove`,
/// an `await` on `setTimeout` inside a hook, and an async callback whose
/// write commits. Every timer is due past the idle timeout (10 ms): only
/// the pending timer keeps the room, and its memory, awake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_as_on_partykit() {
    let server = Server::start(Options::main("surface-ts").idle(10)).await;
    let mut a = server.ws("/parties/main/c?_pk=a").await;
    let mut b = server.ws("/parties/main/c?_pk=b").await;
    send_text(&mut a, "cursor:1").await;
    assert_eq!(recv_text(&mut a).await, "batch a:1");
    assert_eq!(recv_text(&mut b).await, "batch a:1");
    // The second update of a batching server (it never came before timers).
    send_text(&mut a, "cursor:2").await;
    assert_eq!(recv_text(&mut b).await, "batch a:2");
    assert_eq!(recv_text(&mut a).await, "batch a:2");
    // A client that leaves: the others hear of it, cursor included.
    drop(b);
    assert!(recv_text(&mut a).await.starts_with("closed b "));
    assert_eq!(recv_text(&mut a).await, "batch remove b");

    assert_eq!(ask(&mut a, "sleep:30").await, "slept");
    send_text(&mut a, "later:200").await;
    assert_eq!(recv_text(&mut a).await, "later 1");
    assert_eq!(ask(&mut a, "get:later").await, "true");
    // None pending now: the room hibernates.
    server.wait_metric(HIBERNATED, 1.0).await;
    server.stop().await;
}

/// A project that depends on `typescript` is type-checked by its build,
/// against the SDK's types: a type error stops the build, with tsc's
/// message. (tests/guests/surface-ts is checked the same way, and passes.)
#[test]
fn a_type_error_stops_the_build() {
    let dir = data_dir().join("typed");
    std::fs::create_dir_all(dir.join("src")).expect("project dir");
    std::fs::write(
        dir.join("package.json"),
        r#"{ "name": "typed", "private": true, "type": "module", "devDependencies": { "typescript": "5.9.3" } }"#,
    )
    .expect("package.json");
    std::fs::write(
        dir.join("src/server.ts"),
        "import type * as Party from \"dormouse\";\n\
         export default class S implements Party.Server {\n\
           constructor(readonly room: Party.Party) {}\n\
           onMessage(message: string, sender: Party.Connection<{ n: number }>) {\n\
             const n: number = sender.state?.n ?? \"none\";\n\
             sender.send(String(n));\n\
           }\n\
         }\n",
    )
    .expect("server.ts");
    let failed = dormouse::project::build(&dir).expect_err("a type error fails the build");
    assert!(format!("{failed:#}").contains("tsc"), "{failed:#}");
    // Fixed, it builds.
    let fixed = std::fs::read_to_string(dir.join("src/server.ts"))
        .expect("server.ts")
        .replace("?? \"none\"", "?? 0");
    std::fs::write(dir.join("src/server.ts"), fixed).expect("server.ts");
    dormouse::project::build(&dir).expect("a well-typed room builds");
}

/// PartyKit's static hooks run in the lobby, outside the room: a refusal
/// and a changed request reach the client and the room, and an
/// onBeforeRequest that fetches its own room is answered (inside the room
/// it would wait on itself).
/// `URLPattern`, which componentize-js's runtime lacks: the build bundles
/// a polyfill into a room whose code names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_pattern_matches_as_on_partykit() {
    let server = Server::start(Options::main("surface-ts")).await;
    let mut c = server.ws("/parties/main/p").await;
    assert_eq!(
        ask(&mut c, "pattern:/items/7/a").await,
        r#"{"id":"7","part":"a"}"#
    );
    assert_eq!(ask(&mut c, "pattern:/items/7").await, r#"{"id":"7"}"#);
    assert_eq!(ask(&mut c, "pattern:/other").await, "no match");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_hooks_run_in_the_lobby() {
    let server = Server::start(Options::main("surface-ts")).await;
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{}/parties/main/l?lobby=refuse",
        server.addr
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 403);
            let body = r.body().clone().unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(&body), "refused by the lobby");
        }
        other => panic!("the lobby refuses the upgrade, got {other:?}"),
    }
    // A WebSocketPair accepted and closed: the socket opens, then closes
    // with the lobby's code and reason; one left open closes with 1011.
    for (query, code, reason) in [
        ("close", 4001, "closed by the lobby"),
        (
            "unclosed",
            1011,
            "onBeforeConnect did not close its WebSocketPair",
        ),
    ] {
        let mut closed = server.ws(&format!("/parties/main/l?lobby={query}")).await;
        match recv(&mut closed).await {
            Message::Close(Some(frame)) => {
                assert_eq!(
                    (u16::from(frame.code), frame.reason.as_str()),
                    (code, reason)
                );
            }
            other => panic!("the lobby's close, got {other:?}"),
        }
    }
    let mut marked = server.ws("/parties/main/l?lobby=mark").await;
    assert_eq!(ask(&mut marked, "tagged:lobby-marked").await, "1");
    let (status, body) = server.http("GET", "/parties/main/l/via-lobby", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        r#"lobby saw 201 {"method":"GET","path":"/parties/main/l/from-lobby","body":"","room":"l"}"#
    );
    server.stop().await;
}
