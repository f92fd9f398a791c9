//! PartyKit's lobby: a party's static `onBeforeConnect` and `onBeforeRequest`
//! run in an instance made for the one call (as its crons do, `crons.rs`),
//! before the event reaches the room, as PartyKit runs them in its edge
//! worker. Outside the room, a call into it from there is an ordinary call
//! (inside, a room that fetches itself waits on itself).
//!
//! The lobby's state is a room's with no connections, and storage under a
//! room id no room can have (""), never committed: `lobby.wit` gives the
//! lobby no storage, and a guest that reaches for it anyway reads nothing
//! and keeps nothing. A room that answers `none` (it defines no such hook)
//! is not asked again for that version of the party; only that first call
//! keeps a copy of the request, to go on with it.

use std::sync::Arc;

use tracing::warn;

use crate::config::Limits;
use crate::http::text_response;
use crate::metrics::FailureKind;
use crate::room::Shared;
use crate::room::hooks::instantiate;
use crate::room::instance::{Before, Call, Failure, Instance, Known, Party, Reply};
use crate::room::state::RoomState;
use crate::route::RoomKey;
use crate::store::RoomStorage;
use crate::wit::{Request, Response};

/// An instance of `party` for one call outside any room (a lobby hook, a
/// cron): the party's vars, room calls, no connections, and storage that is
/// never committed. `room`: the room the call is about, for the log.
pub(super) async fn instance(
    shared: &Shared,
    party: &Party,
    limits: Arc<Limits>,
    name: Arc<str>,
    room: Arc<str>,
) -> Result<Instance, Failure> {
    let committed = shared.storage.room(name.clone(), Arc::from(""));
    let storage = RoomStorage::new(Box::new(committed), limits.clone());
    let metrics = shared.metrics.party(&name);
    let mut state = RoomState::new(
        name,
        room,
        shared.caps.clone(),
        Arc::default(),
        limits,
        storage,
        metrics,
    );
    state.vars = party.vars.clone();
    state.lobby = true;
    instantiate(shared, party, state)
        .await
        .map_err(|(_, failure)| failure)
}

/// Run one call on an instance made by [`instance`]: timed in
/// `dormouse_hook_seconds`, nothing it wrote is kept, and a failure counts
/// as the party's trap.
pub(super) async fn run_once(
    shared: &Shared,
    instance: &mut Instance,
    party: &str,
    call: Call,
) -> Result<Reply, Failure> {
    let hook = call.hook();
    let started = std::time::Instant::now();
    let result = instance.call(call).await;
    shared.metrics.hook_seconds[hook as usize].observe(started.elapsed());
    instance.state().storage.rollback_all();
    if let Err(failure) = &result {
        shared.metrics.party(party).trap(failure.kind);
    }
    result
}

/// Run a lobby hook for a connect or request to room `key`: `Ok` goes on to
/// the room with that request, `Err` answers instead.
pub async fn run(
    shared: &Shared,
    party: &Party,
    limits: Arc<Limits>,
    key: &RoomKey,
    before: Before,
    request: Request,
) -> Result<Request, Response> {
    let known = party.lobby_hook(before);
    if known == Known::Undefined {
        return Ok(request);
    }
    let (name, room) = (key.0.clone(), key.1.clone());
    let mut instance = match instance(shared, party, limits, name.clone(), room.clone()).await {
        Ok(instance) => instance,
        Err(failure) => {
            warn!(party = %name, room = %room, error = %failure.error, "cannot make the lobby");
            let status = if failure.kind == FailureKind::PoolFull {
                503
            } else {
                500
            };
            return Err(text_response(
                status,
                "the room's lobby could not start; retry",
            ));
        }
    };
    // Only a first call can be answered `none`, which goes on unchanged.
    let original = (known == Known::Unknown).then(|| request.clone());
    let call = Call::Lobby(before, room.to_string(), request);
    let hook = call.hook();
    match run_once(shared, &mut instance, &name, call).await {
        Ok(Reply::Lobby(Some(decided))) => {
            party.learn(before, Known::Defined);
            decided
        }
        Ok(_) => {
            party.learn(before, Known::Undefined);
            // A hook that was there a call ago cannot vanish from a class.
            original.ok_or_else(|| text_response(500, "the room's lobby answered nothing"))
        }
        Err(failure) => {
            let line = format!(
                "{} failed ({}): {:#}",
                hook.label(),
                failure.kind.label(),
                failure.error
            );
            shared.caps.logs.emit(&name, &room, "error", line);
            Err(text_response(500, "the room's lobby failed"))
        }
    }
}
