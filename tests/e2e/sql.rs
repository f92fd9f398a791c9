//! SQL storage (`dormouse:room/sql`) over real sockets, through the probe's
//! `op=sql`: a hook's SQL and key-value writes commit together or not at
//! all, the output gate holds for them, statements that reach outside the
//! room are refused, a runaway statement is stopped, the quota counts the
//! database, and what was acknowledged survives hibernation, a restart and
//! kill -9 (see `store/sql.rs` for how).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dormouse_host::config::PartyLimits;
use dormouse_tests::*;

use crate::durability::spawn_host;

const ROOM: &str = "/parties/main/sql";

async fn sql(server: &Server, query: &str, extra: &str) -> (u16, String) {
    server
        .http("POST", &format!("{ROOM}?op=sql{extra}"), query)
        .await
}

/// The rows of a query that must succeed, one string per row.
async fn rows(server: &Server, query: &str) -> Vec<String> {
    let (status, body) = sql(server, query, "").await;
    assert_eq!(status, 200, "{query}: {body}");
    let mut lines: Vec<String> = body.lines().map(str::to_owned).collect();
    lines.pop(); // written=N
    lines
}

#[tokio::test]
async fn a_hooks_sql_and_key_value_writes_commit_together_or_not_at_all() {
    let server = Server::start(Options::main("probe")).await;
    let (status, body) = sql(
        &server,
        "CREATE TABLE todos (id INTEGER PRIMARY KEY, text TEXT NOT NULL, status TEXT NOT NULL);
         CREATE INDEX todos_by_status ON todos (status);
         INSERT INTO todos (text, status) VALUES ('milk', 'open'), ('eggs', 'done')",
        "&put=first",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "written=2"));

    // A hook that writes both and then panics keeps neither.
    let (status, _) = sql(
        &server,
        "INSERT INTO todos (text, status) VALUES ('doomed', 'open')",
        "&put=second&then=panic",
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(
        rows(
            &server,
            "SELECT text FROM todos WHERE status = 'open' ORDER BY id"
        )
        .await,
        ["milk"]
    );
    let mut ws = server.ws(ROOM).await;
    assert_eq!(ask(&mut ws, "has:first").await, "true");
    assert_eq!(ask(&mut ws, "has:second").await, "false");

    // A failed sql::transaction takes back its own writes; the hook goes on.
    let (status, _) = sql(
        &server,
        "INSERT INTO todos (text, status) VALUES ('rolled back', 'open')",
        "&tx=fail&put=third",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ask(&mut ws, "has:third").await, "true");
    assert_eq!(
        rows(&server, "SELECT count(*) FROM todos").await,
        ["2"],
        "the failed transaction's insert is gone"
    );

    // The output gate: a hook's broadcast comes after its SQL is durable,
    // and a failed hook's never comes.
    let (status, _) = sql(
        &server,
        "INSERT INTO todos (text, status) VALUES ('x', 'open')",
        "&send=1&then=panic",
    )
    .await;
    assert_eq!(status, 500);
    silent(&mut ws, Duration::from_millis(200)).await;
    let (status, _) = sql(
        &server,
        "UPDATE todos SET status = 'done' WHERE text = 'milk'",
        "&send=1",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(recv_text(&mut ws).await, "sql");

    // A statement error is the guest's to handle; it writes nothing.
    let (status, body) = sql(
        &server,
        "INSERT INTO todos (id, text, status) VALUES (1, 'dup', 'open')",
        "",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("UNIQUE constraint failed"), "{body}");
    assert_eq!(
        rows(&server, "SELECT count(*) FROM todos WHERE status = 'done'").await,
        ["2"]
    );
    server.stop().await;
}

#[tokio::test]
async fn statements_that_reach_outside_the_room_are_refused_and_the_room_goes_on() {
    let server = Server::start(Options::main("probe")).await;
    let refused = [
        ("ATTACH DATABASE '/tmp/x.db' AS x", "ATTACH"),
        ("PRAGMA journal_mode = DELETE", "journal_mode"),
        ("PRAGMA synchronous = OFF", "synchronous"),
        ("PRAGMA writable_schema = ON", "writable_schema"),
        ("BEGIN", "a hook is one transaction"),
        ("COMMIT", "a hook is one transaction"),
        ("SELECT load_extension('/tmp/evil.so')", "extensions"),
        ("CREATE VIRTUAL TABLE v USING fts5(x)", "virtual tables"),
        ("CREATE TEMP TABLE t (x)", "TEMP"),
        ("SELECT * FROM _dormouse_meta", "_dormouse"),
        ("UPDATE _dormouse_meta SET seq = 0", "_dormouse"),
        ("SAVEPOINT _dormouse_hook", "_dormouse"),
        ("VACUUM", "VACUUM"),
    ];
    for (query, why) in refused {
        let (status, body) = sql(&server, query, "").await;
        assert_eq!(status, 400, "{query} was not refused: {body}");
        assert!(body.contains("Invalid"), "{query}: {body}");
        assert!(body.contains(why), "{query}: {body}");
    }
    // Reading the schema is allowed, and the room still works.
    assert_eq!(
        rows(
            &server,
            "CREATE TABLE t (x); SELECT count(*) FROM pragma_table_info('t')"
        )
        .await,
        ["1"]
    );
    // VACUUM INTO would write a file outside the room: refused, and no
    // file is made.
    let copy = std::env::temp_dir().join(format!("dormouse-vacuum-{}.db", std::process::id()));
    let (status, body) = sql(&server, &format!("VACUUM INTO '{}'", copy.display()), "").await;
    assert_eq!(status, 400, "VACUUM INTO was not refused: {body}");
    assert!(body.contains("VACUUM"), "{body}");
    assert!(!copy.exists(), "VACUUM INTO wrote {}", copy.display());
    server.stop().await;
}

#[tokio::test]
async fn a_runaway_statement_is_stopped_and_the_host_stays_up() {
    let mut options = Options::main("probe");
    options.party_limits = vec![(
        "main",
        PartyLimits {
            hook_cpu_ms: Some(300),
            ..PartyLimits::default()
        },
    )];
    let server = Server::start(options).await;
    let (status, body) = sql(
        &server,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
        "",
    )
    .await;
    // The statement is stopped with an error the hook sees; whether the
    // hook then answers or runs out of its own time, the host answers.
    assert!(status == 400 || status == 500, "{status}: {body}");
    if status == 400 {
        assert!(body.contains("time budget"), "{body}");
    }
    assert_eq!(rows(&server, "SELECT 41 + 1").await, ["42"]);
    server.stop().await;
}

#[tokio::test]
async fn the_quota_counts_the_sql_database() {
    let mut options = Options::main("probe");
    options.party_limits = vec![(
        "main",
        PartyLimits {
            storage_bytes_per_room: Some(256 << 10),
            ..PartyLimits::default()
        },
    )];
    let server = Server::start(options).await;
    rows(&server, "CREATE TABLE big (b BLOB)").await;
    let mut full = None;
    for i in 0..40 {
        let (status, body) = sql(&server, "INSERT INTO big VALUES (zeroblob(16384))", "").await;
        if status != 200 {
            full = Some((i, body));
            break;
        }
    }
    let (i, body) = full.expect("the quota stopped the inserts");
    assert!(i >= 8, "stopped too early, after {i} inserts: {body}");
    assert!(
        body.contains("TooLarge") && body.contains("storage_bytes_per_room"),
        "{body}"
    );
    let (_, size) = server.http("GET", &format!("{ROOM}?op=sql-size"), "").await;
    let size: u64 = size.parse().expect("a size");
    assert!(
        size <= 256 << 10 && size > 100 << 10,
        "database-size {size}"
    );
    // Deleting makes room again.
    rows(&server, "DELETE FROM big").await;
    let (status, body) = sql(&server, "INSERT INTO big VALUES (zeroblob(16384))", "").await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn sql_data_survives_hibernation_and_a_restart() {
    let server = Server::start(Options::main("probe").idle(100)).await;
    rows(
        &server,
        "CREATE TABLE notes (n INTEGER, body TEXT); INSERT INTO notes VALUES (1, 'one')",
    )
    .await;
    // No primary key: recorded by rowid.
    server.wait_metric("dormouse_rooms_awake", 0.0).await;
    assert_eq!(rows(&server, "SELECT body FROM notes").await, ["one"]);
    rows(&server, "ALTER TABLE notes ADD COLUMN extra TEXT DEFAULT 'x'; INSERT INTO notes (n, body) VALUES (2, 'two')").await;
    let options = server.stop().await;
    let server = Server::start(options).await;
    assert_eq!(
        rows(&server, "SELECT n, body, extra FROM notes ORDER BY n").await,
        ["1|one|x", "2|two|x"]
    );
    server.stop().await;
}

/// Clients insert as fast as they are acknowledged while the host is
/// killed with SIGKILL again and again; every acknowledged row is there
/// after each restart. Each insert is its own statement with a schema
/// statement before it, so the log's both kinds of segment are replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_sql_write_survives_kill_9() {
    let data = data_dir();
    let acked: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let rounds = 3;
    for round in 0..=rounds {
        let (mut child, addr) = spawn_host(&data, "probe").await;
        let (status, body) = http(
            addr,
            "POST",
            &format!("{ROOM}?op=sql"),
            "CREATE TABLE IF NOT EXISTS acked (n INTEGER PRIMARY KEY); SELECT n FROM acked",
        )
        .await
        .expect("read back");
        assert_eq!(status, 200, "{body}");
        let stored: BTreeSet<u64> = body.lines().filter_map(|l| l.parse().ok()).collect();
        let want = acked.lock().expect("not poisoned").clone();
        let lost: Vec<_> = want.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged rows lost: {lost:?}"
        );
        if round == rounds {
            child.start_kill().expect("kill");
            break;
        }
        let clients: Vec<_> = (0..4)
            .map(|_| tokio::spawn(insert_until_dead(addr, next.clone(), acked.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(200 + 150 * round as u64)).await;
        child.start_kill().expect("kill");
        child.wait().await.expect("reaped");
        for c in clients {
            c.await.expect("client task");
        }
    }
    let n = acked.lock().expect("not poisoned").len();
    println!("{rounds} kills; {n} SQL inserts acknowledged, none lost");
    assert!(n > 0, "the load ran");
}

async fn insert_until_dead(
    addr: SocketAddr,
    next: Arc<std::sync::atomic::AtomicU64>,
    acked: Arc<Mutex<BTreeSet<u64>>>,
) {
    loop {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let query = format!(
            "CREATE TABLE IF NOT EXISTS acked (n INTEGER PRIMARY KEY); INSERT INTO acked (n) VALUES ({n})"
        );
        match http(addr, "POST", &format!("{ROOM}?op=sql"), &query).await {
            Ok((200, _)) => {
                acked.lock().expect("not poisoned").insert(n);
            }
            _ => return,
        }
    }
}

// The todo list of the examples in each language, the TypeScript one
// written against Durable Objects' `ctx.storage.sql` and ported by
// renaming `ctx` alone.
in_each_language!(todos_in_sql_survive_hibernation_and_a_restart: rust => "todos-sql", ts => "todos-sql-ts", py => "todos-sql-py");
async fn todos_in_sql_survive_hibernation_and_a_restart(guest: &'static str) {
    let room = "/parties/main/groceries";
    let server = Server::start(Options::main(guest).idle(50)).await;
    let mut a = server.ws(room).await;
    let mut b = server.ws(room).await;
    let json = |t: String| -> serde_json::Value { serde_json::from_str(&t).expect("json") };
    assert_eq!(
        json(recv_text(&mut a).await),
        serde_json::json!({"todos": [], "open": 0})
    );
    recv_text(&mut b).await;
    for item in ["milk", "eggs", "bread"] {
        send_text(&mut a, &format!("add {item}")).await;
        let news = json(recv_text(&mut b).await);
        assert_eq!(news["todo"]["text"], item, "{news}");
        recv_text(&mut a).await;
    }
    send_text(&mut b, "done 2").await;
    let news = json(recv_text(&mut a).await);
    recv_text(&mut b).await;
    assert_eq!(
        news,
        serde_json::json!({"todo": {"id": 2, "text": "eggs", "status": "done"}, "open": 2})
    );
    // A bad or unknown id is the sender's error, and changes nothing.
    send_text(&mut a, "done x").await;
    assert!(recv_text(&mut a).await.contains("error"));
    send_text(&mut a, "done 99").await;
    assert!(recv_text(&mut a).await.contains("error"));

    // Hibernated, the room answers from its database.
    server
        .wait_metric("dormouse_rooms{party=\"main\",state=\"hibernated\"}", 1.0)
        .await;
    let (status, open) = server.http("GET", &format!("{room}?status=open"), "").await;
    assert_eq!(status, 200);
    let texts: Vec<_> = json(open)
        .as_array()
        .expect("an array")
        .iter()
        .map(|t| t["text"].clone())
        .collect();
    assert_eq!(texts, ["milk", "bread"]);
    let (status, one) = server.http("GET", &format!("{room}?id=3"), "").await;
    assert_eq!((status, json(one)["text"].clone()), (200, "bread".into()));

    send_text(&mut a, "clear").await;
    assert_eq!(
        json(recv_text(&mut a).await),
        serde_json::json!({"cleared": [2], "open": 2})
    );
    drop((a, b));

    let options = server.stop().await;
    let server = Server::start(options).await;
    let (_, done) = server.http("GET", &format!("{room}?status=done"), "").await;
    assert_eq!(done, "[]");
    let (_, open) = server.http("GET", &format!("{room}?status=open"), "").await;
    assert!(open.contains("milk") && open.contains("bread"), "{open}");
    if guest.ends_with("-ts") {
        // The rest of Cloudflare's cursor: raw(), columnNames, rowsRead,
        // rowsWritten, databaseSize.
        let (status, stats) = server.http("GET", &format!("{room}/stats"), "").await;
        assert_eq!(status, 200, "{stats}");
        let stats: serde_json::Value = serde_json::from_str(&stats).expect("json");
        assert_eq!(
            stats["columns"],
            serde_json::json!(["id", "text", "status"])
        );
        assert_eq!(stats["rows"], 2);
        assert!(stats["rowsRead"].as_u64() >= Some(2), "{stats}");
        assert_eq!(stats["rowsWritten"], 2);
        assert!(stats["databaseSize"].as_u64() > Some(4096), "{stats}");
    }
    server.stop().await;
}
