//! Presence the host keeps for a room without waking it: Yjs awareness
//! renewals (the clients' heartbeat), read and rewritten in lib0's encoding.
//!
//! A y-protocols client renews its awareness every 15 s with its state
//! unchanged and its clock one higher, and the y-websocket provider sends
//! back every state it hears, so each renewal returns from every other
//! client too. Waking a room for those costs wakes per client every 15 s,
//! for nothing: so a room that sets the `yjs-awareness` rule
//! (`connections.set-presence`) has the host take a renewal into the
//! sender's state and relay it, and drop an echo. What counts is narrow on
//! purpose: a renewal names only clients the sender's state holds, with
//! byte-identical JSON; an echo names only clients other connections hold,
//! at their clocks or older. Anything else (a new client, a changed state, a
//! removal, a malformed frame) reaches the room's on-message as before, so
//! the room stays the authority.

/// A lib0 reader over one message.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// lib0's var-uint: 7 bits a byte, little end first. `None` past the
    /// end or past 64 bits.
    fn var_uint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// lib0's var-uint8-array (and var-string): a length, then the bytes.
    fn var_bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.var_uint()?).ok()?;
        if len > self.bytes.len() {
            return None;
        }
        let (bytes, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(bytes)
    }
}

fn write_var_uint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// An awareness update's entries: (client, clock, JSON).
fn entries(payload: &[u8]) -> Option<Vec<(u64, u64, &[u8])>> {
    let mut r = Reader { bytes: payload };
    let count = r.var_uint()?;
    // Each entry takes at least three bytes: no allocation past the input.
    if count > payload.len() as u64 / 3 {
        return None;
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        out.push((r.var_uint()?, r.var_uint()?, r.var_bytes()?));
    }
    r.bytes.is_empty().then_some(out)
}

/// y-protocols' message type of an awareness update.
const MESSAGE_AWARENESS: u64 = 1;

/// What the host does with a Yjs awareness message.
#[derive(Debug, PartialEq)]
pub enum Awareness {
    /// It renews only clients the sender holds: its new state; relay it.
    Renewal(Vec<u8>),
    /// It only repeats what other connections hold, at their clocks or
    /// older (the y-websocket provider sends on every state it hears, so
    /// each renewal comes back from every other client): nothing to do.
    Echo,
}

/// The awareness update inside a y-websocket awareness message.
fn awareness_payload(message: &[u8]) -> Option<&[u8]> {
    let mut r = Reader { bytes: message };
    if r.var_uint()? != MESSAGE_AWARENESS {
        return None;
    }
    let payload = r.var_bytes()?;
    r.bytes.is_empty().then_some(payload)
}

/// What `message` is to the host, when it is a renewal by its sender
/// (`held`: the sender's state, an awareness update) or an echo of what
/// `others` (the other connections' states) hold; `None`: the room's.
pub fn yjs_awareness<'a>(
    message: &[u8],
    held: Option<&[u8]>,
    others: impl Iterator<Item = &'a [u8]>,
) -> Option<Awareness> {
    let payload = awareness_payload(message)?;
    if let Some(state) = renewal(payload, held) {
        return Some(Awareness::Renewal(state));
    }
    let heard = entries(payload)?;
    if heard.is_empty() {
        return None;
    }
    let mut known: Vec<(u64, u64)> = Vec::new();
    for state in others {
        known.extend(entries(state)?.into_iter().map(|(c, clock, _)| (c, clock)));
    }
    heard
        .iter()
        .all(|(client, clock, _)| known.iter().any(|(c, k)| c == client && k >= clock))
        .then_some(Awareness::Echo)
}

/// When `payload` only renews clients `held` holds (an awareness update as
/// a connection's state keeps it), the state with their new clocks.
fn renewal(payload: &[u8], held: Option<&[u8]>) -> Option<Vec<u8>> {
    let renewals = entries(payload)?;
    let mut state = entries(held?)?;
    if renewals.is_empty() {
        return None;
    }
    for (client, clock, json) in renewals {
        let entry = state.iter_mut().find(|(c, _, _)| *c == client)?;
        if entry.2 != json || clock < entry.1 {
            return None;
        }
        entry.1 = clock;
    }
    let mut out = Vec::with_capacity(held?.len() + 4);
    write_var_uint(&mut out, state.len() as u64);
    for (client, clock, json) in state {
        write_var_uint(&mut out, client);
        write_var_uint(&mut out, clock);
        write_var_uint(&mut out, json.len() as u64);
        out.extend_from_slice(json);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(entries: &[(u64, u64, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        write_var_uint(&mut out, entries.len() as u64);
        for (client, clock, json) in entries {
            write_var_uint(&mut out, *client);
            write_var_uint(&mut out, *clock);
            write_var_uint(&mut out, json.len() as u64);
            out.extend_from_slice(json.as_bytes());
        }
        out
    }

    fn message(entries: &[(u64, u64, &str)]) -> Vec<u8> {
        let payload = update(entries);
        let mut out = vec![1];
        write_var_uint(&mut out, payload.len() as u64);
        out.extend_from_slice(&payload);
        out
    }

    /// Alone: nobody else holds anything.
    fn yjs_renewal(message: &[u8], held: Option<&[u8]>) -> Option<Vec<u8>> {
        match yjs_awareness(message, held, std::iter::empty())? {
            Awareness::Renewal(state) => Some(state),
            Awareness::Echo => panic!("no one else holds anything"),
        }
    }

    #[test]
    fn an_echo_of_what_others_hold_is_nothing() {
        let mine = update(&[(1, 4, r#"{"u":"bob"}"#)]);
        let ada = update(&[(9, 6, r#"{"u":"ada"}"#)]);
        let others = || [ada.as_slice()].into_iter();
        // Ada's state at her clock, or older, sent back by bob.
        for clock in [5, 6] {
            let echo = message(&[(9, clock, r#"{"u":"ada"}"#)]);
            assert_eq!(
                yjs_awareness(&echo, Some(&mine), others()),
                Some(Awareness::Echo)
            );
        }
        // Newer than what ada's connection holds, or a client no one holds:
        // the room decides.
        let newer = message(&[(9, 7, r#"{"u":"ada"}"#)]);
        assert_eq!(yjs_awareness(&newer, Some(&mine), others()), None);
        let unknown = message(&[(5, 1, r#"{"u":"cy"}"#)]);
        assert_eq!(yjs_awareness(&unknown, Some(&mine), others()), None);
    }

    #[test]
    fn a_renewal_takes_the_new_clocks() {
        let held = update(&[(3_000_000_000, 4, r#"{"u":"ada"}"#), (7, 1, "{}")]);
        let renewed = yjs_renewal(
            &message(&[(3_000_000_000, 5, r#"{"u":"ada"}"#)]),
            Some(&held),
        );
        let want = update(&[(3_000_000_000, 5, r#"{"u":"ada"}"#), (7, 1, "{}")]);
        assert_eq!(renewed, Some(want));
    }

    #[test]
    fn anything_else_goes_to_the_room() {
        let held = update(&[(9, 4, r#"{"u":"ada"}"#)]);
        let held = Some(held.as_slice());
        // A changed state, a new client, a removal, an older clock.
        assert_eq!(
            yjs_renewal(&message(&[(9, 5, r#"{"u":"bob"}"#)]), held),
            None
        );
        assert_eq!(
            yjs_renewal(&message(&[(8, 5, r#"{"u":"ada"}"#)]), held),
            None
        );
        assert_eq!(yjs_renewal(&message(&[(9, 5, "null")]), held), None);
        assert_eq!(
            yjs_renewal(&message(&[(9, 3, r#"{"u":"ada"}"#)]), held),
            None
        );
        // Nothing held yet, an empty update, other message types.
        assert_eq!(
            yjs_renewal(&message(&[(9, 5, r#"{"u":"ada"}"#)]), None),
            None
        );
        assert_eq!(yjs_renewal(&message(&[]), held), None);
        assert_eq!(yjs_renewal(&[0, 0, 1, 0], held), None);
        // Truncated, trailing bytes, a huge count, a var-uint past 64 bits.
        let good = message(&[(9, 5, r#"{"u":"ada"}"#)]);
        assert_eq!(yjs_renewal(&good[..good.len() - 1], held), None);
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(yjs_renewal(&trailing, held), None);
        assert_eq!(yjs_renewal(&[1, 3, 0xff, 0xff, 0x7f], held), None);
        assert_eq!(yjs_renewal(&[0xff; 12], held), None);
    }
}
