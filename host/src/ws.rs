//! WebSocket messages <-> WIT messages: the one place the two meet.

use tokio_tungstenite::tungstenite;

use crate::wit::Message;

/// The WebSocket form of a WIT message.
pub fn to_ws(message: Message) -> tungstenite::Message {
    match message {
        Message::Text(t) => tungstenite::Message::text(t),
        Message::Binary(b) => tungstenite::Message::binary(b),
    }
}

/// The WIT form of a WebSocket message; `None` for control frames.
pub fn from_ws(message: &tungstenite::Message) -> Option<Message> {
    match message {
        tungstenite::Message::Text(t) => Some(Message::Text(t.to_string())),
        tungstenite::Message::Binary(b) => Some(Message::Binary(b.to_vec())),
        _ => None,
    }
}

/// A WIT message's payload size, bytes.
pub fn len(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
    }
}
