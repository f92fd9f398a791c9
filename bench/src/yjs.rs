//! `dormouse bench yjs`: Yjs documents of 10 KB, 1 MB and 10 MB in a room
//! that hibernates after every event. What a client waits for when it sends
//! sync step 1 to a sleeping document: the wake, the read from storage and
//! the room's sync step 2, for a new client (empty state vector: the stored
//! snapshot goes out as it is) and a returning one (it has everything: only
//! the delete set and the updates since are read and diffed). Then the
//! workloads of `yjs_peers`, beside Hocuspocus and the y-websocket server.

use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact};

use super::{
    BenchArgs, Parties, Report, Server, Ws, bucket_quantile, buckets, connect, dormouse_build,
    histogram, since,
};

/// Document sizes, bytes of text.
const SIZES: [(usize, &str); 3] = [(10_000, "10KB"), (1_000_000, "1MB"), (10_000_000, "10MB")];

/// A text of about `size` characters typed as a person would: many small
/// inserts at scattered places, some deletions; the update of the whole.
fn document(size: usize) -> (Vec<u8>, Vec<u8>) {
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    let chunk = if size > 1_000_000 { 500 } else { 50 };
    let (mut len, mut seed) = (0u32, 7u64);
    while (len as usize) < size {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut txn = doc.transact_mut();
        let at = if len == 0 {
            0
        } else {
            (seed >> 33) as u32 % len
        };
        text.insert(&mut txn, at, &"x".repeat(chunk));
        len += chunk as u32;
        if seed % 5 == 0 && len > 20 {
            text.remove_range(&mut txn, at, 10);
            len -= 10;
        }
    }
    let txn = doc.transact();
    (
        txn.encode_state_as_update_v1(&StateVector::default()),
        txn.state_vector().encode_v1(),
    )
}

/// Send a sync message; wait for the room's sync step 2; nanoseconds.
async fn step1(ws: &mut Ws, message: &[u8]) -> anyhow::Result<u64> {
    let t = Instant::now();
    ws.send(Message::binary(message.to_vec())).await?;
    loop {
        match ws.next().await.context("closed")?? {
            Message::Binary(b) if b.starts_with(&[0, 1]) => {
                return Ok(t.elapsed().as_nanos() as u64);
            }
            Message::Close(c) => bail!("closed: {c:?}"),
            _ => {}
        }
    }
}

pub(super) async fn yjs(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let component = dormouse_build(&args.examples.join("yjs"))?;
    let parties = Parties::build(&args.examples)?;
    // A new client gets the whole document in one message.
    let extra = format!(
        "[parties.yjs]\ncomponent = {component:?}\n[parties.yjs.limits]\n\
         message_bytes = 33554432\noutbound_queue_bytes = 67108864\n"
    );
    let server = Server::start(&parties, 0, &extra).await?;
    let alarms = "dormouse_hook_seconds_count{hook=\"on-alarm\"}";
    let wakes = "dormouse_wakes_total{party=\"yjs\"}";
    for (i, (size, label)) in SIZES.into_iter().enumerate() {
        let (update, sv) = document(size);
        out.figure(
            "yjs",
            &format!("{label}_update_bytes"),
            update.len() as f64,
            "B",
        );
        let path = format!("/parties/yjs/doc-{label}");
        // Seed it; the room compacts at once (one large update).
        let before = server.metric(alarms).await;
        let mut seed = connect(server.addr, &path, 2 * i).await?;
        let put = YMessage::Sync(SyncMessage::Update(update)).encode_v1();
        seed.send(Message::binary(put)).await?;
        server.settle(alarms, before + 1.0).await?;
        let _ = seed.close(None).await;

        let mut ws = connect(server.addr, &path, 2 * i + 1).await?;
        let new = YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        let returning = {
            let mut m = vec![0, 0];
            yrs::encoding::write::Write::write_buf(&mut m, &sv);
            m
        };
        step1(&mut ws, &returning).await?; // warm the compiled code
        let rounds = args.rounds.min(if size > 1_000_000 { 20 } else { 100 });
        let woke_before = server.metric(wakes).await;
        let wake_buckets = buckets(&server, "dormouse_wake_seconds").await;
        let (mut hn, mut hr) = (histogram(), histogram());
        for _ in 0..rounds {
            hn.record(step1(&mut ws, &new).await?)?;
            hr.record(step1(&mut ws, &returning).await?)?;
        }
        let woke = server.metric(wakes).await - woke_before;
        let wake = since(
            &buckets(&server, "dormouse_wake_seconds").await,
            &wake_buckets,
        );
        out.latencies("yjs", &format!("{label}_new_client_step2"), &hn);
        out.latencies("yjs", &format!("{label}_returning_client_step2"), &hr);
        out.figure(
            "yjs",
            &format!("{label}_wakes_per_step1"),
            woke / (2 * rounds) as f64,
            "",
        );
        let p50 = bucket_quantile(&wake, 0.5) * 1e6;
        out.figure(
            "yjs",
            &format!("{label}_dormouse_wake_seconds_p50"),
            p50,
            "us",
        );
    }
    server.stop().await;
    // The shapes users have, beside the peers users compare with.
    super::yjs_peers::peers(args, out).await
}
