//! The history checker: checks C1-C5 of `docs/cluster.md` on a recorded
//! history, the rooms' final lists, and (in a cluster) PostgreSQL's
//! commit and ownership logs. It returns every violation it finds, so the
//! negative controls can show it catches a planted bug.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::workload::{Kind, Op};

/// One audited commit: a room's (epoch, seq) and who made it.
#[derive(Debug, Clone)]
pub struct Commit {
    pub room: String,
    pub epoch: i64,
    pub seq: i64,
    pub node: String,
    pub inc: i64,
}

/// One claim from `ownership_log`, with PostgreSQL's time of it (the
/// machine's wall clock, as the history's).
#[derive(Debug, Clone)]
pub struct Claim {
    pub room: String,
    pub epoch: i64,
    pub node: String,
    pub inc: i64,
    pub at: std::time::SystemTime,
}

pub fn check(
    history: &[Op],
    fin: &HashMap<String, Vec<String>>,
    commits: &[Commit],
    claims: &[Claim],
) -> Vec<String> {
    let mut v = Vec::new();
    let empty = Vec::new();
    let mut invoked: HashMap<&str, &str> = HashMap::new();
    for op in history {
        if let Kind::Append { value } = &op.kind {
            invoked.insert(value, &op.room);
        }
    }
    // C1 durability: every acknowledged append is in the final state.
    for op in history {
        if let Kind::Append { value } = &op.kind
            && op.complete.is_some()
            && !fin.get(&op.room).unwrap_or(&empty).contains(value)
        {
            v.push(format!(
                "C1: acknowledged append {value} is missing from room {}",
                op.room
            ));
        }
    }
    // C2 no phantoms, no duplicates.
    for (room, list) in fin {
        let mut seen = HashSet::new();
        for value in list {
            if invoked.get(value.as_str()) != Some(&room.as_str()) {
                v.push(format!(
                    "C2: room {room} holds {value}, which no client appended there"
                ));
            }
            if !seen.insert(value) {
                v.push(format!("C2: room {room} holds {value} twice"));
            }
        }
    }
    // C3 order and C4 single writer, from the audit logs.
    let mut by_room: BTreeMap<&str, Vec<&Commit>> = BTreeMap::new();
    for c in commits {
        by_room.entry(&c.room).or_default().push(c);
    }
    let claimed: HashMap<(&str, i64), (&str, i64)> = claims
        .iter()
        .map(|c| ((c.room.as_str(), c.epoch), (c.node.as_str(), c.inc)))
        .collect();
    for (room, mut cs) in by_room {
        cs.sort_by_key(|c| c.seq);
        for w in cs.windows(2) {
            if w[1].seq != w[0].seq + 1 {
                v.push(format!(
                    "C3: room {room} commits jump from seq {} to {}",
                    w[0].seq, w[1].seq
                ));
            }
            if w[1].epoch < w[0].epoch {
                v.push(format!(
                    "C3: room {room} seq {} is epoch {} after seq {} at epoch {} (a stale writer committed)",
                    w[1].seq, w[1].epoch, w[0].seq, w[0].epoch
                ));
            }
        }
        let mut writer: HashMap<i64, (&str, i64)> = HashMap::new();
        for c in &cs {
            let who = (c.node.as_str(), c.inc);
            if *writer.entry(c.epoch).or_insert(who) != who {
                v.push(format!("C4: room {room} epoch {} has two writers", c.epoch));
            }
            if claimed
                .get(&(room, c.epoch))
                .is_some_and(|owner| *owner != who)
            {
                v.push(format!(
                    "C4: room {room} epoch {} was claimed by {:?} but {}#{} committed in it",
                    c.epoch,
                    claimed[&(room, c.epoch)],
                    c.node,
                    c.inc
                ));
            }
        }
    }
    // C5 reads: a prefix of the final list, holding every append
    // acknowledged before the read was invoked.
    let mut acked: HashMap<&str, Vec<(std::time::SystemTime, &str)>> = HashMap::new();
    for a in history {
        if let (Kind::Append { value }, Some(t)) = (&a.kind, a.complete) {
            acked.entry(&a.room).or_default().push((t, value));
        }
    }
    for list in acked.values_mut() {
        list.sort();
    }
    for op in history {
        let Kind::Read { seen: Some(seen) } = &op.kind else {
            continue;
        };
        let list = fin.get(&op.room).unwrap_or(&empty);
        if seen.len() > list.len() || list[..seen.len()] != seen[..] {
            v.push(format!(
                "C5: a read of room {} saw {seen:?}, not a prefix of the final {list:?}",
                op.room
            ));
            continue;
        }
        let saw: HashSet<&str> = seen.iter().map(String::as_str).collect();
        let before = acked.get(op.room.as_str()).map_or(&[][..], Vec::as_slice);
        for (_, value) in before.iter().take_while(|(t, _)| *t < op.invoke) {
            if !saw.contains(value) {
                v.push(format!(
                    "C5: a read of room {} missed {value}, acknowledged before the read began",
                    op.room
                ));
            }
        }
    }
    // C7 serving: no node answers an operation invoked after another
    // node claimed the room (unless it claimed the room back since). The
    // answer was made after the invoke, so it came from a node that no
    // longer held the room. Skipped for rooms with no claims (one node).
    let mut by_room: HashMap<&str, Vec<&Claim>> = HashMap::new();
    for c in claims {
        by_room.entry(&c.room).or_default().push(c);
    }
    for list in by_room.values_mut() {
        list.sort_by_key(|c| c.at);
    }
    for op in history {
        let (Some(node), Some(done)) = (&op.node, op.complete) else {
            continue;
        };
        let Some(room_claims) = by_room.get(op.room.as_str()) else {
            continue;
        };
        let Some(mine) = room_claims.iter().rfind(|c| c.node == *node && c.at < done) else {
            v.push(format!(
                "C7: {node} answered in room {} without ever claiming it",
                op.room
            ));
            continue;
        };
        if let Some(other) = room_claims
            .iter()
            .find(|c| c.node != *node && c.at > mine.at && c.at < op.invoke)
        {
            v.push(format!(
                "C7: {node} answered in room {} after {} claimed it (epoch {})",
                op.room, other.node, other.epoch
            ));
        }
    }
    v
}
