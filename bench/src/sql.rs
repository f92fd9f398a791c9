//! `dormouse bench sql`: what a room's SQL database costs beside key-value
//! storage, measured in one run on one server:
//! - the wake: requests to rooms that hibernate after every event, a
//!   key-value room (`examples/counter`, a GET reads one key) beside
//!   `examples/todos-sql` rooms with a one-row and a 10 MB database (a GET
//!   reads one todo by id; its on-start opens the database);
//! - durable writes per second across `--rooms` rooms, one client each,
//!   `inc` on the counter (a key-value put) and then `add` on the todos (a
//!   SQL insert), each acknowledged only once durable (the output gate).

use std::path::Path;
use std::time::Instant;

use crate::{
    BenchArgs, Parties, Report, Server, connect_many, dormouse_build, get, hammer, histogram,
    request,
};

/// Todos one `?seed=` request adds (about 1 MB of rows).
const SEED_ROWS: u64 = 10_000;

pub(crate) async fn sql(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let parties = Parties::build(&args.examples)?;
    let todos = dormouse_build(&args.examples.join("todos-sql"))?;
    let extra = format!("[parties.todos]\ncomponent = {todos:?}\n");
    wake(args, out, &parties, &extra).await?;
    writes(args, out, &parties, &extra).await
}

async fn wake(
    args: &BenchArgs,
    out: &mut Report,
    parties: &Parties,
    extra: &str,
) -> anyhow::Result<()> {
    let server = Server::start(parties, 0, extra).await?;
    let addr = server.addr;
    request(addr, "POST", "/parties/counter/kv", "").await?;
    request(addr, "POST", "/parties/todos/small", "one todo").await?;
    while sql_bytes(&server.dir.join("data"))? < 10 << 20 {
        request(
            addr,
            "POST",
            &format!("/parties/todos/big?seed={SEED_ROWS}"),
            "",
        )
        .await?;
    }
    out.figure(
        "sql",
        "big_database_bytes",
        sql_bytes(&server.dir.join("data"))? as f64,
        "bytes",
    );
    let (mut kv, mut small, mut big) = (histogram(), histogram(), histogram());
    let time = |path: String| async move {
        let t = Instant::now();
        get(addr, &path).await?;
        anyhow::Ok(t.elapsed().as_nanos() as u64)
    };
    for round in 0..(args.rounds + 20) as u64 {
        let id = 1 + (round * 7919) % (SEED_ROWS * 10);
        let (k, s, b) = (
            time("/parties/counter/kv".into()).await?,
            time("/parties/todos/small?id=1".into()).await?,
            time(format!("/parties/todos/big?id={id}")).await?,
        );
        if round >= 20 {
            kv.record(k)?;
            small.record(s)?;
            big.record(b)?;
        }
    }
    out.latencies("sql", "wake_kv_room", &kv);
    out.latencies("sql", "wake_sql_room_1_row", &small);
    out.latencies("sql", "wake_sql_room_10_mb", &big);
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        let added = big.value_at_quantile(q) as f64 - kv.value_at_quantile(q) as f64;
        out.figure(
            "sql",
            &format!("added_by_10_mb_sql_{label}"),
            added / 1e3,
            "us",
        );
    }
    server.stop().await;
    Ok(())
}

/// Bytes of every room's SQL database under a data dir.
fn sql_bytes(data: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let Ok(parties) = std::fs::read_dir(data.join("sql")) else {
        return Ok(0);
    };
    for party in parties {
        for file in std::fs::read_dir(party?.path())? {
            total += file?.metadata()?.len();
        }
    }
    Ok(total)
}

async fn writes(
    args: &BenchArgs,
    out: &mut Report,
    parties: &Parties,
    extra: &str,
) -> anyhow::Result<()> {
    let server = Server::start(parties, 600_000, extra).await?;
    out.figure("sql", "rooms", args.rooms as f64, "rooms");
    let mut per_s = Vec::new();
    for (label, party, command) in [
        ("kv_puts", "counter", "inc"),
        ("sql_inserts", "todos", "add milk"),
    ] {
        let clients = connect_many(server.addr, args.rooms, |i| {
            format!("/parties/{party}/w-{i}")
        })
        .await?;
        let commits_before = server.metric("dormouse_storage_commits_total").await;
        let (writes, took) = hammer(clients, command, args.seconds).await?;
        let commits = server.metric("dormouse_storage_commits_total").await - commits_before;
        out.figure(
            "sql",
            &format!("{label}_durable_per_s"),
            writes / took,
            "writes/s",
        );
        out.figure(
            "sql",
            &format!("{label}_commits_per_s"),
            commits / took,
            "commits/s",
        );
        per_s.push(writes / took);
    }
    out.figure("sql", "sql_over_kv_writes", per_s[1] / per_s[0], "x");
    server.stop().await;
    Ok(())
}
