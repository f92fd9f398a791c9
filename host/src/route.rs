//! URL routing: which room (or host endpoint) a request path names.
//!
//! Pure functions over strings, so they are unit-tested here and fuzzed later;
//! nothing in this file touches sockets.

use percent_encoding::percent_decode_str;

/// The longest room id, in bytes after percent-decoding.
pub const MAX_ROOM_ID: usize = 256;
/// The longest party name.
pub const MAX_PARTY_NAME: usize = 64;
/// The longest connection id a client may choose with `_pk`.
pub const MAX_CONNECTION_ID: usize = 256;

/// A room's identity: (party, room id). The registry's key, and the alarm
/// index's.
pub type RoomKey = (std::sync::Arc<str>, std::sync::Arc<str>);

/// Where a request path leads.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/parties/:party/:room[/*rest]` or `/party/:room[/*rest]`.
    Room(RoomPath),
    /// `/_dormouse/health`.
    Health,
    /// `/_dormouse/metrics`.
    Metrics,
    /// Any other `/_dormouse/...` path: the admin API.
    Admin,
    /// Any other path: a static file, if the host serves a public folder.
    Static,
}

/// A room's address, decoded.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct RoomPath {
    pub party: String,
    pub room: String,
}

/// Why a path was refused; the text is the one-line reason sent with the 4xx.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("party names match ^[a-z0-9_-]{{1,64}}$")]
    BadParty,
    #[error(
        "room ids are 1 to 256 bytes of UTF-8 after percent-decoding and hold no '/' and no NUL"
    )]
    BadRoom,
    #[error("the path names no room: use /parties/:party/:room")]
    MissingRoom,
    #[error("_pk must be 1 to 256 bytes of UTF-8, with no NUL")]
    BadConnectionId,
}

/// Parse a request path (without the query).
pub fn parse(path: &str) -> Result<Route, RouteError> {
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
    match segments.next() {
        Some("parties") => {
            let party = segments.next().ok_or(RouteError::MissingRoom)?;
            let room = segments.next().ok_or(RouteError::MissingRoom)?;
            room_path(party, room)
        }
        Some("party") => {
            let room = segments.next().ok_or(RouteError::MissingRoom)?;
            room_path("main", room)
        }
        Some("_dormouse") => match (segments.next(), segments.next()) {
            (Some("health"), None) => Ok(Route::Health),
            (Some("metrics"), None) => Ok(Route::Metrics),
            _ => Ok(Route::Admin),
        },
        _ => Ok(Route::Static),
    }
}

fn room_path(party: &str, room: &str) -> Result<Route, RouteError> {
    if !valid_party_name(party) {
        return Err(RouteError::BadParty);
    }
    let room = percent_decode_str(room)
        .decode_utf8()
        .map_err(|_| RouteError::BadRoom)?;
    if !valid_room_id(&room) {
        return Err(RouteError::BadRoom);
    }
    Ok(Route::Room(RoomPath {
        party: party.to_owned(),
        room: room.into_owned(),
    }))
}

/// The headers only nodes of a cluster may send each other: the edge drops
/// any that a client or a guest sets.
const NODE_HEADERS: &str = "x-dormouse-";

/// Whether a header name is one only nodes may send (any case).
pub fn node_header(name: &str) -> bool {
    name.len() >= NODE_HEADERS.len()
        && name[..NODE_HEADERS.len()].eq_ignore_ascii_case(NODE_HEADERS)
}

/// Whether a (decoded) room id is 1 to 256 bytes with no '/' (it is one
/// path segment) and no NUL (PostgreSQL's text cannot hold one, and an id
/// must mean the same on one node and on a cluster).
pub fn valid_room_id(room: &str) -> bool {
    !room.is_empty() && room.len() <= MAX_ROOM_ID && !room.contains(['/', '\0'])
}

/// Whether `name` matches `^[a-z0-9_-]{1,64}$`.
pub fn valid_party_name(name: &str) -> bool {
    (1..=MAX_PARTY_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A query parameter, decoded (`+` and percent escapes; bytes that are not
/// UTF-8 become U+FFFD): the first one named `name`.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The `_pk` query parameter (the connection id partysocket sends), if any.
/// Refused when empty, too long, or holding NUL or U+FFFD (what bytes that
/// are not UTF-8 decode to).
pub fn connection_id(query: Option<&str>) -> Result<Option<String>, RouteError> {
    let Some(id) = query.and_then(|q| query_param(q, "_pk")) else {
        return Ok(None);
    };
    if id.is_empty() || id.len() > MAX_CONNECTION_ID || id.contains(['\0', '\u{FFFD}']) {
        return Err(RouteError::BadConnectionId);
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(party: &str, room: &str) -> Route {
        Route::Room(RoomPath {
            party: party.into(),
            room: room.into(),
        })
    }

    #[test]
    fn room_paths() {
        assert_eq!(parse("/parties/main/lobby"), Ok(room("main", "lobby")));
        assert_eq!(
            parse("/parties/chat-2/a%20b/x/y"),
            Ok(room("chat-2", "a b"))
        );
        assert_eq!(parse("/party/lobby"), Ok(room("main", "lobby")));
        assert_eq!(parse("/party/lobby/sub"), Ok(room("main", "lobby")));
    }

    #[test]
    fn bad_names() {
        assert_eq!(parse("/parties/Main/x"), Err(RouteError::BadParty));
        assert_eq!(parse("/parties//x"), Err(RouteError::BadParty));
        assert_eq!(parse("/parties/main/"), Err(RouteError::BadRoom));
        assert_eq!(parse("/parties/main/a%2Fb"), Err(RouteError::BadRoom));
        assert_eq!(parse("/parties/main/%FF"), Err(RouteError::BadRoom));
        assert_eq!(parse("/parties/main/a%00b"), Err(RouteError::BadRoom));
        assert_eq!(parse("/parties/main"), Err(RouteError::MissingRoom));
        let long = "x".repeat(257);
        assert_eq!(
            parse(&format!("/parties/main/{long}")),
            Err(RouteError::BadRoom)
        );
        let ok = "x".repeat(256);
        assert_eq!(parse(&format!("/parties/main/{ok}")), Ok(room("main", &ok)));
        let party = "p".repeat(65);
        assert_eq!(
            parse(&format!("/parties/{party}/x")),
            Err(RouteError::BadParty)
        );
    }

    #[test]
    fn host_endpoints() {
        assert_eq!(parse("/_dormouse/health"), Ok(Route::Health));
        assert_eq!(parse("/_dormouse/metrics"), Ok(Route::Metrics));
        assert_eq!(parse("/_dormouse/parties"), Ok(Route::Admin));
        assert_eq!(parse("/"), Ok(Route::Static));
        assert_eq!(parse("/index.html"), Ok(Route::Static));
    }

    #[test]
    fn pk() {
        assert_eq!(connection_id(None), Ok(None));
        assert_eq!(connection_id(Some("a=1")), Ok(None));
        assert_eq!(connection_id(Some("a=1&_pk=abc")), Ok(Some("abc".into())));
        assert_eq!(connection_id(Some("_pk=a%20b")), Ok(Some("a b".into())));
        assert_eq!(
            connection_id(Some("_pk=")),
            Err(RouteError::BadConnectionId)
        );
        assert_eq!(
            connection_id(Some("_pk=%FF")),
            Err(RouteError::BadConnectionId)
        );
    }
}
