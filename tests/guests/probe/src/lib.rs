//! Probe: a test guest that shows what the host does, and misbehaves on
//! request. Not an example: tests drive it.
//!
//! Text commands (answers go to the sender):
//! - `starts`: how many times on-start ran in this room (counted in storage);
//! - `state=X`: set the connection's state to X; `state?`: answer it;
//! - `whoami`: answer the room's party and id;
//! - `panic`: panic (a trap); `loop`: spin forever (hits the CPU deadline);
//! - `grow`: allocate without bound (hits the memory cap);
//! - anything else: echoed back.

use dormouse_sdk::{Connection, Message, Room, context, storage};

#[derive(Default)]
struct Probe;

impl Room for Probe {
    fn on_start(&mut self) {
        let n: u64 = storage::get_json("starts").ok().flatten().unwrap_or(0);
        storage::put_json("starts", &(n + 1)).expect("a small value fits");
    }

    fn on_message(&mut self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else {
            let _ = conn.send(message);
            return;
        };
        let reply = match text.as_str() {
            "starts" => storage::get_json::<u64>("starts")
                .ok()
                .flatten()
                .unwrap_or(0)
                .to_string(),
            "state?" => conn.state().ok().flatten().map_or_else(
                || "none".into(),
                |s| String::from_utf8_lossy(&s).into_owned(),
            ),
            "whoami" => format!("{}/{}", context::party(), context::id()),
            "panic" => panic!("the probe was asked to panic"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            other => match other.strip_prefix("state=") {
                Some(s) => match conn.set_state(Some(s.as_bytes())) {
                    Ok(()) => "ok".into(),
                    Err(e) => format!("error: {e}"),
                },
                None => other.to_owned(),
            },
        };
        let _ = conn.send_text(&reply);
    }
}

dormouse_sdk::export!(Probe);
