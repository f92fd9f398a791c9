//! A connection's way out: the bounded queue the room sends into, and the
//! socket's write side, which the room writes to directly when it can.
//!
//! Why directly: a broadcast to N sockets that each had to wake their own
//! task costs N wake-ups, and hops between worker threads, before a byte
//! moves; Node's `ws` writes each socket in the loop that sends. Here the
//! room encodes a message once and writes the frame straight into each
//! socket that has nothing queued and room in its kernel buffer. Only what
//! would block waits in the queue, and only then is the socket task woken
//! to finish it when the socket is writable.
//!
//! The room does so only when it is not busy ([`write_now`]); a busy room
//! queues, and the socket task writes what waits many frames to a `writev`.
//!
//! Every byte of one socket goes out in one order. Every writer (the room,
//! and the socket task through tungstenite: pongs, pings, the auto-response,
//! close frames) decides under one lock whether it may write now: only if
//! nothing waits and the socket task is not writing a batch it took out.
//! What a write leaves over is queued ahead of everything after it, and a
//! frame is never split between two writers.

use std::collections::VecDeque;
use std::io;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::config::MESSAGE_OVERHEAD;
use crate::lock::{lock, read, write};

/// What one nonblocking write of a small frame costs the room's thread
/// (a loopback `send`: 1-2 us measured).
const WRITE_COST: Duration = Duration::from_micros(2);

/// Whether a room writes its output to `sockets` sockets itself: only if
/// it was idle for at least as long as the writes take. A room that idle
/// is not busy, and writing now is the lowest latency. A busier room
/// leaves the writing to the sockets' tasks, which batch frames into one
/// `writev` each and run on every worker while the room goes on: writing
/// every frame from the room's one thread halved the relay's throughput.
pub fn write_now(idle: Duration, sockets: usize) -> bool {
    idle >= WRITE_COST.saturating_mul(sockets as u32)
}

/// A text or binary message encoded once as a server's WebSocket frame
/// (unmasked, unfragmented), however many sockets it goes to.
pub struct Frame(Bytes);

impl Frame {
    /// `None` for anything but text and binary: the room sends nothing else
    /// (closes go through [`Outbound::close`]).
    pub fn new(message: &Message) -> Option<Frame> {
        let (opcode, payload): (u8, &[u8]) = match message {
            Message::Text(t) => (0x1, t.as_bytes()),
            Message::Binary(b) => (0x2, b),
            _ => return None,
        };
        let mut wire = Vec::with_capacity(payload.len() + 10);
        wire.push(0x80 | opcode);
        match payload.len() {
            n @ 0..=125 => wire.push(n as u8),
            n @ 126..=0xFFFF => {
                wire.push(126);
                wire.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                wire.push(127);
                wire.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        wire.extend_from_slice(payload);
        Some(Frame(wire.into()))
    }
}

/// The room's half: cheap to clone, never waits.
pub struct Outbound {
    shared: Arc<Link>,
    limit: usize,
}

/// The socket task's half.
pub struct OutboundQueue {
    shared: Arc<Link>,
}

/// The socket's IO as tungstenite sees it: reads go to the socket, writes
/// join the same ordered stream as the room's direct writes. Dropping it
/// closes the socket.
pub struct Wire {
    shared: Arc<Link>,
}

/// What the socket task is asked to do next.
pub enum Next {
    /// Bytes wait for the socket to be writable: flush them.
    Flush,
    /// The room closes this connection (after what it sent before).
    Close(CloseFrame),
    /// The room dropped this connection (it was replaced).
    Dropped,
}

/// What the room's senders and the socket task share: one per connection.
struct Link {
    inner: Mutex<Inner>,
    /// The socket, from the upgrade until the socket task ends. Apart from
    /// `inner`, so the socket task writes and reads without holding the
    /// lock the room pushes under; a read lock is all a write needs.
    tcp: RwLock<Option<TcpStream>>,
    /// Wakes the socket task: bytes wait, a close came, or the last sender went.
    ready: Notify,
    /// Bytes waiting, each message counted with [`MESSAGE_OVERHEAD`].
    queued: AtomicUsize,
    senders: AtomicUsize,
    /// Set when the queue overflows: the socket task then closes with 1008.
    overflowed: AtomicBool,
    /// Wakes the socket task on overflow, even mid-write.
    overflow: Notify,
}

#[derive(Default)]
struct Inner {
    /// Encoded frames not yet (wholly) written, oldest first. The first may
    /// be a frame's tail: nothing may be written before it.
    pending: VecDeque<Bytes>,
    /// The socket task is writing frames it took from `pending`: nothing
    /// else may be written until it has put back what it could not.
    writing: bool,
    /// The room's close, not yet taken by the socket task.
    close: Option<CloseFrame>,
    /// A close frame was asked for, sent or received: no data frame may follow.
    sealed: bool,
}

impl Link {
    /// Write `bytes` now if nothing is ahead of them; queue what the socket
    /// does not take. Called with `inner` locked, so the check and the
    /// write are one step.
    fn write_or_queue(&self, inner: &mut Inner, mut bytes: Bytes) {
        if inner.pending.is_empty() && !inner.writing {
            let tcp = read(&self.tcp);
            if let Some(tcp) = tcp.as_ref() {
                // An error (it would block, or the socket failed) writes
                // nothing: all is queued, and the socket task hears of a
                // failure from its own read or write.
                if let Ok(n) = tcp.try_write(&bytes) {
                    bytes.advance(n);
                }
            }
        }
        if !bytes.is_empty() {
            self.queued
                .fetch_add(bytes.len() + MESSAGE_OVERHEAD, Relaxed);
            inner.pending.push_back(bytes);
        }
    }

    /// Bytes of `pending` were written.
    fn written(&self, n: usize, entries: usize) {
        self.queued
            .fetch_sub(n + entries * MESSAGE_OVERHEAD, Relaxed);
    }
}

impl Outbound {
    /// A queue of at most `limit` bytes; the other half goes to the socket task.
    pub fn new(limit: usize) -> (Outbound, OutboundQueue) {
        let shared = Arc::new(Link {
            inner: Mutex::default(),
            tcp: RwLock::new(None),
            ready: Notify::new(),
            queued: AtomicUsize::new(0),
            senders: AtomicUsize::new(1),
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
        });
        let out = Outbound {
            shared: shared.clone(),
            limit,
        };
        (out, OutboundQueue { shared })
    }

    /// Send a frame without waiting: with `now`, written at once if the
    /// socket takes it; else (or for what it does not take) queued for the
    /// socket task. Past the limit the client is marked too slow. One frame
    /// always fits an empty queue, whatever its size. False if it will not
    /// be sent (too slow, or the connection is closing).
    pub fn push(&self, frame: &Frame, now: bool) -> bool {
        let shared = &*self.shared;
        let mut inner = lock(&shared.inner);
        if inner.sealed {
            return false;
        }
        let cost = frame.0.len() + MESSAGE_OVERHEAD;
        let queued = shared.queued.load(Relaxed);
        if queued > 0 && queued + cost > self.limit {
            drop(inner);
            shared.overflowed.store(true, Relaxed);
            shared.overflow.notify_waiters();
            return false;
        }
        if now {
            shared.write_or_queue(&mut inner, frame.0.clone());
        } else {
            shared.queued.fetch_add(cost, Relaxed);
            inner.pending.push_back(frame.0.clone());
        }
        let waiting = !inner.pending.is_empty();
        drop(inner);
        if waiting {
            shared.ready.notify_one();
        }
        true
    }

    /// Ask the socket to close with this code and reason, after what was
    /// sent before. Nothing sent after it goes out.
    pub fn close(&self, code: u16, reason: &str) {
        let mut inner = lock(&self.shared.inner);
        if inner.sealed {
            return;
        }
        inner.sealed = true;
        inner.close = Some(CloseFrame {
            code: code.into(),
            reason: reason.into(),
        });
        drop(inner);
        self.shared.ready.notify_one();
    }
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Relaxed);
        Outbound {
            shared: self.shared.clone(),
            limit: self.limit,
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Relaxed) == 1 {
            self.shared.ready.notify_one();
        }
    }
}

impl OutboundQueue {
    /// Give the upgraded socket to the queue: from now on the room writes
    /// to it directly. Tungstenite reads and writes through the `Wire`.
    pub fn attach(&self, tcp: TcpStream) -> Wire {
        *write(&self.shared.tcp) = Some(tcp);
        if !lock(&self.shared.inner).pending.is_empty() {
            self.shared.ready.notify_one();
        }
        Wire {
            shared: self.shared.clone(),
        }
    }

    /// What to do next: waits until there is something.
    pub async fn next(&self) -> Next {
        loop {
            // Registered before looking, so a notify meanwhile is not lost.
            let ready = self.shared.ready.notified();
            {
                let mut inner = lock(&self.shared.inner);
                if !inner.pending.is_empty() {
                    return Next::Flush;
                }
                if let Some(frame) = inner.close.take() {
                    return Next::Close(frame);
                }
            }
            if self.shared.senders.load(Relaxed) == 0 {
                return Next::Dropped;
            }
            ready.await;
        }
    }

    /// Returns once the queue has overflowed (the client reads too slowly).
    pub async fn overflowed(&self) {
        loop {
            // Registered before looking, so an overflow meanwhile is seen.
            let overflow = self.shared.overflow.notified();
            if self.shared.overflowed.load(Relaxed) {
                return;
            }
            overflow.await;
        }
    }

    /// The next queued message, decoded (tests read what the room sent).
    #[cfg(test)]
    pub fn try_recv(&self) -> Option<Message> {
        let mut inner = lock(&self.shared.inner);
        let mut wire = inner.pending.pop_front()?;
        self.shared.written(wire.len(), 1);
        let opcode = wire.get_u8() & 0x0F;
        let len = match wire.get_u8() {
            126 => usize::from(wire.get_u16()),
            127 => wire.get_u64() as usize,
            n => usize::from(n),
        };
        assert_eq!(len, wire.len(), "one whole frame");
        match opcode {
            0x1 => Some(Message::Text(wire.try_into().expect("UTF-8"))),
            _ => Some(Message::Binary(wire)),
        }
    }
}

impl Wire {
    fn shared(&self) -> &Link {
        &self.shared
    }

    /// The socket is about to send or echo a close frame: no data frame
    /// may follow it.
    pub fn seal(&self) {
        lock(&self.shared.inner).sealed = true;
    }
}

/// At most this many frames go in one `writev`.
const BATCH: usize = 64;

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = read(&self.shared().tcp);
        let Some(tcp) = tcp.as_ref() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; polling again registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Wire {
    /// Takes every byte at once: what the socket does not take now waits
    /// behind what already waits, and `poll_flush` writes it. Tungstenite
    /// writes whole frames, so a frame is never split between two writers;
    /// its own sends wait in `poll_flush`, so a client that stops reading
    /// still stops the socket task.
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = self.shared();
        let mut inner = lock(&shared.inner);
        shared.write_or_queue(&mut inner, Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    /// Write what waits, many frames to a `writev`, without holding the
    /// lock the room pushes under: the frames are taken out (`writing`
    /// keeps everything else behind them) and what the socket does not
    /// take goes back in front.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = self.shared();
        loop {
            let mut batch = {
                let mut inner = lock(&shared.inner);
                if inner.pending.is_empty() {
                    // Give a burst's memory back once it has drained.
                    if inner.pending.capacity() > 64 {
                        inner.pending = VecDeque::new();
                    }
                    return Poll::Ready(Ok(()));
                }
                inner.writing = true;
                std::mem::take(&mut inner.pending)
            };
            let result = Self::write_batch(shared, &mut batch, cx);
            let mut inner = lock(&shared.inner);
            inner.writing = false;
            if !batch.is_empty() {
                batch.append(&mut inner.pending);
                inner.pending = batch;
            }
            drop(inner);
            match result {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let mut tcp = write(&self.shared().tcp);
        match tcp.as_mut() {
            Some(tcp) => Pin::new(tcp).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Wire {
    /// Write the batch until it is empty (ready) or the socket is full
    /// (pending, the waker registered).
    fn write_batch(
        shared: &Link,
        batch: &mut VecDeque<Bytes>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = read(&shared.tcp);
        let Some(tcp) = tcp.as_ref() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while !batch.is_empty() {
            ready!(tcp.poll_write_ready(cx))?;
            let slices: Vec<IoSlice<'_>> =
                batch.iter().take(BATCH).map(|b| IoSlice::new(b)).collect();
            match tcp.try_write_vectored(&slices) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(mut n) => {
                    let (mut bytes, mut done) = (0, 0);
                    while n > 0 {
                        let front = batch.front_mut().expect("written bytes were queued");
                        let step = n.min(front.len());
                        front.advance(step);
                        n -= step;
                        bytes += step;
                        if front.is_empty() {
                            batch.pop_front();
                            done += 1;
                        }
                    }
                    shared.written(bytes, done);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Wire {
    /// The socket task is done: close the socket now (the room may keep
    /// its `Outbound` a while longer), and free what still waited.
    fn drop(&mut self) {
        let mut inner = lock(&self.shared.inner);
        inner.sealed = true;
        inner.pending = VecDeque::new();
        *write(&self.shared.tcp) = None;
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpSocket};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// A connected pair on loopback: (server side, client side). The
    /// client's receive buffer is small, so a few frames fill it.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(socket.connect(addr), listener.accept());
        (accepted.expect("accept").0, client.expect("connect"))
    }

    #[tokio::test]
    async fn the_room_writes_straight_to_a_socket_with_room() {
        let (server, mut client) = pair().await;
        let (out, queue) = Outbound::new(1 << 20);
        let _wire = queue.attach(server);
        // No socket task runs here: the bytes can only come from the push.
        assert!(out.push(&frame(Message::text("hello")), true));
        let mut got = [0u8; 7];
        let read = client.read_exact(&mut got);
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the frame arrives without a socket task")
            .expect("read");
        assert_eq!(&got, b"\x81\x05hello");
        assert!(
            lock(&queue.shared.inner).pending.is_empty(),
            "nothing queued"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_stay_whole_and_in_order_past_a_full_socket() {
        let (server, client) = pair().await;
        let (out, queue) = Outbound::new(64 << 20);
        let wire = queue.attach(server);
        // The first frames go straight out, until the client's buffers are
        // full; the rest wait, and the socket task writes them later,
        // between its own pings.
        const N: usize = 2000;
        for i in 0..N {
            let body = format!("{i}:{}", "x".repeat(4000));
            assert!(out.push(&frame(Message::text(body)), true));
        }
        assert!(!lock(&queue.shared.inner).pending.is_empty(), "some waited");
        let socket_task = tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(wire, Role::Server, None).await;
            let mut flushes = 0;
            while let Next::Flush = queue.next().await {
                ws.send(Message::Ping(Bytes::from_static(b"p")))
                    .await
                    .expect("ping");
                ws.flush().await.expect("flush");
                flushes += 1;
            }
            flushes
        });
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut next = 0;
        while next < N {
            match client.next().await.expect("open").expect("a frame") {
                Message::Text(t) => {
                    let (seq, body) = t.split_once(':').expect("seq:body");
                    assert_eq!(seq.parse::<usize>().expect("seq"), next, "in order");
                    assert_eq!(body.len(), 4000, "whole");
                    next += 1;
                }
                Message::Ping(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(out);
        assert!(socket_task.await.expect("task") > 0);
    }

    fn frame(m: Message) -> Frame {
        Frame::new(&m).expect("data")
    }

    #[test]
    fn the_outbound_queue_is_bounded_in_bytes() {
        let (out, queue) = Outbound::new(1000);
        // One message always fits an empty queue.
        assert!(out.push(&frame(Message::binary(vec![0; 5000])), true));
        assert!(!out.push(&frame(Message::text("x")), true));
        assert!(queue.shared.overflowed.load(Relaxed));
        let (out, small) = Outbound::new(1000);
        for _ in 0..10 {
            assert!(out.push(&frame(Message::text("tiny")), true));
        }
        assert!(!small.shared.overflowed.load(Relaxed));
        assert_eq!(small.try_recv(), Some(Message::text("tiny")));
        assert_eq!(queue.try_recv().map(|m| m.len()), Some(5000));
        // A close goes after what was sent before it; nothing after it.
        out.close(4000, "bye");
        assert!(!out.push(&frame(Message::text("late")), true));
        // The last sender gone and the queue drained: the socket hears so.
        drop(out);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut n = 0;
        let last = loop {
            match rt.block_on(small.next()) {
                Next::Flush => small.try_recv().expect("a message"),
                other => break other,
            };
            n += 1;
        };
        assert_eq!(n, 9);
        assert!(matches!(last, Next::Close(f) if u16::from(f.code) == 4000 && f.reason == "bye"));
        assert!(matches!(rt.block_on(small.next()), Next::Dropped));
    }

    #[test]
    fn frames_are_encoded_as_a_server_sends_them() {
        for len in [0, 125, 126, 65535, 65536] {
            let f = frame(Message::binary(vec![7; len]));
            let header = match len {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(f.0.len(), header + len);
            assert_eq!(f.0[0], 0x82);
        }
        assert_eq!(&frame(Message::text("hi")).0[..], b"\x81\x02hi");
        assert!(Frame::new(&Message::Ping(Bytes::new())).is_none());
    }
}
