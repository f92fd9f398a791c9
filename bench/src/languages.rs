//! `dormouse bench languages`: the relay room in Rust (`examples/relay`),
//! TypeScript (`examples/relay-ts`) and Python (`examples/relay-py`), side by
//! side in one run:
//! - deploy time to a fresh server of each language's first room (nothing
//!   compiled yet) and second (its counter: the language runtime's code is
//!   in the compile cache), and the server's RSS before and after;
//! - wake: `dormouse_wake_seconds` and the relay round trip in a room that
//!   hibernates after every event;
//! - private memory per awake room (`RssAnon`: shared image pages would
//!   inflate VmRSS), A rooms of each;
//! - relay throughput, C clients in lockstep rounds.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    BenchArgs, Parties, Report, Server, Workers, bucket_quantile, buckets, connect, dormouse_build,
    histogram, relay_rounds, relay_trip, since,
};

/// PUT a component to the admin API (a plain HTTP/1.1 request); seconds.
async fn deploy(server: &Server, party: &str, wasm: &std::path::Path) -> anyhow::Result<f64> {
    let token = std::fs::read_to_string(server.dir.join("data").join("admin-token"))?;
    let bytes = std::fs::read(wasm)?;
    let t = Instant::now();
    let mut tcp = TcpStream::connect(server.addr).await?;
    let head = format!(
        "PUT /_dormouse/parties/{party} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        token.trim(),
        bytes.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(&bytes).await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    anyhow::ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "deploying {party}: {answer}"
    );
    Ok(t.elapsed().as_secs_f64())
}

/// (label, relay example, counter example) of each language.
const LANGUAGES: [(&str, &str, &str); 3] = [
    ("rust", "relay", "counter"),
    ("ts", "relay-ts", "counter-ts"),
    ("py", "relay-py", "counter-py"),
];

pub(super) async fn languages(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let mut built = Vec::new();
    for (label, relay, counter) in LANGUAGES {
        let relay = dormouse_build(&args.examples.join(relay))?;
        let counter = dormouse_build(&args.examples.join(counter))?;
        built.push((label, relay, counter));
    }
    let parties = Parties::build(&args.examples)?;

    // Deploys to a fresh server (its own empty compile cache).
    let server = Server::start(&parties, 10_000, "").await?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let before = server.quiet_rss().await?;
    out.figure("languages", "server_rss_before_deploys", mib(before), "MiB");
    for (label, relay, counter) in &built {
        let first = deploy(&server, &format!("{label}-relay"), relay).await?;
        let second = deploy(&server, &format!("{label}-counter"), counter).await?;
        out.figure("languages", &format!("{label}_first_deploy"), first, "s");
        out.figure("languages", &format!("{label}_second_deploy"), second, "s");
        let rss = server.quiet_rss().await?;
        out.figure(
            "languages",
            &format!("server_rss_after_{label}_deploys"),
            mib(rss),
            "MiB",
        );
    }
    server.stop().await;

    // Wake, relay and memory: every language's relay on the same servers.
    let extra: String = built
        .iter()
        .map(|(label, relay, _)| format!("[parties.relay-{label}]\ncomponent = {relay:?}\n"))
        .collect();
    let sleepy = Server::start(&parties, 0, &extra).await?;
    for (n, (label, _, _)) in built.iter().enumerate() {
        let path = format!("/parties/relay-{label}/wake");
        let mut pair = (
            connect(sleepy.addr, &path, 2 * n).await?,
            connect(sleepy.addr, &path, 2 * n + 1).await?,
        );
        for _ in 0..20 {
            relay_trip(&mut pair).await?;
        }
        let before = buckets(&sleepy, "dormouse_wake_seconds").await;
        let mut h = histogram();
        for _ in 0..args.rounds {
            h.record(relay_trip(&mut pair).await?)?;
        }
        let wakes = since(&buckets(&sleepy, "dormouse_wake_seconds").await, &before);
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let v = bucket_quantile(&wakes, q) * 1e6;
            out.figure(
                "languages",
                &format!("{label}_dormouse_wake_seconds_{name}"),
                v,
                "us",
            );
        }
        out.latencies("languages", &format!("{label}_round_trip_waking"), &h);
    }
    sleepy.stop().await;

    let awake_extra = format!(
        "{extra}[limits]\nawake_rooms = {}\n",
        args.awake.max(1) * 3 + 8
    );
    let server = Server::start(&parties, 600_000, &awake_extra).await?;
    let (mut rates, mut per_room) = (Vec::new(), Vec::new());
    for (label, _, _) in &built {
        let party = format!("relay-{label}");
        let (rate, h) = relay_rounds(&server, &party, args).await?;
        out.figure(
            "languages",
            &format!("{label}_relay_deliveries_per_s"),
            rate,
            "msg/s",
        );
        out.latencies("languages", &format!("{label}_relay_delivery"), &h);
        rates.push(rate);
        // A rooms awake at once, one connection each (its connect wakes it).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server.status_bytes("RssAnon")?;
        let series = format!("dormouse_rooms{{party=\"{party}\",state=\"awake\"}}");
        // The relay's own room is awake too.
        let awake_before = server.metric(&series).await;
        let path = format!("/parties/{party}/awake-{{}}");
        let (workers, held) = Workers::hold(server.addr, &path, 0, args.awake).await?;
        server.settle(&series, awake_before + held as f64).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = server.status_bytes("RssAnon")?;
        let per = after.saturating_sub(before) as f64 / held.max(1) as f64;
        out.figure(
            "languages",
            &format!("{label}_private_bytes_per_awake_room"),
            per,
            "bytes",
        );
        per_room.push(per);
        workers.stop().await;
    }
    for (i, (label, _, _)) in built.iter().enumerate().skip(1) {
        out.figure(
            "languages",
            &format!("{label}_relay_over_rust"),
            rates[i] / rates[0],
            "x",
        );
        out.figure(
            "languages",
            &format!("{label}_awake_room_over_rust"),
            per_room[i] / per_room[0],
            "x",
        );
    }
    server.stop().await;
    Ok(())
}
