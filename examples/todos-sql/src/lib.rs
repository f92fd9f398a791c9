//! Todos in SQL: a todo list per room in the room's SQLite database, with a
//! table, an index and a query by status.
//!
//! Protocol (the same in `examples/todos-sql-ts` and `todos-sql-py`), JSON:
//! - on connect: `{"todos": [...], "open": N}`;
//! - text `add <text>`: every connection gets `{"todo": {...}, "open": N}`;
//! - text `done <id>`: the same, for that todo;
//! - text `clear`: the done todos are deleted, all or none, and every
//!   connection gets `{"cleared": [ids], "open": N}`;
//! - anything else, or an unknown id: the sender gets `{"error": "..."}`.
//!
//! HTTP: `GET ?status=open` (or `done`) answers those todos as an array,
//! `GET ?id=N` one todo; `POST` with a text body adds one and answers its
//! id; `POST ?seed=N` adds N numbered todos in one statement (for demos
//! and `dormouse bench sql`).
//!
//! Run with: `cargo run -p dormouse -- dev examples/todos-sql`

use dormouse_sdk::sql::{self, Row};
use dormouse_sdk::{Connection, Error, Message, Request, Response, Room, connections};
use serde_json::{Value as Json, json};

#[derive(Default)]
struct Todos;

/// The schema, made on first use in each room. A `CREATE ... IF NOT
/// EXISTS` that finds the table changes nothing and costs next to nothing,
/// so on-start runs it on every wake, as a Durable Object's constructor
/// would.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS todos (
        id INTEGER PRIMARY KEY,
        text TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done'))
    );
    CREATE INDEX IF NOT EXISTS todos_by_status ON todos (status, id);";

fn todo(row: Row<'_>) -> Result<Json, Error> {
    Ok(json!({
        "id": row.get::<i64>("id")?,
        "text": row.get::<String>("text")?,
        "status": row.get::<String>("status")?,
    }))
}

/// The todos, all of them or those with one status.
fn list(status: Option<&str>) -> Result<Json, Error> {
    let cursor = match status {
        Some(s) => sql::exec(
            "SELECT id, text, status FROM todos WHERE status = ? ORDER BY id",
            &[s.into()],
        )?,
        None => sql::exec("SELECT id, text, status FROM todos ORDER BY id", &[])?,
    };
    cursor.rows().map(todo).collect()
}

fn open() -> Result<i64, Error> {
    sql::exec(
        "SELECT count(*) AS open FROM todos WHERE status = 'open'",
        &[],
    )?
    .one()?
    .get("open")
}

/// One todo, as every connection is told of it.
fn changed(id: i64) -> Result<String, Error> {
    let cursor = sql::exec(
        "SELECT id, text, status FROM todos WHERE id = ?",
        &[id.into()],
    )?;
    let row = cursor
        .one()
        .map_err(|_| Error::Invalid(format!("no todo has id {id}")))?;
    Ok(json!({ "todo": todo(row)?, "open": open()? }).to_string())
}

fn add(text: &str) -> Result<i64, Error> {
    sql::exec(
        "INSERT INTO todos (text) VALUES (?) RETURNING id",
        &[text.into()],
    )?
    .one()?
    .get("id")
}

fn done(id: &str) -> Result<String, Error> {
    let id: i64 = id
        .trim()
        .parse()
        .map_err(|_| Error::Invalid(format!("{id} is not an id")))?;
    sql::exec(
        "UPDATE todos SET status = 'done' WHERE id = ?",
        &[id.into()],
    )?;
    changed(id)
}

/// Delete the done todos, all or none.
fn clear() -> Result<String, Error> {
    let ids = sql::transaction(|| {
        let done = sql::exec("SELECT id FROM todos WHERE status = 'done'", &[])?;
        let ids: Vec<i64> = done.rows().map(|r| r.get("id")).collect::<Result<_, _>>()?;
        for id in &ids {
            sql::exec("DELETE FROM todos WHERE id = ?", &[(*id).into()])?;
        }
        Ok::<_, Error>(ids)
    })?;
    Ok(json!({ "cleared": ids, "open": open()? }).to_string())
}

impl Room for Todos {
    fn on_start(&mut self) {
        sql::exec(SCHEMA, &[]).expect("the schema applies");
    }

    fn on_connect(&mut self, conn: &Connection, _request: &Request) -> Result<(), Response> {
        if let (Ok(todos), Ok(open)) = (list(None), open()) {
            let _ = conn.send_text(&json!({ "todos": todos, "open": open }).to_string());
        }
        Ok(())
    }

    fn on_message(&mut self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else {
            return;
        };
        let result = if let Some(t) = text.strip_prefix("add ") {
            add(t).and_then(changed)
        } else if let Some(id) = text.strip_prefix("done ") {
            done(id)
        } else if text == "clear" {
            clear()
        } else {
            Err(Error::Invalid(
                "say `add TEXT`, `done ID` or `clear`".into(),
            ))
        };
        match result {
            Ok(news) => {
                let _ = connections::broadcast(Message::Text(news), &[]);
            }
            Err(e) => {
                let _ = conn.send_text(&json!({ "error": e.to_string() }).to_string());
            }
        }
    }

    fn on_request(&mut self, request: Request) -> Response {
        let answer = match (request.method.as_str(), request.query("id"), request.query("seed")) {
            ("GET", Some(id), _) => id
                .parse()
                .map_err(|_| Error::Invalid(format!("{id} is not an id")))
                .and_then(|id: i64| {
                    let c = sql::exec("SELECT id, text, status FROM todos WHERE id = ?", &[id.into()])?;
                    match c.rows().next() {
                        Some(row) => Ok(Response::text(200, todo(row)?.to_string())),
                        None => Ok(Response::text(404, "no such todo")),
                    }
                }),
            ("GET", None, _) => list(request.query("status")).map(|l| Response::text(200, l.to_string())),
            ("POST", _, Some(n)) => n
                .parse::<i64>()
                .map_err(|_| Error::Invalid(format!("{n} is not a count")))
                .and_then(|n| {
                    let c = sql::exec(
                        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
                         INSERT INTO todos (text) SELECT printf('todo %d: %s', i, hex(randomblob(32))) FROM n",
                        &[n.into()],
                    )?;
                    Ok(Response::text(200, c.rows_written().to_string()))
                }),
            ("POST", _, None) => {
                let text = String::from_utf8_lossy(&request.body).into_owned();
                add(&text).map(|id| {
                    if let Ok(news) = changed(id) {
                        let _ = connections::broadcast(Message::Text(news), &[]);
                    }
                    Response::text(200, id.to_string())
                })
            }
            _ => Ok(Response::text(405, "use GET or POST")),
        };
        answer.unwrap_or_else(|e| Response::text(400, e.to_string()))
    }
}

dormouse_sdk::export!(Todos);
