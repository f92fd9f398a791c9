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
//! - `pad BYTES` (SQL rooms): replace the pad row with one of BYTES bytes,
//!   answers `padded` once durable (the log grows, the file does not);
//! - anything else: `error what`.
//!
//! Storage: `l:KEY` holds the list, comma-separated; `i:IDEM` marks an
//! applied append. A room whose name starts with `sql` keeps the same in
//! its SQL database instead (tables `items` and `seen`), so the cluster's
//! fault runs check SQL storage with the same history checker.

use dormouse_sdk::sql::{self, Value};
use dormouse_sdk::{Connection, Error, Message, Room, context, storage};

#[derive(Default)]
struct Ledger;

fn list(key: &str) -> String {
    storage::get(&format!("l:{key}"))
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_default()
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS items (pos INTEGER PRIMARY KEY, key TEXT NOT NULL, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS seen (idem TEXT PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS pad (bytes BLOB NOT NULL);";

/// The SQL room's answer to a command.
fn sql_command(words: &[&str], node: &str) -> Result<String, Error> {
    sql::exec(SCHEMA, &[])?;
    Ok(match words {
        ["append", key, value, idem] => {
            let fresh = sql::exec(
                "INSERT INTO seen (idem) VALUES (?) ON CONFLICT DO NOTHING",
                &[Value::from(*idem)],
            )?;
            if fresh.rows_written() > 0 {
                sql::exec(
                    "INSERT INTO items (key, value) VALUES (?, ?)",
                    &[Value::from(*key), Value::from(*value)],
                )?;
            }
            format!("ok {idem} {node}")
        }
        ["read", key] => {
            let rows = sql::exec(
                "SELECT value FROM items WHERE key = ? ORDER BY pos",
                &[Value::from(*key)],
            )?;
            let values: Vec<String> = rows
                .rows()
                .map(|r| r.get::<String>("value"))
                .collect::<Result<_, _>>()?;
            format!("list {key} {node} {}", values.join(","))
        }
        ["pad", bytes] => {
            let n: usize = bytes.parse().unwrap_or(0);
            sql::exec("DELETE FROM pad", &[])?;
            sql::exec(
                "INSERT INTO pad (bytes) VALUES (randomblob(?))",
                &[Value::from(n as i64)],
            )?;
            "padded".into()
        }
        _ => format!("error unknown command {:?}", words.join(" ")),
    })
}

impl Room for Ledger {
    fn on_message(&mut self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else { return };
        let node = context::var("node").unwrap_or_else(|| "-".into());
        let words: Vec<&str> = text.split(' ').collect();
        if context::id().starts_with("sql") {
            let answer = sql_command(&words, &node).unwrap_or_else(|e| format!("error {e:?}"));
            let _ = conn.send_text(&answer);
            return;
        }
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
