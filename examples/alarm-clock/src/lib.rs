//! Alarm clock: `POST` on the room with query `in_ms=N` sets the room's alarm
//! N ms ahead and answers 202. When it fires, the room adds 1 to storage key
//! `rings` and broadcasts the text `ring` to every connection. `GET` returns
//! `rings` as decimal text. The alarm is durable: it fires after a restart,
//! into a hibernated room, or a room with no connections at all.
//!
//! Run with: `cargo run -p dormouse -- dev examples/alarm-clock`, then
//! `curl -X POST 'http://127.0.0.1:1999/parties/main/kitchen?in_ms=2000'`

use std::time::{SystemTime, UNIX_EPOCH};

use dormouse_sdk::{Message, Request, Response, Room, alarm, connections, storage};

#[derive(Default)]
struct AlarmClock;

fn rings() -> u64 {
    storage::get("rings")
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Room for AlarmClock {
    fn on_request(&mut self, request: Request) -> Response {
        match request.method.as_str() {
            "GET" => Response::text(200, rings().to_string()),
            "POST" => {
                let Some(in_ms) = request.query("in_ms").and_then(|v| v.parse::<u64>().ok()) else {
                    return Response::text(400, "give in_ms=N (milliseconds from now)");
                };
                match alarm::set(now_ms().saturating_add(in_ms)) {
                    Ok(()) => Response::text(202, format!("ringing in {in_ms} ms")),
                    Err(e) => Response::text(500, e.to_string()),
                }
            }
            _ => Response::text(405, "use GET or POST"),
        }
    }

    fn on_alarm(&mut self, _retry_count: u32) {
        let n = rings() + 1;
        storage::put("rings", n.to_string().as_bytes()).expect("a small value fits");
        let _ = connections::broadcast(Message::Text("ring".into()), &[]);
    }
}

dormouse_sdk::export!(AlarmClock);
