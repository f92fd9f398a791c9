//! Fuzz target: request paths and queries, as any client may send them.
#![no_main]

use dormouse::route::{self, MAX_CONNECTION_ID, MAX_ROOM_ID, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let (path, query) = match input.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (input, None),
    };
    if let Ok(Route::Room(r)) = route::parse(path) {
        assert!(route::valid_party_name(&r.party), "{input:?}");
        assert!(
            !r.room.is_empty() && r.room.len() <= MAX_ROOM_ID,
            "{input:?}"
        );
        assert!(!r.room.contains('/'), "{input:?}");
    }
    if let Ok(Some(id)) = route::connection_id(query) {
        assert!(!id.is_empty() && id.len() <= MAX_CONNECTION_ID, "{input:?}");
    }
});
