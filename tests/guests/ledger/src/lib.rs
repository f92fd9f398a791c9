//! Ledger: the cluster tests' workload guest. Each room keeps lists of
//! values (Elle-style list-append), and each append carries an idempotency
//! id, so a client that retries an append whose answer it never saw gets it
//! applied exactly once.
//!
//! Text commands (answers go to the sender; NODE is the party var `node`,
//! which each test node sets to its name, so the history knows who served):
//! - `append KEY VALUE IDEM`: append VALUE to list KEY unless IDEM was seen;
//!   answers `ok IDEM NODE` once the append is durable (the output gate);
//! - `read KEY`: answers `list KEY NODE V1,V2,...` (nothing after NODE's
//!   space when the list is empty);
//! - anything else: `error what`.
//!
//! Storage: `l:KEY` holds the list, comma-separated; `i:IDEM` marks an
//! applied append.

use dormouse_sdk::{Connection, Message, Room, context, storage};

#[derive(Default)]
struct Ledger;

fn list(key: &str) -> String {
    storage::get(&format!("l:{key}"))
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_default()
}

impl Room for Ledger {
    fn on_message(&mut self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else { return };
        let node = context::var("node").unwrap_or_else(|| "-".into());
        let words: Vec<&str> = text.split(' ').collect();
        let answer = match words.as_slice() {
            ["append", key, value, idem] => {
                let seen = format!("i:{idem}");
                if storage::get(&seen).ok().flatten().is_none() {
                    let mut l = list(key);
                    if !l.is_empty() {
                        l.push(',');
                    }
                    l.push_str(value);
                    let wrote = storage::put(&format!("l:{key}"), l.as_bytes())
                        .and_then(|()| storage::put(&seen, b"1"));
                    if let Err(e) = wrote {
                        let _ = conn.send_text(&format!("error {e:?}"));
                        return;
                    }
                }
                format!("ok {idem} {node}")
            }
            ["read", key] => format!("list {key} {node} {}", list(key)),
            _ => format!("error unknown command {text:?}"),
        };
        let _ = conn.send_text(&answer);
    }
}

dormouse_sdk::export!(Ledger);
