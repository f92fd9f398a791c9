//! Chat: the seed pattern for rooms that hibernate. Each message is stored
//! under its own key (`msg:<zero-padded sequence>`), the last 50 are sent to
//! a new connection, and each person's display name lives in their
//! connection's state, so it survives hibernation. `public/index.html` is
//! the page a person chats from.
//!
//! Run with: `cargo run -p dormouse -- dev examples/chat`, then open
//! http://127.0.0.1:1999
//!
//! Wire format (JSON text frames), server to client:
//! `{"type":"history","messages":[M...]}` on connect, then `M` for each new
//! message, where `M = {"seq":1,"name":"ada","text":"hi"}`. Client to
//! server: the text of a message, or `/name NEW` to change one's name. The
//! first name comes from the `name` query parameter.

use dormouse_sdk::storage::{self, ListOptions};
use dormouse_sdk::{Connection, Message, Request, Response, Room, connections};
use serde::{Deserialize, Serialize};

/// How many messages a new connection gets.
const HISTORY: u32 = 50;
/// The longest message and name kept, in characters.
const MAX_TEXT: usize = 2000;
const MAX_NAME: usize = 40;

#[derive(Default)]
struct Chat;

#[derive(Serialize, Deserialize)]
struct Stored {
    seq: u64,
    name: String,
    text: String,
}

/// The per-connection state, kept by the host across hibernation.
#[derive(Serialize, Deserialize)]
struct Person {
    name: String,
}

fn key(seq: u64) -> String {
    format!("msg:{seq:012}")
}

/// The next sequence number: one past the newest stored key. Reading one key
/// instead of keeping a counter in memory is what lets the room hibernate.
fn next_seq() -> u64 {
    let newest = storage::list(&ListOptions {
        limit: Some(1),
        reverse: true,
        ..ListOptions::prefix("msg:")
    });
    newest
        .ok()
        .and_then(|e| e.into_iter().next())
        .and_then(|(k, _)| k.strip_prefix("msg:")?.parse::<u64>().ok())
        .map_or(1, |s| s + 1)
}

fn clip(s: &str, max: usize) -> String {
    s.trim().chars().take(max).collect()
}

/// A query value with `+` and `%XX` decoded; bad escapes are kept as they are.
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Room for Chat {
    fn on_connect(&mut self, conn: &Connection, request: &Request) -> Result<(), Response> {
        let name = request
            .query("name")
            .map(|n| clip(&decode(n), MAX_NAME))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "anonymous".into());
        let _ = conn.set_state_json(&Person { name });
        let mut recent: Vec<serde_json::Value> = storage::list(&ListOptions {
            limit: Some(HISTORY),
            reverse: true,
            ..ListOptions::prefix("msg:")
        })
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect();
        recent.reverse();
        let history = serde_json::json!({ "type": "history", "messages": recent });
        let _ = conn.send_text(&history.to_string());
        Ok(())
    }

    fn on_message(&mut self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else { return };
        if let Some(name) = text.strip_prefix("/name ") {
            let name = clip(name, MAX_NAME);
            if !name.is_empty() {
                let _ = conn.set_state_json(&Person { name });
            }
            return;
        }
        let text = clip(&text, MAX_TEXT);
        if text.is_empty() {
            return;
        }
        let name = conn
            .state_json::<Person>()
            .map_or_else(|| "anonymous".into(), |p| p.name);
        let stored = Stored {
            seq: next_seq(),
            name,
            text,
        };
        let json = serde_json::to_string(&stored).expect("plain strings and numbers serialize");
        if storage::put(&key(stored.seq), json.as_bytes()).is_ok() {
            let _ = connections::broadcast(Message::Text(json), &[]);
        }
    }

    fn on_request(&mut self, request: Request) -> Response {
        // GET returns the recent history as JSON, for scripts and tests.
        if request.method != "GET" {
            return Response::text(405, "use GET");
        }
        let entries = storage::list(&ListOptions::prefix("msg:")).unwrap_or_default();
        let messages: Vec<serde_json::Value> = entries
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect();
        Response::with_type(
            200,
            "application/json",
            serde_json::to_vec(&messages).unwrap_or_default(),
        )
    }
}

dormouse_sdk::export!(Chat);
