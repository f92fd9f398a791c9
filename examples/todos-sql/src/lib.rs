//! Todos in SQL: a todo list per room in the room's SQLite database, with a
//! table, an index and a query by status.
//!
//! Protocol (the same as `examples/todos-sql-ts`): WebSocket text
//! `add <text>` adds a todo, `done <id>` marks it done, `clear` deletes the
//! done ones in one transaction; after each, every connection gets
//! `{"todos": [...], "open": N}`, as a new connection does. HTTP
//! `GET ?status=open` (or `done`) answers those todos as a JSON array;
//! `POST` with a text body adds one and answers its id.
//!
//! Run with: `cargo run -p dormouse -- dev examples/todos-sql`

use dormouse_sdk::sql::{self, Value};
use dormouse_sdk::{Connection, Message, Request, Response, Room, connections};

#[derive(Default)]
struct Todos;

/// The schema, made on first use in each room. `IF NOT EXISTS` makes it
/// cheap to run on every wake: on-start runs it before any other hook.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS todos (
        id INTEGER PRIMARY KEY,
        text TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done'))
    );
    CREATE INDEX IF NOT EXISTS todos_by_status ON todos (status, id);";

/// The todos, all of them or those with one status.
fn list(status: Option<&str>) -> Result<serde_json::Value, dormouse_sdk::Error> {
    let cursor = match status {
        Some(s) => sql::exec(
            "SELECT id, text, status FROM todos WHERE status = ? ORDER BY id",
            &[s.into()],
        )?,
        None => sql::exec("SELECT id, text, status FROM todos ORDER BY id", &[])?,
    };
    let mut todos = Vec::new();
    for row in cursor.rows() {
        todos.push(serde_json::json!({
            "id": row.get::<i64>("id")?,
            "text": row.get::<String>("text")?,
            "status": row.get::<String>("status")?,
        }));
    }
    Ok(serde_json::Value::Array(todos))
}

/// What every connection is told: the todos and how many are open.
fn state() -> Result<String, dormouse_sdk::Error> {
    let open: i64 = sql::exec(
        "SELECT count(*) AS open FROM todos WHERE status = 'open'",
        &[],
    )?
    .one()?
    .get("open")?;
    Ok(serde_json::json!({ "todos": list(None)?, "open": open }).to_string())
}

/// Delete the done todos, all or none.
fn clear() -> Result<(), dormouse_sdk::Error> {
    sql::transaction(|| {
        let done = sql::exec("SELECT id FROM todos WHERE status = 'done'", &[])?;
        for row in done.rows() {
            sql::exec(
                "DELETE FROM todos WHERE id = ?",
                &[row.get::<i64>("id")?.into()],
            )?;
        }
        Ok(())
    })
}

fn add(text: &str) -> Result<i64, dormouse_sdk::Error> {
    sql::exec(
        "INSERT INTO todos (text) VALUES (?) RETURNING id",
        &[text.into()],
    )?
    .one()?
    .get("id")
}

fn broadcast_state() {
    if let Ok(state) = state() {
        let _ = connections::broadcast(Message::Text(state), &[]);
    }
}

impl Room for Todos {
    fn on_start(&mut self) {
        sql::exec(SCHEMA, &[]).expect("the schema applies");
    }

    fn on_connect(&mut self, conn: &Connection, _request: &Request) -> Result<(), Response> {
        if let Ok(state) = state() {
            let _ = conn.send_text(&state);
        }
        Ok(())
    }

    fn on_message(&mut self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else {
            return;
        };
        let done = |id: &str| -> Result<(), dormouse_sdk::Error> {
            let id: i64 = id
                .trim()
                .parse()
                .map_err(|_| dormouse_sdk::Error::Invalid(format!("{id} is not an id")))?;
            sql::exec(
                "UPDATE todos SET status = 'done' WHERE id = ?",
                &[Value::Integer(id)],
            )?;
            Ok(())
        };
        let result = if let Some(t) = text.strip_prefix("add ") {
            add(t).map(|_| ())
        } else if let Some(id) = text.strip_prefix("done ") {
            done(id)
        } else if text == "clear" {
            clear()
        } else {
            Err(dormouse_sdk::Error::Invalid(
                "say `add TEXT`, `done ID` or `clear`".into(),
            ))
        };
        match result {
            Ok(()) => broadcast_state(),
            Err(e) => {
                let error = serde_json::json!({ "error": e.to_string() });
                let _ = conn.send_text(&error.to_string());
            }
        }
    }

    fn on_request(&mut self, request: Request) -> Response {
        let answer = match request.method.as_str() {
            "GET" => list(request.query("status")).map(|l| Response::text(200, l.to_string())),
            "POST" => {
                let text = String::from_utf8_lossy(&request.body).into_owned();
                add(&text).map(|id| {
                    broadcast_state();
                    Response::text(200, id.to_string())
                })
            }
            _ => Ok(Response::text(405, "use GET or POST")),
        };
        answer.unwrap_or_else(|e| Response::text(400, e.to_string()))
    }
}

dormouse_sdk::export!(Todos);
