//! Counter, version 2: a test guest for deploys. Same storage key and wire
//! format as `examples/counter`, but `inc` (and `POST`) adds 10, so a test can
//! tell which version handled a message.

use dormouse_sdk::{Connection, Message, Request, Response, Room, connections, storage};

#[derive(Default)]
struct CounterTen;

fn count() -> u64 {
    storage::get("count")
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn add_ten() -> u64 {
    let next = count() + 10;
    storage::put("count", next.to_string().as_bytes()).expect("count fits any limit");
    let _ = connections::broadcast(Message::Text(next.to_string()), &[]);
    next
}

impl Room for CounterTen {
    fn on_connect(&mut self, conn: &Connection, _request: &Request) -> Result<(), Response> {
        let _ = conn.send_text(&count().to_string());
        Ok(())
    }

    fn on_message(&mut self, _conn: &Connection, message: Message) {
        if matches!(&message, Message::Text(t) if t == "inc") {
            add_ten();
        }
    }

    fn on_request(&mut self, request: Request) -> Response {
        match request.method.as_str() {
            "POST" => Response::text(200, add_ten().to_string()),
            _ => Response::text(200, count().to_string()),
        }
    }
}

dormouse_sdk::export!(CounterTen);
