//! One task per WebSocket: frames in become room events; what the room
//! could not write straight to the socket goes out from here. Knows no
//! Wasm and no SQLite.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::clock::Ticker;
use crate::room::outbound::{Next, OutboundQueue, Wire};
use crate::room::state::RoomStatus;
use crate::room::{ConnRef, Event, RoomTx};
use crate::ws::from_ws;

/// How long a close the host starts lingers: writing its close frame, then
/// reading (and dropping) what the client still sends.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// The most a lingering close reads from a client that keeps sending.
const CLOSE_BUDGET: usize = 4 << 20;

const TOO_SLOW: &str = "too slow: outbound queue full";

/// What the socket task needs.
pub struct Socket {
    pub conn: ConnRef,
    pub room: RoomTx,
    pub outbound: OutboundQueue,
    pub shutdown: CancellationToken,
    /// The room's auto-response is answered here, without the room.
    pub status: Arc<RoomStatus>,
    /// The host's ping tick (`ping_interval_ms`), shared by every socket.
    pub pings: Arc<Ticker>,
}

/// How the socket ended, for the room's on-close.
struct Ended {
    code: u16,
    reason: String,
    was_clean: bool,
}

impl Socket {
    /// Not an `async fn`: its future would keep the socket and the stream
    /// twice (as arguments, and as the body's copies of them), and every
    /// idle socket would pay for both.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would keep its arguments twice"
    )]
    pub fn run(mut self, mut ws: WebSocketStream<Wire>) -> impl Future<Output = ()> {
        async move {
            let ended = self.pump(&mut ws).await;
            // Closes the socket now, whenever the room lets go of its half.
            drop(ws);
            let Some(ended) = ended else { return };
            let _ = self
                .room
                .send(Event::Closed {
                    conn: self.conn.clone(),
                    code: ended.code,
                    reason: ended.reason,
                    was_clean: ended.was_clean,
                })
                .await;
        }
    }

    /// Move frames both ways until the socket ends; `None` at host shutdown
    /// (the rooms are stopping too, so no on-close is owed).
    async fn pump(&mut self, ws: &mut WebSocketStream<Wire>) -> Option<Ended> {
        // The tick in which the client was last heard from.
        let mut heard = self.pings.now();
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    close(ws, CloseCode::Away, "server shutting down").await;
                    return None;
                }
                () = self.outbound.overflowed() => {
                    close(ws, CloseCode::Policy, TOO_SLOW).await;
                    return Some(Ended { code: 1008, reason: TOO_SLOW.into(), was_clean: false });
                }
                next = self.outbound.next() => {
                    if let Err(ended) = self.outgoing(ws, next).await {
                        return ended;
                    }
                }
                tick = self.pings.next() => {
                    // Nothing heard for two whole intervals (three ticks
                    // since the one it was last heard in): the peer is gone
                    // without a FIN (half-open TCP). No close frame can reach it.
                    if tick.saturating_sub(heard) >= 3 {
                        return Some(Ended { code: 1006, reason: "ping timeout".into(), was_clean: false });
                    }
                    if let Err(ended) = self.guarded(ws.send(Message::Ping(Default::default()))).await {
                        return ended;
                    }
                }
                incoming = ws.next() => {
                    if matches!(incoming, Some(Ok(_))) {
                        heard = self.pings.now();
                    }
                    match incoming {
                        Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                            if let Some(reply) = self.status.answer(&message) {
                                if let Err(ended) = self.guarded(ws.send(reply)).await {
                                    return ended;
                                }
                                continue;
                            }
                            let Some(message) = from_ws(&message) else { continue };
                            let event = Event::Message { conn: self.conn.clone(), message };
                            match self.room.offer(event) {
                                Ok(()) => {}
                                Err((_, true)) => {
                                    close(ws, CloseCode::Error, "room unavailable").await;
                                    return None;
                                }
                                // Boxed: only a busy room's sockets pay for the wait.
                                Err((event, false)) => {
                                    if let Err(ended) = Box::pin(self.deliver(ws, event)).await {
                                        return ended;
                                    }
                                }
                            }
                        }
                        // Pings are answered by tungstenite on the next read
                        // or write: they never reach (or wake) the room.
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(frame))) => {
                            // tungstenite queues the echo; flush it out,
                            // and nothing after it.
                            ws.get_ref().seal();
                            let _ = ws.flush().await;
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            return Some(Ended { code, reason, was_clean: true });
                        }
                        Some(Err(e)) => {
                            let (code, reason) = match &e {
                                // The peer vanished without a close frame.
                                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                                    return Some(Ended { code: 1006, reason: String::new(), was_clean: false });
                                }
                                WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                                    (CloseCode::Size, "message too big")
                                }
                                WsError::Capacity(_) => (CloseCode::Size, "frame too big"),
                                WsError::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8 in a text frame"),
                                WsError::Protocol(_) => (CloseCode::Protocol, "protocol violation"),
                                _ => {
                                    return Some(Ended { code: 1006, reason: String::new(), was_clean: false });
                                }
                            };
                            let _ = self.room.send(Event::Error {
                                conn: self.conn.clone(),
                                description: e.to_string(),
                            }).await;
                            close(ws, code, reason).await;
                            return Some(Ended { code: code.into(), reason: reason.into(), was_clean: false });
                        }
                        None => return Some(Ended { code: 1006, reason: String::new(), was_clean: false }),
                    }
                }
            }
        }
    }
}

impl Socket {
    /// Write (or flush) through tungstenite. A client that stops reading
    /// blocks this, so it also gives up when the outbound queue overflows
    /// meanwhile (1008, no close frame: the write side is stuck mid-frame)
    /// or the host stops.
    /// What the room asked of this socket: write out what waits, or close.
    async fn outgoing(
        &self,
        ws: &mut WebSocketStream<Wire>,
        next: Next,
    ) -> Result<(), Option<Ended>> {
        match next {
            Next::Flush => self.guarded(ws.flush()).await,
            Next::Close(frame) => {
                let (code, reason) = (u16::from(frame.code), frame.reason.to_string());
                close(ws, frame.code, &reason).await;
                Err(Some(Ended {
                    code,
                    reason,
                    was_clean: true,
                }))
            }
            Next::Dropped => {
                // The room dropped this connection (it was replaced).
                close(ws, CloseCode::Normal, "").await;
                Err(Some(Ended {
                    code: 1000,
                    reason: String::new(),
                    was_clean: true,
                }))
            }
        }
    }

    /// Hand a message to a room whose queue is full, waiting for space. The
    /// socket keeps writing what waits for it meanwhile: a client that reads
    /// fine is not closed as too slow because its room is busy. A close the
    /// room asks for meanwhile ends the wait (the message is not delivered:
    /// the room is done with this connection).
    async fn deliver(
        &self,
        ws: &mut WebSocketStream<Wire>,
        event: Event,
    ) -> Result<(), Option<Ended>> {
        let send = self.room.send(event);
        tokio::pin!(send);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    close(ws, CloseCode::Away, "server shutting down").await;
                    return Err(None);
                }
                sent = &mut send => {
                    if sent.is_err() {
                        close(ws, CloseCode::Error, "room unavailable").await;
                        return Err(None);
                    }
                    return Ok(());
                }
                () = self.outbound.overflowed() => {
                    close(ws, CloseCode::Policy, TOO_SLOW).await;
                    return Err(Some(Ended { code: 1008, reason: TOO_SLOW.into(), was_clean: false }));
                }
                next = self.outbound.next() => self.outgoing(ws, next).await?,
            }
        }
    }

    async fn guarded(
        &self,
        op: impl Future<Output = Result<(), WsError>>,
    ) -> Result<(), Option<Ended>> {
        tokio::select! {
            sent = op => sent.map_err(|_| {
                Some(Ended { code: 1006, reason: String::new(), was_clean: false })
            }),
            () = self.outbound.overflowed() => Err(Some(Ended {
                code: 1008,
                reason: TOO_SLOW.into(),
                was_clean: false,
            })),
            () = self.shutdown.cancelled() => Err(None),
        }
    }
}

/// Send a close frame and wait (briefly) for the peer's answer. Boxed: it
/// runs once per socket, and every idle socket's task would otherwise carry
/// its space.
async fn close(ws: &mut WebSocketStream<Wire>, code: CloseCode, reason: &str) {
    ws.get_ref().seal();
    Box::pin(close_inner(ws, code, reason)).await;
}

/// A lingering close: write the close frame, shut the write side (FIN),
/// then read and drop what the client still sends, as bytes (the WebSocket
/// parser may already have failed on them), until its EOF, the grace or the
/// budget. Dropping a socket with unread bytes would send a TCP reset, and
/// a reset makes the client's kernel discard the close frame it has not
/// read yet: the client would see 1006 instead of the code and reason.
async fn close_inner(ws: &mut WebSocketStream<Wire>, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
    let _ = tokio::time::timeout_at(deadline, async {
        // A client that reads nothing may never take the frame: bounded above.
        let _ = ws.close(Some(frame)).await;
        let io = ws.get_mut();
        let _ = io.shutdown().await;
        let mut buf = [0u8; 8 << 10];
        let mut read = 0;
        while read < CLOSE_BUDGET {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open socket keeps its task's future, idle or not.
    #[test]
    fn an_idle_socket_task_is_small() {
        fn returned_size<A, B, F>(_: &impl Fn(A, B) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let size = returned_size(&Socket::run);
        // 1,080 bytes here, of which the stream is 288 and the socket 64;
        // 1,432 as an `async fn`, which kept both twice.
        assert!(size <= 1152, "a socket task is {size} bytes: what grew?");
    }

    /// While a client's message waits for space in its room's full queue,
    /// its socket still writes out what the room queued for it: a client
    /// that reads is not closed as too slow because its room is busy.
    #[tokio::test]
    async fn a_socket_writes_out_while_its_room_queue_is_full() {
        use crate::room::outbound::{Frame, Outbound};
        use tokio::net::{TcpListener, TcpStream};
        use tokio_tungstenite::tungstenite::protocol::Role;

        let (room, _actor) = crate::room::queue();
        // The actor never takes anything: the queue stays full.
        while room.try_send(Event::Hibernate) {}
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server_side, _) = listener.accept().await.expect("accept");
        // Room for two frames: each must go out before the next comes.
        let (outbound, queue) = Outbound::new(20 << 10);
        let wire = queue.attach(server_side);
        let ws = WebSocketStream::from_raw_socket(wire, Role::Server, None).await;
        let socket = Socket {
            conn: ConnRef {
                id: "c".into(),
                serial: 1,
            },
            room,
            outbound: queue,
            shutdown: CancellationToken::new(),
            status: Arc::default(),
            pings: Arc::new(Ticker::new(Duration::from_secs(3600))),
        };
        tokio::spawn(socket.run(ws));
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        // This message waits for the room.
        client.send(Message::text("hello")).await.expect("send");
        let frame = Frame::new(&Message::text("x".repeat(8 << 10))).expect("a frame");
        for i in 0..50 {
            assert!(outbound.push(&frame, false), "queued");
            let got = tokio::time::timeout(Duration::from_secs(5), client.next()).await;
            assert!(
                matches!(got, Ok(Some(Ok(Message::Text(ref t)))) if t.len() == 8 << 10),
                "frame {i}: {got:?}"
            );
        }
    }
}
