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

/// What one awareness message from a connection comes to.
pub(crate) struct Applied {
    /// Whether it changed anything but clocks: an update that only renews
    /// states (the clients' heartbeat, every 15 s) is not activity.
    pub changed: bool,
    /// The entries to relay to everyone, the sender too (`None`: nothing).
    pub relay: Option<AwarenessUpdate>,
}

/// Take a connection's awareness update into its state.
///
/// A connection speaks for the clients it announced first. The y-websocket
/// provider sends on every state it hears, others' included; an entry for
/// a client another connection already holds at that clock or later is such
/// an echo: it is neither kept (the sender's close would then announce that
/// client gone) nor relayed. What is kept goes to everyone, the sender too,
/// as the y-websocket server does: a lone client hears its own renewal back,
/// and its provider, which closes a socket silent for 30 s, stays connected.
pub(crate) fn apply(conn: &Connection, update: &AwarenessUpdate) -> Applied {
    let mut clients = held(conn);
    let mut others: Option<HashMap<ClientID, u32>> = None;
    let mut relay = HashMap::new();
    let mut changed = false;
    for (client, entry) in &update.clients {
        if !clients.contains_key(client) {
            let others = others.get_or_insert_with(|| others_clocks(conn));
            match others.get(client) {
                Some(clock) if *clock >= entry.clock => continue,
                None if &*entry.json == REMOVED => continue,
                _ => {}
            }
        }
        if &*entry.json == REMOVED {
            changed |= clients.remove(client).is_some();
        } else {
            match clients.get(client) {
                Some(old) if old.json == entry.json => {}
                _ => changed = true,
            }
            clients.insert(*client, entry.clone());
        }
        relay.insert(*client, entry.clone());
    }
    if relay.is_empty() {
        return Applied {
            changed: false,
            relay: None,
        };
    }
    let bytes = AwarenessUpdate { clients }.encode_v1();
    if let Err(e) = conn.set_state(Some(&bytes)) {
        // Presence still reaches the others; only a wake would forget it.
        let line = format!("yjs: awareness of {} not kept: {e:?}", conn.id());
        context::log(Level::Warn, &line);
    }
    Applied {
        changed,
        relay: Some(AwarenessUpdate { clients: relay }),
    }
}

/// The clients the other open connections speak for, with their clocks.
fn others_clocks(conn: &Connection) -> HashMap<ClientID, u32> {
    let mut clocks = HashMap::new();
    for other in connections::list(None) {
        if other.id() != conn.id() {
            clocks.extend(held(&other).into_iter().map(|(c, e)| (c, e.clock)));
        }
    }
    clocks
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
