//! `dormouse:room/context`: the room's identity, its party's vars, its log.

use crate::room::state::RoomState;
use crate::wit::Level;
use crate::wit::dormouse::room::context::Host;

/// The longest log line kept from a guest; the rest is cut.
const MAX_LOG_LINE: usize = 16 << 10;

impl Host for RoomState {
    fn party(&mut self) -> wasmtime::Result<String> {
        Ok(self.party.to_string())
    }

    fn id(&mut self) -> wasmtime::Result<String> {
        Ok(self.id.to_string())
    }

    fn var(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.vars.get(&name).cloned())
    }

    fn vars(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn quiet(&mut self) -> wasmtime::Result<()> {
        self.quiet = true;
        Ok(())
    }

    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let name = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.caps
            .logs
            .emit(&self.party, &self.id, name, message.clone());
        let (party, room) = (&*self.party, &*self.id);
        match level {
            Level::Trace => tracing::trace!(target: "guest", party, room, "{message}"),
            Level::Debug => tracing::debug!(target: "guest", party, room, "{message}"),
            Level::Info => tracing::info!(target: "guest", party, room, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", party, room, "{message}"),
            Level::Error => tracing::error!(target: "guest", party, room, "{message}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::state::test_support::room_state;

    #[test]
    fn identity_and_vars() {
        let mut s = room_state();
        assert_eq!(s.party().expect("no trap"), "main");
        assert_eq!(s.id().expect("no trap"), "test");
        assert_eq!(s.var("K".into()).expect("no trap").as_deref(), Some("v"));
        assert_eq!(s.var("missing".into()).expect("no trap"), None);
        assert_eq!(
            s.vars().expect("no trap"),
            [("K".to_string(), "v".to_string())]
        );
        s.log(Level::Info, "x".repeat(MAX_LOG_LINE * 2))
            .expect("no trap");
    }
}
