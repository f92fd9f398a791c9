//! Wake cost, side by side: the counter example in a room that hibernates
//! after every event (idle timeout 0) and in one that stays awake, on two
//! hosts in this process, messages interleaved so noise hits both alike.
//!
//! Run with: `cargo bench -p dormouse-tests --bench wake [-- ROUNDS]`
//!
//! Prints the round-trip p50 / p99 of both, the added latency of a wake,
//! and the p50 / p99 of the sleeping host's `dormouse_wake_seconds`
//! (instantiate + on-start), read from its histogram as Prometheus'
//! `histogram_quantile` would.

use std::time::{Duration, Instant};

use dormouse_tests::*;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let sleepy = Server::start(Options::main("counter").idle(0)).await;
    let awake = Server::start(Options::main("counter").idle(60_000)).await;
    let mut s = sleepy.ws("/parties/main/bench").await;
    let mut a = awake.ws("/parties/main/bench").await;
    recv_text(&mut s).await;
    recv_text(&mut a).await;
    // Warm both (pool slots, page cache) before measuring.
    for _ in 0..50 {
        round_trip(&mut s).await;
        round_trip(&mut a).await;
    }
    let wakes_before = histogram(&sleepy, "dormouse_wake_seconds").await;
    let (mut sleeping, mut awaken) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        sleeping.push(round_trip(&mut s).await);
        awaken.push(round_trip(&mut a).await);
    }
    let wakes_after = histogram(&sleepy, "dormouse_wake_seconds").await;
    let wakes: Vec<(f64, f64)> = wakes_after
        .iter()
        .zip(&wakes_before)
        .map(|((le, n), (_, m))| (*le, n - m))
        .collect();

    let (s50, s99) = (quantile(&mut sleeping, 0.5), quantile(&mut sleeping, 0.99));
    let (a50, a99) = (quantile(&mut awaken, 0.5), quantile(&mut awaken, 0.99));
    println!("rounds: {rounds} messages to each room (counter example, `inc`)");
    println!("round trip, room hibernating after every event: p50 {s50:?}  p99 {s99:?}");
    println!("round trip, room awake:                         p50 {a50:?}  p99 {a99:?}");
    println!(
        "added by a wake:                                p50 {:?}  p99 {:?}",
        s50.saturating_sub(a50),
        s99.saturating_sub(a99)
    );
    println!(
        "dormouse_wake_seconds over {} wakes:           p50 {:.1} us  p99 {:.1} us",
        wakes.last().map_or(0.0, |(_, n)| *n),
        bucket_quantile(&wakes, 0.5) * 1e6,
        bucket_quantile(&wakes, 0.99) * 1e6
    );
    sleepy.stop().await;
    awake.stop().await;
}

async fn round_trip(ws: &mut Client) -> Duration {
    let t = Instant::now();
    send_text(ws, "inc").await;
    recv_text(ws).await;
    t.elapsed()
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The cumulative buckets of a histogram: (upper bound, count), `+Inf` last.
async fn histogram(server: &Server, name: &str) -> Vec<(f64, f64)> {
    let (_, text) = server.http("GET", "/_dormouse/metrics", "").await;
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect()
}

/// Prometheus' `histogram_quantile`: linear interpolation inside the bucket.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |(_, n)| *n);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let width = n - prev.1;
            let within = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * within;
        }
        prev = (le, n);
    }
    prev.0
}
