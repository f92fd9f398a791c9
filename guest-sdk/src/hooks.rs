//! `dormouse:room/hooks` (and `timer-hooks`, `cron-hooks`,
//! `answer-hooks`): the [`Room`] trait a room implements, and the
//! dispatch that [`crate::export!`] wires to the component's exports.

use crate::{Connection, Error, Message, Request, Response};

/// A room's logic. Every hook has a default, so implement only what you need.
///
/// The host calls hooks one at a time, in arrival order. After every wake,
/// the value is made fresh with `Default::default()` and [`Room::on_start`]
/// runs before the event: keep what must last in storage or connection state.
///
/// ```no_run
/// use dormouse_sdk::{connections, Connection, Message, Request, Response, Room};
///
/// #[derive(Default)]
/// struct Relay;
///
/// impl Room for Relay {
///     fn on_connect(&mut self, conn: &Connection, request: &Request) -> Result<(), Response> {
///         if request.query("token") == Some("letmein") { Ok(()) } else { Err(Response::text(401, "who are you?")) }
///     }
///     fn on_message(&mut self, conn: &Connection, message: Message) {
///         connections::broadcast(message, &[conn.id()]).ok();
///     }
/// }
/// dormouse_sdk::export!(Relay);
/// ```
pub trait Room: Default + 'static {
    /// The instance was just made (first event, or a wake from hibernation).
    fn on_start(&mut self) {}

    /// A client asks to connect: `Ok` accepts, `Err(response)` refuses with
    /// that HTTP response before the WebSocket opens. The connection is
    /// already listed while this runs, so it may be sent to.
    fn on_connect(&mut self, conn: &Connection, request: &Request) -> Result<(), Response> {
        let _ = (conn, request);
        Ok(())
    }

    /// A message from a connection.
    fn on_message(&mut self, conn: &Connection, message: Message) {
        let _ = (conn, message);
    }

    /// A connection closed; it is no longer listed.
    fn on_close(&mut self, conn: &Connection, code: u16, reason: &str, was_clean: bool) {
        let _ = (conn, code, reason, was_clean);
    }

    /// A connection failed; on-close follows.
    fn on_error(&mut self, conn: &Connection, description: &str) {
        let _ = (conn, description);
    }

    /// A plain HTTP request to the room's URL. Default: 404.
    fn on_request(&mut self, request: Request) -> Response {
        let _ = request;
        Response::not_found()
    }

    /// The room's alarm fired; `retry_count` is 0 on the first attempt.
    fn on_alarm(&mut self, retry_count: u32) {
        let _ = retry_count;
    }

    /// The time set with [`crate::timers::set`] came. The room stayed
    /// awake for it, so its fields are as the last hook left them.
    fn on_timer(&mut self) {}

    /// One of the party's crons is due (`[[parties.NAME.crons]]` in
    /// `dormouse.toml`): `name` is the cron's, `scheduled_ms` its tick (Unix
    /// ms, UTC). PartyKit's `static onCron`: it runs outside any room (no
    /// `self`, no storage, no connections), with the party's vars, and
    /// reaches rooms with [`crate::rooms::fetch`]. A tick runs at most once.
    ///
    /// ```no_run
    /// # use dormouse_sdk::{Room, rooms};
    /// #[derive(Default)]
    /// struct Digest;
    /// impl Room for Digest {
    ///     fn on_cron(name: &str, _scheduled_ms: u64) {
    ///         if name == "nightly" {
    ///             // Wake the room that sends the digest.
    ///             rooms::get("digest", "all").ok();
    ///         }
    ///     }
    /// }
    /// ```
    fn on_cron(name: &str, scheduled_ms: u64) {
        let _ = (name, scheduled_ms);
    }

    /// The call started as `id` ([`crate::rooms::start`]) was answered, or
    /// failed. The room stayed awake for it, so its fields are as the last
    /// hook left them.
    fn on_answer(&mut self, id: u64, answer: Result<Response, Error>) {
        let _ = (id, answer);
    }
}

/// Called by the code [`crate::export!`] generates; not for direct use.
#[doc(hidden)]
pub mod dispatch {
    use std::any::Any;
    use std::cell::RefCell;

    use super::Room;
    use crate::bindings::dormouse::room::types::ConnectionInfo;
    use crate::{Connection, Message, Request, Response};

    thread_local! {
        /// The room value of this instance: made by on-start, gone with the instance.
        static ROOM: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn with<R: Room, T>(f: impl FnOnce(&mut R) -> T) -> T {
        ROOM.with(|cell| {
            let mut slot = cell.borrow_mut();
            let any = slot.get_or_insert_with(|| Box::new(R::default()));
            let room = any
                .downcast_mut::<R>()
                .expect("export! is used once, so the room has one type");
            f(room)
        })
    }

    /// A panic's message goes to the room's log (`dormouse tail`): std
    /// would write it to stderr, which a room does not have, and the host
    /// alone only sees the trap that follows.
    fn log_panics() {
        std::panic::set_hook(Box::new(|info| {
            crate::context::log(crate::Level::Error, &info.to_string());
        }));
    }

    pub fn on_start<R: Room>() {
        log_panics();
        ROOM.with(|cell| *cell.borrow_mut() = Some(Box::new(R::default())));
        with::<R, _>(|r| r.on_start())
    }

    pub fn on_connect<R: Room>(conn: ConnectionInfo, request: Request) -> Result<(), Response> {
        with::<R, _>(|r| r.on_connect(&Connection::new(conn.id), &request))
    }

    pub fn on_message<R: Room>(conn: String, message: Message) {
        with::<R, _>(|r| r.on_message(&Connection::new(conn), message))
    }

    pub fn on_close<R: Room>(conn: String, code: u16, reason: String, was_clean: bool) {
        with::<R, _>(|r| r.on_close(&Connection::new(conn), code, &reason, was_clean))
    }

    pub fn on_error<R: Room>(conn: String, description: String) {
        with::<R, _>(|r| r.on_error(&Connection::new(conn), &description))
    }

    pub fn on_request<R: Room>(request: Request) -> Response {
        with::<R, _>(|r| r.on_request(request))
    }

    pub fn on_alarm<R: Room>(retry_count: u32) {
        with::<R, _>(|r| r.on_alarm(retry_count))
    }

    pub fn on_timer<R: Room>() {
        with::<R, _>(|r| r.on_timer())
    }

    pub fn on_answer<R: Room>(id: u64, answer: Result<crate::Response, crate::Error>) {
        with::<R, _>(|r| r.on_answer(id, answer))
    }

    /// Outside any room (no on-start ran in this instance): no room value.
    pub fn on_cron<R: Room>(name: String, scheduled_ms: u64) {
        log_panics();
        R::on_cron(&name, scheduled_ms)
    }
}
