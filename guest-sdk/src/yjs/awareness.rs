//! Yjs awareness (presence) kept in each connection's state, so it survives
//! hibernation: the state holds the awareness entries of the clients that
//! connection speaks for, encoded as a y-protocols awareness update.

use std::collections::HashMap;

use yrs::block::ClientID;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

use crate::{Connection, Level, connections, context};

/// A removed client's state, as y-protocols writes it.
const REMOVED: &str = "null";

fn held(conn: &Connection) -> HashMap<ClientID, AwarenessUpdateEntry> {
    conn.state()
        .ok()
        .flatten()
        .and_then(|bytes| AwarenessUpdate::decode_v1(&bytes).ok())
        .map(|u| u.clients)
        .unwrap_or_default()
}

/// Take a connection's awareness update into its state. Returns whether it
/// changed anything but clocks: an update that only renews states (the
/// clients' heartbeat, every 15 s) is not activity.
pub(crate) fn apply(conn: &Connection, update: &AwarenessUpdate) -> bool {
    let mut clients = held(conn);
    let mut changed = false;
    for (client, entry) in &update.clients {
        if &*entry.json == REMOVED {
            changed |= clients.remove(client).is_some();
            continue;
        }
        match clients.get(client) {
            Some(old) if old.json == entry.json => {}
            _ => changed = true,
        }
        clients.insert(*client, entry.clone());
    }
    let bytes = AwarenessUpdate { clients }.encode_v1();
    if let Err(e) = conn.set_state(Some(&bytes)) {
        // Presence still reaches the others; only a wake would forget it.
        let line = format!("yjs: awareness of {} not kept: {e:?}", conn.id());
        context::log(Level::Warn, &line);
    }
    changed
}

/// Every open connection's awareness, as one update (`None` if there is none).
pub(crate) fn all() -> Option<AwarenessUpdate> {
    let mut clients = HashMap::new();
    for conn in connections::list(None) {
        clients.extend(held(&conn));
    }
    (!clients.is_empty()).then_some(AwarenessUpdate { clients })
}

/// The update that tells the others a closing connection's clients left.
pub(crate) fn removal(conn: &Connection) -> Option<AwarenessUpdate> {
    let clients: HashMap<_, _> = held(conn)
        .into_iter()
        .map(|(client, entry)| {
            let gone = AwarenessUpdateEntry {
                clock: entry.clock.wrapping_add(1),
                json: REMOVED.into(),
            };
            (client, gone)
        })
        .collect();
    (!clients.is_empty()).then_some(AwarenessUpdate { clients })
}
