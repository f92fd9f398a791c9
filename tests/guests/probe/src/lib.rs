//! Probe: a test guest that shows what the host does, and misbehaves on
//! request. Not an example: the end-to-end tests drive it.
//!
//! Text commands (answers go to the sender):
//! - `starts`: how many times on-start ran in this room (counted in storage);
//! - `state=X`: set the connection's state to X; `state?`: answer it;
//! - `whoami`: the room's party and id; `var:K`: the party's var K;
//! - `list` / `list:TAG`: the open connections' ids (with that tag), comma-separated;
//! - `last-close`: `id:code:was_clean` of the last on-close;
//! - `auto=REQ>RESP`: set the auto-response pair; `auto-off` clears it;
//! - `panic`: panic (a trap); `unreachable`: a Wasm `unreachable`;
//!   `loop`: spin forever (hits the CPU deadline); `grow`: allocate without
//!   bound (hits the memory cap); `recurse`: recurse without bound (stack overflow);
//! - `misuse`: call imports with bad arguments; answers one `name=outcome`
//!   per call, `;`-separated (each outcome should be a WIT error);
//! - `flood`: 10,000 broadcasts (`f0` .. `f9999`) in one hook;
//! - `doom:WHAT`: make one change, then panic; WHAT is `state`, `tag`
//!   (`doomed`), `auto` (`doomed?>doomed!`), `put` (key `doomed`), `send`
//!   or `alarm`. The host must undo the change;
//! - `has:K`: whether storage holds key K;
//! - `close:CODE:REASON`: close this connection with that code and reason;
//! - `timer:MS:K`: set the timer MS ahead, K times in a row (0: for ever);
//!   each on-timer broadcasts `tick:N` (N counted in guest memory, so it
//!   restarts at 1 in a new instance) and records N in storage (`ticks`);
//!   `timer-off` cancels; `timer-panic` makes the next on-timer panic;
//! - `bulk:BYTES:MS`: work MS ms, then answer BYTES bytes (a busy room that sends a lot);
//! - anything else: echoed back.
//!
//! On connect: `?reject=1` refuses with HTTP 401; `?tag=T` tags the connection.
//! On start: spins forever while a connection tagged `spin-start` is open.
//!
//! HTTP (query `op`):
//! - `op=alarm&in_ms=N&fail=K[&spin=1]`: set the alarm N ms ahead; on-alarm
//!   will panic while its retry count is below K (or spin forever, with
//!   `spin=1`), then record the count; answers 202;
//! - `op=alarm-state`: `ok=<retry count of the success or none> at=<alarm or none>`;
//! - `op=call&party=P&room=R[&next=P2/R2]`: fetch room P/R (passing `next`
//!   on as its own call target) and answer with what it answered;
//!   `op=start&...`: the same without waiting (`rooms::start`), the answer
//!   deferred until on-answer;
//! - `op=record` (POST): append the body to the list in storage (`record`);
//!   `op=records`: that list, comma-separated;
//! - otherwise: `probe PARTY/ROOM`.
//!
//! On cron (any room of the party's, from outside them): cron `panic`
//! panics; any other posts `NAME@TICK:VAR` to room `crons`' `op=record`,
//! VAR being the party's var `K` (or `-`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dormouse_sdk::{
    Connection, Message, Request, Response, Room, alarm, connections, context, rooms, sql, storage,
    timers,
};

#[derive(Default)]
struct Probe {
    /// Calls started by `op=start`: the deferred request each answers.
    answers_to: std::collections::HashMap<u64, u64>,
    /// On-timer calls in this instance.
    ticks: u64,
    /// What `timer:MS:K` asked: every MS, K more times (0: for ever).
    every: u64,
    left: Option<u64>,
    panic_on_timer: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ids(tag: Option<&str>) -> String {
    let ids: Vec<String> = connections::list(tag)
        .iter()
        .map(|c| c.id().to_owned())
        .collect();
    ids.join(",")
}

/// Burn CPU until the host's deadline stops the hook.
fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Recurse until the Wasm stack runs out.
#[allow(unconditional_recursion, reason = "running out of stack is the point")]
fn recurse(depth: u64) -> u64 {
    // An indirect call LLVM cannot see through: no rewrite into a loop, and
    // next to nothing on Rust's shadow stack (in linear memory) per frame,
    // so the Wasm stack itself runs out first.
    let next: fn(u64) -> u64 = std::hint::black_box(recurse);
    next(depth + 1).wrapping_mul(31).wrapping_add(depth)
}

/// Call every import with arguments the host must refuse, and report how
/// each call came back: `name=error` is what the tests want, never a trap.
fn misuse(me: &Connection) -> String {
    let outcome = |r: Result<(), dormouse_sdk::Error>| match r {
        Ok(()) => "ok".to_owned(),
        Err(_) => "error".to_owned(),
    };
    let ghost = Connection::new("no-such-connection");
    let big_key = "k".repeat(2049);
    let big_value = vec![0u8; (2 << 20) + 1];
    let too_many: Vec<String> = (0..129).map(|i| i.to_string()).collect();
    let calls = [
        ("send-unknown", outcome(ghost.send_text("hello"))),
        ("close-unknown", outcome(ghost.close(1000, "bye"))),
        ("state-unknown", outcome(ghost.set_state(Some(b"x")))),
        (
            "state-oversized",
            outcome(me.set_state(Some(&vec![0; (16 << 10) + 1]))),
        ),
        ("close-code", outcome(me.close(999, "bad code"))),
        ("tags-too-many", outcome(me.set_tags(&too_many[..11]))),
        ("tag-too-long", outcome(me.set_tags(&["t".repeat(257)]))),
        ("key-over-2k", outcome(storage::put(&big_key, b"v"))),
        ("get-key-over-2k", outcome(storage::get(&big_key).map(drop))),
        ("value-over-2m", outcome(storage::put("k", &big_value))),
        (
            "get-many-129",
            outcome(storage::get_many(&too_many).map(drop)),
        ),
        (
            "delete-many-129",
            outcome(storage::delete_many(&too_many).map(drop)),
        ),
    ];
    let report: Vec<String> = calls.iter().map(|(n, o)| format!("{n}={o}")).collect();
    report.join(";")
}

/// Make one change, then fail: a trapped hook must leave no trace.
fn doom(conn: &Connection, what: &str) -> ! {
    let done = match what {
        "state" => conn.set_state(Some(b"doomed")),
        "tag" => conn.set_tags(&["doomed".to_owned()]),
        "auto" => connections::set_auto_response(Some((
            Message::Text("doomed?".into()),
            Message::Text("doomed!".into()),
        ))),
        "put" => storage::put("doomed", b"1"),
        "send" => conn.send_text("doomed"),
        "alarm" => alarm::set(now_ms() + 60_000),
        other => panic!("no such change: {other}"),
    };
    done.expect("the change is allowed");
    panic!("doomed after {what}");
}

impl Room for Probe {
    fn on_start(&mut self) {
        if !connections::list(Some("spin-start")).is_empty() {
            spin();
        }
        let n: u64 = storage::get_json("starts").ok().flatten().unwrap_or(0);
        storage::put_json("starts", &(n + 1)).expect("a small value fits");
    }

    fn on_connect(&mut self, conn: &Connection, request: &Request) -> Result<(), Response> {
        if request.query("reject") == Some("1") {
            return Err(Response::text(401, "go away"));
        }
        if let Some(tag) = request.query("tag") {
            conn.set_tags(&[tag.to_owned()])
                .map_err(|e| Response::text(400, e.to_string()))?;
        }
        Ok(())
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
            "list" => ids(None),
            "last-close" => storage::get_json::<String>("last_close")
                .ok()
                .flatten()
                .unwrap_or_else(|| "none".into()),
            "auto-off" => match connections::set_auto_response(None) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error: {e}"),
            },
            "panic" => panic!("the probe was asked to panic"),
            "timer-off" => {
                timers::cancel();
                "timer off".into()
            }
            "timer-panic" => {
                self.panic_on_timer = true;
                "armed".into()
            }
            // On Wasm, `abort` is the `unreachable` instruction.
            "unreachable" => std::process::abort(),
            "loop" => spin(),
            "recurse" => recurse(0).to_string(),
            "misuse" => misuse(conn),
            "flood" => (0..10_000)
                .find_map(|i| {
                    let m = Message::Text(format!("f{i}"));
                    let e = connections::broadcast(m, &[]).err()?;
                    Some(format!("flood failed at {i}: {e}"))
                })
                .unwrap_or_else(|| "flooded".into()),
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            other => {
                if let Some(s) = other.strip_prefix("state=") {
                    match conn.set_state(Some(s.as_bytes())) {
                        Ok(()) => "ok".into(),
                        Err(e) => format!("error: {e}"),
                    }
                } else if let Some(tag) = other.strip_prefix("list:") {
                    ids(Some(tag))
                } else if let Some(what) = other.strip_prefix("doom:") {
                    doom(conn, what)
                } else if let Some(rest) = other.strip_prefix("close:") {
                    let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
                    match conn.close(code.parse().unwrap_or(1000), reason) {
                        Ok(()) => return,
                        Err(e) => format!("error: {e}"),
                    }
                } else if let Some(rest) = other.strip_prefix("bulk:") {
                    // A busy room that sends a lot: BYTES back after MS of work.
                    let (bytes, ms) = rest.split_once(':').unwrap_or((rest, "0"));
                    let until =
                        std::time::Instant::now() + Duration::from_millis(ms.parse().unwrap_or(0));
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    "b".repeat(bytes.parse().unwrap_or(0))
                } else if let Some(rest) = other.strip_prefix("timer:") {
                    let (ms, times) = rest.split_once(':').unwrap_or((rest, "1"));
                    self.every = ms.parse().unwrap_or(0);
                    self.left = times.parse().ok().filter(|&k| k > 0);
                    timers::set(Duration::from_millis(self.every));
                    "timer set".into()
                } else if let Some(k) = other.strip_prefix("has:") {
                    storage::get(k).ok().flatten().is_some().to_string()
                } else if let Some(k) = other.strip_prefix("var:") {
                    context::var(k).unwrap_or_else(|| "none".into())
                } else if let Some(pair) = other.strip_prefix("auto=") {
                    let (req, resp) = pair.split_once('>').unwrap_or((pair, ""));
                    let pair = (Message::Text(req.into()), Message::Text(resp.into()));
                    match connections::set_auto_response(Some(pair)) {
                        Ok(()) => "ok".into(),
                        Err(e) => format!("error: {e}"),
                    }
                } else {
                    other.to_owned()
                }
            }
        };
        let _ = conn.send_text(&reply);
    }

    fn on_timer(&mut self) {
        if self.panic_on_timer {
            panic!("on-timer was asked to panic");
        }
        self.ticks += 1;
        storage::put_json("ticks", &self.ticks).expect("a small value fits");
        let _ = connections::broadcast(Message::Text(format!("tick:{}", self.ticks)), &[]);
        let again = match &mut self.left {
            None => true,
            Some(left) => {
                *left -= 1;
                *left > 0
            }
        };
        if again {
            timers::set(Duration::from_millis(self.every));
        }
    }

    fn on_close(&mut self, conn: &Connection, code: u16, _reason: &str, was_clean: bool) {
        let record = format!("{}:{code}:{was_clean}", conn.id());
        storage::put_json("last_close", &record).expect("a small value fits");
    }

    fn on_answer(&mut self, id: u64, answer: Result<Response, dormouse_sdk::Error>) {
        if let Some(reply) = self.answers_to.remove(&id) {
            rooms::respond(reply, answered(answer));
        }
    }

    fn on_request(&mut self, request: Request) -> Response {
        match request.query("op") {
            Some("alarm") => {
                let in_ms: u64 = request
                    .query("in_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let fail: u32 = request
                    .query("fail")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                storage::put_json("alarm_fail", &fail).expect("a small value fits");
                let spin = request.query("spin") == Some("1");
                storage::put_json("alarm_spin", &spin).expect("a small value fits");
                match alarm::set(now_ms() + in_ms) {
                    Ok(()) => Response::text(202, "set"),
                    Err(e) => Response::text(500, e.to_string()),
                }
            }
            Some("alarm-state") => {
                let ok = storage::get_json::<u32>("alarm_ok").ok().flatten();
                let at = alarm::get().ok().flatten();
                let show = |v: Option<String>| v.unwrap_or_else(|| "none".into());
                Response::text(
                    200,
                    format!(
                        "ok={} at={}",
                        show(ok.map(|v| v.to_string())),
                        show(at.map(|v| v.to_string()))
                    ),
                )
            }
            Some(op @ ("call" | "start")) => {
                let party = request.query("party").unwrap_or("main");
                let room = request.query("room").unwrap_or("x");
                // The callee calls on to `next`, if given.
                let uri = match request.query("next").and_then(|n| n.split_once("%2F")) {
                    Some((p, r)) => format!("/?op=call&party={p}&room={r}"),
                    None => "/".into(),
                };
                let call = Request {
                    method: "GET".into(),
                    uri,
                    headers: vec![],
                    body: vec![],
                };
                if op == "start" {
                    let started =
                        rooms::start(party, room, call).and_then(|id| Ok((id, rooms::defer()?)));
                    return match started {
                        Ok((id, reply)) => {
                            self.answers_to.insert(id, reply);
                            Response::text(500, "deferred: never sent")
                        }
                        Err(e) => Response::text(508, format!("call failed: {e}")),
                    };
                }
                answered(rooms::fetch(party, room, call))
            }
            Some("record") => {
                let mut list: Vec<String> = storage::get_json("record")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                list.push(String::from_utf8_lossy(&request.body).into_owned());
                match storage::put_json("record", &list) {
                    Ok(()) => Response::text(200, list.len().to_string()),
                    Err(e) => Response::text(500, e.to_string()),
                }
            }
            Some("records") => {
                let list: Vec<String> = storage::get_json("record")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                Response::text(200, list.join(","))
            }
            Some("sql") => run_sql(&request),
            Some("sql-size") => match sql::database_size() {
                Ok(n) => Response::text(200, n.to_string()),
                Err(e) => Response::text(400, format!("{e:?}")),
            },
            _ => Response::text(200, format!("probe {}/{}", context::party(), context::id())),
        }
    }

    fn on_cron(name: &str, scheduled_ms: u64) {
        if name == "panic" {
            panic!("cron panic ran");
        }
        let var = context::var("K").unwrap_or_else(|| "-".into());
        let record = Request {
            method: "POST".into(),
            uri: "/?op=record".into(),
            headers: vec![],
            body: format!("{name}@{scheduled_ms}:{var}").into_bytes(),
        };
        if let Err(e) = rooms::fetch(&context::party(), "crons", record) {
            panic!("cannot record the cron: {e}");
        }
    }

    fn on_alarm(&mut self, retry_count: u32) {
        if storage::get_json("alarm_spin").ok().flatten() == Some(true) {
            spin();
        }
        let fail: u32 = storage::get_json("alarm_fail").ok().flatten().unwrap_or(0);
        if retry_count < fail {
            panic!("on-alarm asked to fail (retry {retry_count})");
        }
        storage::put_json("alarm_ok", &retry_count).expect("a small value fits");
    }
}

dormouse_sdk::export!(Probe);

/// What `op=call` and `op=start` answer: the callee's answer, or 508.
fn answered(answer: Result<Response, dormouse_sdk::Error>) -> Response {
    match answer {
        Ok(r) => Response::text(r.status, String::from_utf8_lossy(&r.body).into_owned()),
        Err(e) => Response::text(508, format!("call failed: {e}")),
    }
}

/// `op=sql`: see the module's doc.
fn run_sql(request: &Request) -> Response {
    let query = String::from_utf8_lossy(&request.body).into_owned();
    if let Some(key) = request.query("put") {
        storage::put(key, b"1").expect("a small value fits");
    }
    if request.query("send") == Some("1") {
        let _ = connections::broadcast(Message::Text("sql".into()), &[]);
    }
    let result = if request.query("tx") == Some("fail") {
        let r = sql::transaction(|| -> Result<sql::Cursor, dormouse_sdk::Error> {
            sql::exec(&query, &[])?;
            Err(dormouse_sdk::Error::Invalid(
                "the probe fails its transaction".into(),
            ))
        });
        match r {
            Err(dormouse_sdk::Error::Invalid(m)) if m.starts_with("the probe") => {
                sql::exec("SELECT 1 WHERE 0", &[])
            }
            other => other,
        }
    } else {
        sql::exec(&query, &[])
    };
    if request.query("then") == Some("panic") {
        panic!("the probe was asked to panic after its SQL");
    }
    match result {
        Ok(cursor) => {
            let mut out = String::new();
            for row in cursor.raw() {
                let cells: Vec<String> = row
                    .iter()
                    .map(|v| match v {
                        sql::Value::Null => "null".into(),
                        sql::Value::Integer(i) => i.to_string(),
                        sql::Value::Real(f) => f.to_string(),
                        sql::Value::Text(t) => t.clone(),
                        sql::Value::Blob(b) => format!("blob:{}", b.len()),
                    })
                    .collect();
                out.push_str(&cells.join("|"));
                out.push('\n');
            }
            out.push_str(&format!("written={}", cursor.rows_written()));
            Response::text(200, out)
        }
        Err(e) => Response::text(400, format!("{e:?}")),
    }
}
