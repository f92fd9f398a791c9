//! Presence the host keeps for a room without waking it: Yjs awareness
//! renewals (the clients' heartbeat), read and rewritten in lib0's encoding.
//!
//! A y-protocols client renews its awareness every 15 s with its state
//! unchanged and its clock one higher. Waking a room for that costs a wake
//! per client every 15 s, for nothing: so a room that sets the
//! `yjs-awareness` rule (`connections.set-presence`) has the host take a
//! renewal into the sender's state and relay it, and nothing else. What
//! counts as a renewal is narrow on purpose: every entry names a client the
//! sender's state already holds, with byte-identical JSON. Anything else (a
//! new client, a changed state, a removal, a malformed frame) reaches the
//! room's on-message as before, so the room stays the authority.

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

/// When `message` is a y-websocket awareness message that only renews
/// clients `held` holds (an awareness update as a connection's state keeps
/// it), the state with their new clocks; else `None`.
pub fn yjs_renewal(message: &[u8], held: Option<&[u8]>) -> Option<Vec<u8>> {
    let mut r = Reader { bytes: message };
    if r.var_uint()? != MESSAGE_AWARENESS {
        return None;
    }
    let payload = r.var_bytes()?;
    if !r.bytes.is_empty() {
        return None;
    }
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
