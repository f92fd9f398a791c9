//! Room logs for `dormouse tail`: guest `log` calls and host events about
//! rooms, fanned out live to whoever is listening. Costs one atomic load
//! per line when nobody is.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::clock::now_ms;

/// One line of a room's log.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub at_ms: u64,
    pub party: Arc<str>,
    pub room: Arc<str>,
    /// `trace` .. `error`; host events are `host`.
    pub level: &'static str,
    pub message: String,
}

pub struct Logs {
    tx: broadcast::Sender<Arc<LogLine>>,
}

impl Default for Logs {
    fn default() -> Self {
        // A listener slower than this many lines misses some (and is told).
        let (tx, _) = broadcast::channel(4096);
        Logs { tx }
    }
}

impl Logs {
    pub fn emit(
        &self,
        party: &Arc<str>,
        room: &Arc<str>,
        level: &'static str,
        message: impl Into<String>,
    ) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(Arc::new(LogLine {
            at_ms: now_ms(),
            party: party.clone(),
            room: room.clone(),
            level,
            message: message.into(),
        }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.tx.subscribe()
    }
}
