//! Counter: one number in storage key `count` that survives hibernation and
//! restarts. On connect the count is sent to the new connection; the text
//! `inc` adds 1 and broadcasts the new count to everyone. HTTP `GET` on the
//! room returns the count, `POST` adds 1 and returns the new count.
//!
//! Run with: `cargo run -p dormouse -- dev examples/counter`

use dormouse_sdk::{Connection, Message, Request, Response, Room, connections, storage};

#[derive(Default)]
struct Counter;

/// The stored count, kept as decimal text so it reads plainly in SQLite.
fn count() -> u64 {
    storage::get("count")
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Add one and store it; the write commits when the hook returns, and the
/// messages sent after it leave only once it has.
fn increment() -> u64 {
    let next = count() + 1;
    storage::put("count", next.to_string().as_bytes()).expect("count fits any limit");
    next
}

impl Room for Counter {
    fn on_connect(&mut self, conn: &Connection, _request: &Request) -> Result<(), Response> {
        let _ = conn.send_text(&count().to_string());
        Ok(())
    }

    fn on_message(&mut self, _conn: &Connection, message: Message) {
        if matches!(&message, Message::Text(t) if t == "inc") {
            let n = increment();
            let _ = connections::broadcast(Message::Text(n.to_string()), &[]);
        }
    }

    fn on_request(&mut self, request: Request) -> Response {
        match request.method.as_str() {
            "GET" => Response::text(200, count().to_string()),
            "POST" => {
                let n = increment();
                let _ = connections::broadcast(Message::Text(n.to_string()), &[]);
                Response::text(200, n.to_string())
            }
            _ => Response::text(405, "use GET or POST"),
        }
    }
}

dormouse_sdk::export!(Counter);
