//! Yjs rooms with Yjs's own clients: y-partykit's and y-websocket's
//! providers in Node (`tests/node/yjs.mjs`), through hibernation, restarts
//! and SIGKILL. Each test runs against the Rust room (`examples/yjs`, on
//! `dormouse_sdk::yjs`) and the TypeScript one (`examples/yjs-ts`, on
//! `dormouse/yjs`).

use std::net::SocketAddr;
use std::time::Duration;

use dormouse_tests::*;

use crate::durability::spawn_host;

const AWAKE: &str = "dormouse_rooms{party=\"main\",state=\"awake\"}";
const WAKES: &str = "dormouse_wakes_total{party=\"main\"}";

/// Run one scenario of tests/node/yjs.mjs to its end; the lines it printed.
async fn scenario(addr: SocketAddr, name: &str, room: &str, args: &[&str]) -> Vec<String> {
    let addr = addr.to_string();
    let mut all = vec![name, &addr, room];
    all.extend_from_slice(args);
    node_lines("yjs.mjs", &all).await
}

fn yjs_server(guest: &'static str, idle_ms: u64) -> Options {
    Options::main(guest).idle(idle_ms)
}

in_each_language!(both_providers_converge_across_hibernation: rust => "yjs", ts => "yjs-ts");
async fn both_providers_converge_across_hibernation(guest: &'static str) {
    let server = Server::start(yjs_server(guest, 200)).await;
    let out = scenario(server.addr, "converge", "doc", &["1000"]).await;
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(out[0].starts_with("converged "), "{out:?}");
    assert_eq!(out[1], "late joiner has everything");
    assert!(out[3].contains(r#""text":"hello world""#), "{out:?}");
    // It slept between the phases: at least one wake after the first.
    assert!(server.metric(WAKES).await >= 2.0);
    server.stop().await;
}

in_each_language!(awareness_survives_hibernation_and_leaves_are_seen: rust => "yjs", ts => "yjs-ts");
async fn awareness_survives_hibernation_and_leaves_are_seen(guest: &'static str) {
    let server = Server::start(yjs_server(guest, 200)).await;
    let wakes_before = server.metric(WAKES).await;
    let out = scenario(server.addr, "awareness", "presence", &["800"]).await;
    assert_eq!(
        out,
        [
            "joined ada,bob",
            "newcomer sees ada,bob,cy",
            "update seen",
            "leave seen",
            "no one else left"
        ]
    );
    assert!(server.metric(WAKES).await >= wakes_before + 3.0);
    server.stop().await;
}

// A room's answer may be larger than what a client may send: a new client
// of a 1.2 MB document syncs with the default limits.
in_each_language!(a_large_document_reaches_a_new_client: rust => "yjs", ts => "yjs-ts");
async fn a_large_document_reaches_a_new_client(guest: &'static str) {
    let server = Server::start(yjs_server(guest, 10_000)).await;
    let out = scenario(server.addr, "large", "large", &[]).await;
    assert_eq!(out, ["synced 1200000"]);
    server.stop().await;
}

// A lone editor's presence renewal comes back to it, so its provider
// never finds the socket silent and reconnects.
in_each_language!(a_lone_client_hears_its_presence_back: rust => "yjs", ts => "yjs-ts");
async fn a_lone_client_hears_its_presence_back(guest: &'static str) {
    let server = Server::start(yjs_server(guest, 200)).await;
    let out = scenario(server.addr, "lone", "alone", &[]).await;
    assert_eq!(out, ["echoed"]);
    server.stop().await;
}

// Presence heartbeats (a client renewing an unchanged state) never wake the
// room: the host keeps and relays them (the room set its presence rule).
in_each_language!(heartbeats_do_not_keep_a_room_awake: rust => "yjs", ts => "yjs-ts");
async fn heartbeats_do_not_keep_a_room_awake(guest: &'static str) {
    let server = Server::start(yjs_server(guest, 400)).await;
    let (mut child, mut lines) = node(
        "yjs.mjs",
        &["heartbeat", &server.addr.to_string(), "beats", "2500"],
    )
    .await;
    let ready = tokio::time::timeout(WAIT, lines.next_line()).await;
    assert!(
        matches!(ready, Ok(Ok(Some(ref l))) if l == "ready"),
        "{ready:?}"
    );
    // Past the idle timeout of the real change before "ready".
    tokio::time::sleep(Duration::from_millis(600)).await;
    let wakes = server.metric(WAKES).await;
    let mut asleep = 0;
    for _ in 0..50 {
        if server.metric(AWAKE).await == 0.0 {
            asleep += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let woke = server.metric(WAKES).await - wakes;
    assert_eq!(woke, 0.0, "the beats woke the room {woke} times");
    assert_eq!(asleep, 50, "asleep in only {asleep} of 50 samples");
    let status = tokio::time::timeout(WAIT, child.wait()).await;
    assert!(matches!(status, Ok(Ok(s)) if s.success()));
    server.stop().await;
}

in_each_language!(offline_edits_merge_on_reconnect: rust => "yjs", ts => "yjs-ts");
async fn offline_edits_merge_on_reconnect(guest: &'static str) {
    let server = Server::start(yjs_server(guest, 10_000)).await;
    let alarms = "dormouse_hook_seconds_count{hook=\"on-alarm\"}";
    let out = scenario(server.addr, "offline", "away", &["3000"]).await;
    assert_eq!(out, ["merged offline world"]);
    // The deletion reached the returning client from the snapshot.
    assert!(server.metric(alarms).await >= 1.0);
    server.stop().await;
}

in_each_language!(read_only_clients_change_nothing_and_tokens_are_checked: rust => "yjs", ts => "yjs-ts");
async fn read_only_clients_change_nothing_and_tokens_are_checked(guest: &'static str) {
    let server = Server::start(yjs_server(guest, 10_000)).await;
    let out = scenario(server.addr, "readonly", "viewers", &[]).await;
    assert_eq!(out, ["viewer kept out"]);
    server.stop().await;

    let mut options = yjs_server(guest, 10_000);
    options.vars = vec![("TOKEN", "sesame")];
    let server = Server::start(options).await;
    let denied = tokio_tungstenite::connect_async(format!(
        "ws://{}/parties/main/locked?token=nope",
        server.addr
    ))
    .await;
    match denied {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a wrong token is refused with 401, got {other:?}"),
    }
    let _ok = server.ws("/parties/main/locked?token=sesame").await;
    server.stop().await;
}

in_each_language!(a_malformed_update_closes_only_its_sender: rust => "yjs", ts => "yjs-ts");
async fn a_malformed_update_closes_only_its_sender(guest: &'static str) {
    let server = Server::start(yjs_server(guest, 10_000)).await;
    let out = scenario(server.addr, "malformed", "bad", &[]).await;
    assert_eq!(
        out,
        [
            "custom pong",
            "closed 4400 malformed Yjs update",
            "document unharmed"
        ]
    );
    server.stop().await;
}

/// Expect a fresh client to read `n` items and `n` x's.
async fn read_back(addr: SocketAddr, room: &str, n: usize) {
    let out = scenario(addr, "read", room, &["pk"]).await;
    let doc = out[0].strip_prefix("doc ").expect("a doc line");
    let json: serde_json::Value = serde_json::from_str(doc).expect("JSON");
    let items = json["array"].as_array().expect("an array");
    assert_eq!(items.len(), n, "{doc}");
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item.as_str(), Some(format!("w{i}").as_str()));
    }
    assert_eq!(json["text"].as_str().map(str::len), Some(n));
}

/// A document's rows as the room stored them, read from the host's SQLite
/// file: the outcome of compactions, not a count of attempts.
#[derive(Debug, Default)]
struct Stored {
    snapshot_chunks: usize,
    state_vector: bool,
    delete_set: bool,
    pending_updates: usize,
}

fn stored(server: &Server, room: &str) -> Stored {
    let path = server.options.data_dir.join("dormouse.sqlite3");
    let db =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the host's SQLite file");
    let mut rows = Stored::default();
    let mut stmt = db
        .prepare("SELECT key FROM kv WHERE party = 'main' AND room = ?1 AND key LIKE 'y:%'")
        .expect("select");
    let keys = stmt
        .query_map([room], |r| r.get::<_, String>(0))
        .expect("rows");
    // Each update is one row per MiB; these are small, one row each.
    for key in keys {
        let key = key.expect("a key");
        match key.get(..4) {
            Some("y:s:") => rows.snapshot_chunks += 1,
            Some("y:u:") => rows.pending_updates += 1,
            _ if key == "y:sv" => rows.state_vector = true,
            _ if key == "y:ds" => rows.delete_set = true,
            _ => {}
        }
    }
    rows
}

/// Wait until a compaction has folded the document down to at most
/// `pending` updates beside its snapshot.
async fn compacted(server: &Server, room: &str, pending: usize) -> Stored {
    tokio::time::timeout(WAIT * 2, async {
        loop {
            let rows = stored(server, room);
            if rows.snapshot_chunks > 0 && rows.pending_updates <= pending {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not compacted in time: {:?}", stored(server, room)))
}

/// Guest failures of every kind.
async fn traps(server: &Server) -> f64 {
    let (_, text) = server.http("GET", "/_dormouse/metrics", "").await;
    text.lines()
        .filter(|l| l.starts_with("dormouse_guest_traps_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// 2,000 updates in a burst, each its own message: more keys than one
// storage call takes. The compactions fold them all, and none fails.
in_each_language!(a_burst_of_updates_is_compacted: rust => "yjs", ts => "yjs-ts");
async fn a_burst_of_updates_is_compacted(guest: &'static str) {
    let server = Server::start(yjs_server(guest, 10_000)).await;
    // Each of the 1,000 steps sends two updates (a push and an insert).
    let out = scenario(server.addr, "write", "burst", &["1000"]).await;
    assert_eq!(out, ["acked 1000"]);
    let rows = compacted(&server, "burst", 49).await;
    assert!(rows.state_vector && rows.delete_set, "{rows:?}");
    assert_eq!(traps(&server).await, 0.0, "a compaction failed");
    let server = Server::start(server.stop().await).await;
    read_back(server.addr, "burst", 1000).await;
    server.stop().await;
}

in_each_language!(documents_survive_restarts_before_and_after_compaction: rust => "yjs", ts => "yjs-ts");
async fn documents_survive_restarts_before_and_after_compaction(guest: &'static str) {
    let server = Server::start(yjs_server(guest, 10_000)).await;
    // 40 updates: stored one by one, restarted before the compaction is due.
    let out = scenario(server.addr, "write", "kept", &["40"]).await;
    assert_eq!(out, ["acked 40"]);
    let server = Server::start(server.stop().await).await;
    read_back(server.addr, "kept", 40).await;
    // 600 more: past the count that compacts at once.
    let out = scenario(server.addr, "write", "kept", &["600"]).await;
    assert_eq!(out, ["acked 640"]);
    // The alarms run the compactions (at once when 500 were waiting, then
    // 2 s after the first update since): every update is folded in.
    let rows = compacted(&server, "kept", 0).await;
    assert!(rows.state_vector && rows.delete_set, "{rows:?}");
    assert_eq!(traps(&server).await, 0.0, "a compaction failed");
    let server = Server::start(server.stop().await).await;
    read_back(server.addr, "kept", 640).await;
    // The HTTP snapshot is the document as one Yjs update.
    let (status, _) = server.http("GET", "/parties/main/kept", "").await;
    assert_eq!(status, 200);
    server.stop().await;
}

// Every update another client saw relayed (so the room had committed it)
// is there after a SIGKILL of the host.
in_each_language!(relayed_updates_survive_sigkill: rust => "yjs", ts => "yjs-ts");
async fn relayed_updates_survive_sigkill(guest: &'static str) {
    let data = data_dir();
    let (mut host, addr) = spawn_host(&data, guest).await;
    let addr_s = addr.to_string();
    let (mut writer, mut lines) = node("yjs.mjs", &["hammer", &addr_s, "hammered"]).await;
    let mut seen: i64 = -1;
    tokio::time::timeout(WAIT * 3, async {
        while seen < 300 {
            let line = lines.next_line().await.expect("stdout").expect("a line");
            seen = line
                .strip_prefix("seen ")
                .and_then(|n| n.parse().ok())
                .unwrap_or(seen);
        }
    })
    .await
    .expect("300 items relayed in time");
    host.kill().await.expect("SIGKILL");
    // What the observer printed before the kill landed counts too.
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await
    {
        if let Some(n) = line.strip_prefix("seen ").and_then(|n| n.parse().ok()) {
            seen = seen.max(n);
        }
    }
    writer.kill().await.expect("stop the writer");
    let (_host, addr) = spawn_host(&data, guest).await;
    let out = scenario(addr, "read", "hammered", &["ws"]).await;
    let json: serde_json::Value =
        serde_json::from_str(out[0].strip_prefix("doc ").expect("doc")).expect("JSON");
    let items = json["array"].as_array().expect("array");
    assert!(
        items.len() as i64 > seen,
        "{} items stored, {seen} seen",
        items.len()
    );
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item.as_i64(), Some(i as i64), "items stay in order");
    }
}
