//! A collaborative document: Yjs's own clients (y-partykit's
//! `YPartyKitProvider`, y-websocket's `WebsocketProvider`) edit it, and the
//! room hibernates between edits. `public/` holds an editor page.
//!
//! Run with: `cargo run -p dormouse -- dev examples/yjs`, then open
//! http://127.0.0.1:1999 (the page's bundle is built by `npm run build` in
//! `examples/yjs`; see its README).
//!
//! What this room adds to [`dormouse_sdk::yjs`]'s protocol:
//! - `?mode=view` connects read-only;
//! - with a `TOKEN` var set, `?token=` must match it, or the upgrade gets 401;
//! - the custom message `ping` (y-partykit's `provider.sendMessage`) is
//!   answered with `pong`;
//! - after each compaction the log says how large the document is;
//! - `GET /parties/main/ROOM` answers the whole document as a Yjs update.

use dormouse_sdk::yjs::yrs::{self, ReadTxn, Transact};
use dormouse_sdk::yjs::{Access, Y, YRoom, send_custom};
use dormouse_sdk::{Connection, Level, Request, Response, context};

#[derive(Default)]
struct Notes;

impl YRoom for Notes {
    fn on_connect(&mut self, _conn: &Connection, request: &Request) -> Access {
        if let Some(token) = context::var("TOKEN")
            && request.query("token") != Some(token.as_str())
        {
            return Access::Deny(Response::text(401, "a token is needed for this document"));
        }
        match request.query("mode") {
            Some("view") => Access::ReadOnly,
            _ => Access::Write,
        }
    }

    fn on_change(&mut self, doc: &yrs::Doc) {
        let txn = doc.transact();
        let size = txn
            .encode_state_as_update_v1(&yrs::StateVector::default())
            .len();
        context::log(Level::Info, &format!("document compacted: {size} bytes"));
    }

    fn on_custom_message(&mut self, conn: &Connection, message: &str) {
        if message == "ping" {
            send_custom(conn, "pong");
        }
    }
}

dormouse_sdk::export!(Y<Notes>);
