//! Relay: every text or binary message goes, unchanged, to every *other*
//! connection of the room. Keeps nothing in memory or storage.
//!
//! Run with: `cargo run -p dormouse -- dev examples/relay`

use dormouse_sdk::{Connection, Message, Room, connections};

#[derive(Default)]
struct Relay;

impl Room for Relay {
    fn on_message(&mut self, conn: &Connection, message: Message) {
        // A failure here means a message over the size limit; nothing to do.
        let _ = connections::broadcast(message, &[conn.id()]);
    }
}

dormouse_sdk::export!(Relay);
