//! The Wasm side: the engine, a party's compiled component, and a room's
//! instance with its bounds (epoch deadline, memory cap).
//!
//! Compile once and link once per party version ([`Party::load`] ends in an
//! `InstancePre` and the hooks' indices); per wake only `instantiate_async`,
//! from a pooling allocator, so waking a room costs microseconds.
//!
//! Deadlines: a ticker thread bumps the engine's epoch every [`TICK`]. Before
//! each hook the store gets a budget of ticks; at every tick a hook that has
//! run for a tick yields to tokio (so one spinning room never holds a worker
//! thread for much longer than a tick) and spends one tick of budget; at zero
//! the hook traps with `Interrupt`. A trap poisons the `Store`, so the caller
//! drops the instance.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::{
    Component, ComponentExportIndex, HasSelf, InstancePre, Linker, ResourceTable, TypedFunc,
};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::Limits;
use crate::metrics::{FailureKind, Hook};
use crate::room::state::RoomState;
use crate::store::compile_cache::FunctionCache;
use crate::wit::{self, ConnectionInfo, Error, Message, Request, Response};

/// How often the epoch advances: the granularity of hook deadlines, and the
/// longest a spinning guest keeps a tokio worker before it yields.
pub const TICK: Duration = Duration::from_millis(10);

/// The interfaces the linker gives (the room world's imports, and WASI
/// 0.2's, which std-built guests import though they get nothing from them).
const HOST_IMPORTS: [&str; 7] = [
    "dormouse:room/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:io/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
];

/// The interface that holds `on-timer` (see `wit/timers.wit`).
const TIMER_HOOKS: &str = "dormouse:room/timer-hooks@0.1.0";
/// The interface of the lobby's hooks (see `wit/lobby.wit`).
const LOBBY_HOOKS: &str = "dormouse:room/lobby-hooks@0.1.0";
/// The interface that holds `on-cron` (see `wit/crons.wit`).
const CRON_HOOKS: &str = "dormouse:room/cron-hooks@0.1.0";
/// The interface that holds `on-answer` (see `wit/rooms.wit`).
const ANSWER_HOOKS: &str = "dormouse:room/answer-hooks@0.1.0";

/// A lobby hook: (room, request) to what it decided, if it is defined.
type LobbyFunc = TypedFunc<(String, Request), (Option<Result<Request, Response>>,)>;

/// Core instances the pool holds per awake room: enough for any toolchain's
/// component (componentize-py makes 14; Rust 2 to 4).
const CORE_INSTANCES_PER_ROOM: u32 = 16;

/// The engine and the linker every party shares.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InstanceState>,
}

impl Runtime {
    /// The pool is sized by the host's limits (awake rooms, memory per instance).
    /// `functions`: where compiled function bodies are cached (see
    /// `store::compile_cache`); `None` compiles everything every time.
    pub fn new(limits: &Limits, functions: Option<PathBuf>) -> anyhow::Result<Arc<Runtime>> {
        let mut config = wasmtime::Config::new();
        if let Some(dir) = functions {
            config
                .enable_incremental_compilation(Arc::new(FunctionCache::new(dir)))
                .why(|| "cannot enable the compile cache".into())?;
        }
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Plain WIT functions only; the async ABI doubles per-call cost.
        config.concurrency_support(false);
        config.max_wasm_stack(512 << 10);
        // Memories are capped at the instance limit; reserving just that
        // (not 4 GiB each) lets the pool hold many awake rooms.
        let memory = limits.instance_memory_bytes as u64;
        config.memory_reservation(memory);
        config.memory_reservation_for_growth(0);
        let mut pool = PoolingAllocationConfig::default();
        // Per awake room, room for the largest toolchain's component: a
        // componentize-py room has 14 core instances (a Rust room 2 to 4).
        pool.total_component_instances(limits.awake_rooms);
        pool.total_core_instances(limits.awake_rooms.saturating_mul(CORE_INSTANCES_PER_ROOM));
        pool.total_memories(limits.awake_rooms.saturating_mul(2));
        pool.total_tables(limits.awake_rooms.saturating_mul(8));
        pool.total_stacks(limits.awake_rooms);
        pool.max_memory_size(limits.instance_memory_bytes);
        pool.max_core_instances_per_component(32);
        pool.max_memories_per_component(2);
        pool.max_tables_per_component(8);
        // With `warm_slot_bytes`, a freed slot's resident pages, up to that
        // many bytes, are reset in place and stay resident instead of going
        // back to the kernel: the next wake on the slot takes no page
        // faults. That halved the wake (16 to 7 us), but wasmtime keeps
        // them in every slot ever used, for good: after a busy moment with
        // 1,000 rooms awake, 1,000 slots held up to 128 KiB each long after
        // every room hibernated, which is what hibernation is to give back.
        // So the default is 0 (BENCHMARKS.md has both). It needs Linux's
        // PAGEMAP_SCAN (6.7+) to find those pages; without it wasmtime
        // would clear the whole range, so then it stays off.
        if limits.warm_slot_bytes > 0 && PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Auto);
            pool.linear_memory_keep_resident(limits.warm_slot_bytes);
            pool.table_keep_resident(limits.warm_slot_bytes);
        } else {
            // The async stacks too: without zeroing, wasmtime leaves a freed
            // stack slot as it is, so every page a hook's stack ever touched
            // stays resident in every slot ever used (wasmtime's default,
            // made for reuse). With zeroing and nothing kept resident, a
            // freed stack goes back to the kernel (one madvise) as the
            // memories and tables do.
            config.async_stack_zeroing(true);
            pool.async_stack_keep_resident(0);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).why(|| "cannot create the Wasm engine".into())?;

        let mut linker = Linker::new(&engine);
        // Rust guests built for wasm32-wasip2 import a few WASI interfaces
        // through std even when they do no I/O; the context below grants nothing.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wit::RoomCore::add_to_linker::<InstanceState, HasSelf<RoomState>>(&mut linker, |s| {
            &mut s.room
        })?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("dormouse-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .context("cannot start the epoch ticker")?;
        Ok(Arc::new(Runtime { engine, linker }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// Ticks of budget for one hook call.
fn hook_ticks(limits: &Limits) -> u64 {
    (limits.hook_cpu_ms / TICK.as_millis() as u64).max(1)
}

/// One version of a party: compiled, linked, checked against the world.
pub struct Party {
    pub name: String,
    /// Kept to write its precompiled form to the version cache.
    pub component: Component,
    pre: InstancePre<InstanceState>,
    /// The hooks' places in an instance, checked against the world once.
    hooks: wit::RoomCoreIndices,
    /// Where `timer-hooks.on-timer` is, when the component exports it
    /// (components built before timers do not).
    on_timer: Option<ComponentExportIndex>,
    /// Where `lobby-hooks`' two functions are, when exported.
    lobby: Option<[ComponentExportIndex; 2]>,
    /// What each lobby hook turned out to be, once asked ([`Known`] as u8).
    lobby_known: [std::sync::atomic::AtomicU8; 2],
    /// Where `cron-hooks.on-cron` is, when exported (components built
    /// before crons do not).
    on_cron: Option<ComponentExportIndex>,
    /// Where `answer-hooks.on-answer` is, when exported.
    on_answer: Option<ComponentExportIndex>,
    pub vars: Arc<BTreeMap<String, String>>,
    /// Size of the component, bytes.
    pub size: usize,
    /// The deployed version this is, if it came through a deploy.
    pub version: Option<u32>,
}

impl Party {
    /// Whether the component exports `on-cron`.
    pub fn has_on_cron(&self) -> bool {
        self.on_cron.is_some()
    }

    /// What is known of a lobby hook: `Undefined` when the component does
    /// not export the lobby, or a first call found the hook missing.
    pub fn lobby_hook(&self, before: Before) -> Known {
        if self.lobby.is_none() {
            return Known::Undefined;
        }
        match self.lobby_known[before as usize].load(std::sync::atomic::Ordering::Relaxed) {
            0 => Known::Unknown,
            1 => Known::Defined,
            _ => Known::Undefined,
        }
    }

    /// Record what a call found of a lobby hook.
    pub fn learn(&self, before: Before, known: Known) {
        self.lobby_known[before as usize].store(known as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// Validate and compile a component. Every refusal is one sentence that
    /// names the problem; nothing is changed by a refusal.
    pub fn load(
        runtime: &Runtime,
        name: &str,
        bytes: &[u8],
        vars: BTreeMap<String, String>,
    ) -> anyhow::Result<Party> {
        Party::check_header(name, bytes)?;
        let component = Component::new(&runtime.engine, bytes)
            .why(|| format!("party {name}: the component does not compile"))?;
        Party::from_component(runtime, name, component, vars, bytes.len())
    }

    /// Refuse what is plainly not a component, before compiling anything.
    pub fn check_header(name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        if !bytes.starts_with(b"\0asm") {
            anyhow::bail!("party {name}: the file is not WebAssembly");
        }
        // A component's version/layer field differs from a core module's.
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            anyhow::bail!(
                "party {name}: this is a core Wasm module, not a component; build for wasm32-wasip2"
            );
        }
        // Its imports, read before a compile that can take seconds: one the
        // host does not give is refused now.
        let mut depth = 0usize;
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            let payload =
                payload.with_context(|| format!("party {name}: the component is malformed"))?;
            match payload {
                wasmparser::Payload::ModuleSection { .. }
                | wasmparser::Payload::ComponentSection { .. } => depth += 1,
                wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
                wasmparser::Payload::ComponentImportSection(imports) if depth == 0 => {
                    for import in imports {
                        let import = import
                            .with_context(|| format!("party {name}: the component is malformed"))?;
                        let wanted = import.name.name;
                        if !HOST_IMPORTS.iter().any(|p| wanted.starts_with(p)) {
                            anyhow::bail!(
                                "party {name}: the component imports {wanted}, which the host does not give (componentize-js needs `-d http fetch-event`; `dormouse build` passes it)"
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Link a compiled component (fresh, or from the precompiled cache) and
    /// check it against the world.
    pub fn from_component(
        runtime: &Runtime,
        name: &str,
        component: Component,
        vars: BTreeMap<String, String>,
        size: usize,
    ) -> anyhow::Result<Party> {
        let pre = runtime.linker.instantiate_pre(&component).why(|| {
            format!("party {name}: the component imports something the host does not give")
        })?;
        let hooks = wit::RoomCoreIndices::new(&pre).why(|| {
            format!("party {name}: the component does not export dormouse:room/hooks@0.1.0")
        })?;
        let export = |interface: &str, name: &str| {
            let i = component.get_export_index(None, interface)?;
            component.get_export_index(Some(&i), name)
        };
        let on_timer = export(TIMER_HOOKS, "on-timer");
        let lobby = export(LOBBY_HOOKS, "on-before-connect")
            .zip(export(LOBBY_HOOKS, "on-before-request"))
            .map(|(c, r)| [c, r]);
        let on_cron = export(CRON_HOOKS, "on-cron");
        let on_answer = export(ANSWER_HOOKS, "on-answer");
        component
            .initialize_copy_on_write_image()
            .why(|| format!("party {name}: cannot prepare the memory image"))?;
        Ok(Party {
            name: name.to_owned(),
            component,
            pre,
            hooks,
            on_timer,
            lobby,
            lobby_known: Default::default(),
            on_cron,
            on_answer,
            vars: Arc::new(vars),
            size,
            version: None,
        })
    }
}

/// A Store's data: the room's host state plus what bounds the guest.
pub struct InstanceState {
    pub room: RoomState,
    wasi: WasiCtx,
    table: ResourceTable,
    memory_cap: usize,
    /// Set when the cap refused a growth: tells a memory trap from others.
    memory_refused: bool,
    ticks_left: u64,
    /// When the current hook (or instantiation) started.
    started: std::time::Instant,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for InstanceState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A hook call.
pub enum Call {
    Start,
    Connect(ConnectionInfo, Request),
    Message(String, Message),
    Close(String, u16, String, bool),
    Error(String, String),
    Request(Request),
    Alarm(u32),
    Timer,
    /// A lobby hook, in an instance made for it alone: room id and request.
    Lobby(Before, String, Request),
    /// A cron's tick, in an instance made for it alone: its name and time.
    Cron(String, u64),
    /// The answer to a call the room started (`rooms.start`).
    Answer(u64, Result<Response, Error>),
}

/// Which lobby hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Before {
    Connect = 0,
    Request = 1,
}

/// What the host knows of a lobby hook of a party version: the class's
/// static hooks do not change while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    Unknown = 0,
    Defined = 1,
    Undefined = 2,
}

impl Call {
    pub fn hook(&self) -> Hook {
        match self {
            Call::Start => Hook::Start,
            Call::Connect(..) => Hook::Connect,
            Call::Message(..) => Hook::Message,
            Call::Close(..) => Hook::Close,
            Call::Error(..) => Hook::Error,
            Call::Request(..) => Hook::Request,
            Call::Alarm(..) => Hook::Alarm,
            Call::Timer => Hook::Timer,
            Call::Lobby(Before::Connect, ..) => Hook::BeforeConnect,
            Call::Lobby(Before::Request, ..) => Hook::BeforeRequest,
            Call::Cron(..) => Hook::Cron,
            Call::Answer(..) => Hook::Answer,
        }
    }
}

/// What a hook returned.
pub enum Reply {
    Done,
    Connect(Result<(), Response>),
    Response(Response),
    /// A lobby hook's decision; `None` when the room defines no such hook.
    Lobby(Option<Result<Request, Response>>),
    /// On-request deferred its answer (`rooms.defer`): a later hook
    /// responds to this id.
    Deferred(u64),
}

/// A room's live instance.
pub struct Instance {
    store: Store<InstanceState>,
    room: wit::RoomCore,
    /// For the optional hooks, looked up when first called: a typed lookup
    /// checks the function's type, which every wake would pay for.
    instance: wasmtime::component::Instance,
    on_timer: Option<ComponentExportIndex>,
    lobby: Option<[ComponentExportIndex; 2]>,
    on_cron: Option<ComponentExportIndex>,
    on_answer: Option<ComponentExportIndex>,
    ticks: u64,
}

/// Why a hook or a wake failed: the `kind` label and the error for the log.
pub struct Failure {
    pub kind: FailureKind,
    pub error: anyhow::Error,
}

impl Instance {
    /// Make an instance for a waking room. On failure the room's state comes back.
    pub async fn new(
        runtime: &Runtime,
        party: &Party,
        room: RoomState,
    ) -> Result<Instance, (RoomState, Failure)> {
        // The party's own limits (the room carries them); the pool's slot
        // size is the host's cap.
        let ticks = hook_ticks(&room.limits);
        let state = InstanceState {
            memory_cap: room.limits.instance_memory_bytes,
            room,
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            memory_refused: false,
            ticks_left: ticks,
            started: std::time::Instant::now(),
        };
        let mut store = Store::new(&runtime.engine, state);
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        store.epoch_deadline_callback(|mut ctx| {
            let s = ctx.data_mut();
            if s.ticks_left == 0 {
                return Err(Trap::Interrupt.into());
            }
            s.ticks_left -= 1;
            // A hook that merely straddles a tick boundary keeps its thread:
            // yielding it would add a scheduler round trip to a short hook
            // (seen at p99 of wakes). One that has run a whole tick yields.
            if s.started.elapsed() < TICK {
                return Ok(UpdateDeadline::Continue(1));
            }
            // tokio's `yield_now` puts the task at the back of the run queue;
            // wasmtime's plain `Yield` wakes it at once, and tokio then polls
            // it again before the tasks that waited (seen: a neighbour room
            // stalled ~500 ms behind a spinning guest on one worker thread).
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store.set_epoch_deadline(1);
        match Instance::instantiate(party, &mut store).await {
            Ok((room, instance)) => Ok(Instance {
                store,
                room,
                instance,
                on_timer: party.on_timer,
                lobby: party.lobby,
                on_cron: party.on_cron,
                on_answer: party.on_answer,
                ticks,
            }),
            Err(error) => {
                let pool_full = error
                    .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some();
                let kind = match classify(&error, store.data()) {
                    Some(kind) => kind,
                    None if pool_full => FailureKind::PoolFull,
                    None => FailureKind::Instantiate,
                };
                let error = anyhow::Error::from(error);
                Err((store.into_data().room, Failure { kind, error }))
            }
        }
    }

    /// A new instance and its hooks' bindings.
    async fn instantiate(
        party: &Party,
        store: &mut Store<InstanceState>,
    ) -> wasmtime::Result<(wit::RoomCore, wasmtime::component::Instance)> {
        let instance = party.pre.instantiate_async(&mut *store).await?;
        let room = party.hooks.load(&mut *store, &instance)?;
        Ok((room, instance))
    }

    pub fn state(&mut self) -> &mut RoomState {
        &mut self.store.data_mut().room
    }

    pub fn state_ref(&self) -> &RoomState {
        &self.store.data().room
    }

    /// Drop the instance, keeping the room's state.
    pub fn into_state(self) -> RoomState {
        self.store.into_data().room
    }

    /// Call one hook within its budget.
    pub async fn call(&mut self, call: Call) -> Result<Reply, Failure> {
        self.store.data_mut().ticks_left = self.ticks;
        self.store.data_mut().started = std::time::Instant::now();
        self.store.set_epoch_deadline(1);
        let hooks = self.room.dormouse_room_hooks();
        let s = &mut self.store;
        let result = match call {
            Call::Start => hooks.call_on_start(s).await.map(|()| Reply::Done),
            Call::Connect(c, r) => hooks.call_on_connect(s, &c, &r).await.map(Reply::Connect),
            Call::Message(c, m) => hooks.call_on_message(s, &c, &m).await.map(|()| Reply::Done),
            Call::Close(c, code, reason, clean) => hooks
                .call_on_close(s, &c, code, &reason, clean)
                .await
                .map(|()| Reply::Done),
            Call::Error(c, d) => hooks.call_on_error(s, &c, &d).await.map(|()| Reply::Done),
            Call::Request(r) => hooks.call_on_request(s, &r).await.map(Reply::Response),
            Call::Alarm(n) => hooks.call_on_alarm(s, n).await.map(|()| Reply::Done),
            Call::Timer => match self.on_timer {
                Some(index) => match self.instance.get_typed_func::<(), ()>(&mut *s, index) {
                    Ok(f) => f.call_async(s, ()).await.map(|()| Reply::Done),
                    Err(e) => Err(e),
                },
                // Only a component that exports it can have set a timer.
                None => Ok(Reply::Done),
            },
            Call::Lobby(before, room, r) => match self.lobby {
                Some(indices) => {
                    let index = indices[before as usize];
                    match self.instance.get_typed_func::<_, _>(&mut *s, index) {
                        Ok(f) => {
                            let f: LobbyFunc = f;
                            f.call_async(s, (room, r))
                                .await
                                .map(|(decided,)| Reply::Lobby(decided))
                        }
                        Err(e) => Err(e),
                    }
                }
                None => Ok(Reply::Lobby(None)),
            },
            Call::Cron(name, at) => match self.on_cron {
                Some(index) => match self
                    .instance
                    .get_typed_func::<(String, u64), ()>(&mut *s, index)
                {
                    Ok(f) => f.call_async(s, (name, at)).await.map(|()| Reply::Done),
                    Err(e) => Err(e),
                },
                // The host asks first ([`Party::has_on_cron`]).
                None => Ok(Reply::Done),
            },
            Call::Answer(id, answer) => match self.on_answer {
                Some(index) => match self
                    .instance
                    .get_typed_func::<(u64, Result<Response, Error>), ()>(&mut *s, index)
                {
                    Ok(f) => f.call_async(s, (id, answer)).await.map(|()| Reply::Done),
                    Err(e) => Err(e),
                },
                // A component without it has no answer to wait for: the
                // call is sent all the same, its answer dropped.
                None => Ok(Reply::Done),
            },
        };
        result.map_err(|error| Failure {
            kind: classify(&error, self.store.data()).unwrap_or(FailureKind::Trap),
            error: anyhow::Error::from(error),
        })
    }
}

/// `anyhow`'s `with_context` for wasmtime's own error type.
trait Why<T> {
    fn why(self, message: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T> Why<T> for wasmtime::Result<T> {
    fn why(self, message: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::Error::from(e).context(message()))
    }
}

/// The `kind` of a guest failure, when it is more than a plain trap.
fn classify(error: &wasmtime::Error, state: &InstanceState) -> Option<FailureKind> {
    if state.memory_refused {
        return Some(FailureKind::Memory);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Some(FailureKind::Deadline),
        Some(Trap::StackOverflow) => Some(FailureKind::StackOverflow),
        _ => None,
    }
}
