// The JavaScript SDK: PartyKit's `Party.Server` class API over Dormouse's WIT
// world (`wit/`). `dormouse build` bundles a room with esbuild and exports
// what `serve(Server)` makes as `hooks`, `timerHooks` and `lobbyHooks`,
// which componentize-js turns into the component's `dormouse:room/hooks`,
// `timer-hooks` and `lobby-hooks` exports. One section per WIT
// interface, in the order of `wit/world.wit`; names follow PartyKit's.
import * as context from "dormouse:room/context@0.1.0";
import * as connections from "dormouse:room/connections@0.1.0";
import * as storageWit from "dormouse:room/storage@0.1.0";
import * as sqlWit from "dormouse:room/sql@0.1.0";
import * as alarm from "dormouse:room/alarm@0.1.0";
import * as rooms from "dormouse:room/rooms@0.1.0";
import * as timers from "dormouse:room/timers@0.1.0";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ------------------------------------------------------------------ context

// console.* goes to the room's log (`dormouse tail`), as PartyKit's does.
for (const [method, level] of [
  ["debug", "debug"],
  ["log", "info"],
  ["info", "info"],
  ["warn", "warn"],
  ["error", "error"],
]) {
  console[method] = (...args) => context.log(level, args.map(show).join(" "));
}

function show(value) {
  if (typeof value === "string") return value;
  if (value instanceof Error) return value.stack || String(value);
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

// -------------------------------------------------------------- connections

/** A WIT message from a string, an ArrayBuffer or a view of one; anything
 *  else is sent as its string, as a WebSocket's `send` (and so PartyKit's
 *  `conn.send(0)`) does. */
function toMessage(message) {
  if (typeof message === "string") return { tag: "text", val: message };
  if (message instanceof ArrayBuffer) return { tag: "binary", val: new Uint8Array(message) };
  if (ArrayBuffer.isView(message)) {
    return { tag: "binary", val: new Uint8Array(message.buffer, message.byteOffset, message.byteLength) };
  }
  return { tag: "text", val: String(message) };
}

/** What a hook receives: a string, or an ArrayBuffer (as PartyKit gives). */
function fromMessage(message) {
  if (message.tag === "text") return message.val;
  const bytes = message.val;
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
}

/** The error a WIT import threw, as a JavaScript `Error` with its kind. */
function witError(e) {
  const payload = e && e.payload;
  if (!payload || !payload.tag) return e;
  const error = new Error(`${payload.tag}: ${payload.val}`);
  error.kind = payload.tag;
  return error;
}

function call(f) {
  try {
    return f();
  } catch (e) {
    throw witError(e);
  }
}

/** One WebSocket connection, held by the host across hibernation. */
export class Connection {
  constructor(id, uri) {
    this.id = id;
    this.rawUri = uri;
  }

  /** The upgrade URL. PartyKit's is a full URL; the host keeps path and
   *  query only, so the origin is a placeholder. Read from the host when
   *  first asked: most hooks never look at it. */
  get uri() {
    this.rawUri ??= connections.get(this.id)?.uri;
    return this.rawUri === undefined ? undefined : new URL(this.rawUri, "http://localhost").href;
  }

  /** The value set with `setState`, or null; survives hibernation. */
  get state() {
    const bytes = call(() => connections.getState(this.id));
    return bytes === undefined ? null : JSON.parse(decoder.decode(bytes));
  }

  /** Replace the state (a JSON value, 16 KiB at most), or map the old one. */
  setState(next) {
    const value = typeof next === "function" ? next(this.state) : next;
    const bytes = value === null || value === undefined ? undefined : encoder.encode(JSON.stringify(value));
    call(() => connections.setState(this.id, bytes));
    return value ?? null;
  }

  /** Durable Objects' hibernation API, over the same state. */
  serializeAttachment(value) {
    this.setState(value);
  }

  deserializeAttachment() {
    return this.state;
  }

  /** The connection's tags (from `getConnectionTags`). */
  get tags() {
    return connections.get(this.id)?.tags ?? [];
  }

  send(message) {
    call(() => connections.send(this.id, toMessage(message)));
  }

  close(code = 1000, reason = "") {
    call(() => connections.close(this.id, code, reason));
  }
}

function connection(info) {
  return new Connection(info.id, info.uri);
}

// ------------------------------------------------------------------ storage

// Values are kept as JSON, with tags for what JSON cannot say: Date, Map,
// Set, BigInt, ArrayBuffer and typed arrays (Durable Objects keep these
// through structured clone). Plain JSON values are stored as plain JSON,
// byte for byte what `serde_json` writes, so a Rust room reads them too.
const TAG = "__dormouse";
const VIEWS = {
  Uint8Array, Int8Array, Uint8ClampedArray, Uint16Array, Int16Array,
  Uint32Array, Int32Array, Float32Array, Float64Array, BigInt64Array, BigUint64Array,
};

function base64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function unbase64(s) {
  const raw = atob(s);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function replacer(key, value) {
  const raw = this[key];
  if (raw instanceof Date) return { [TAG]: "Date", v: raw.toISOString() };
  if (raw instanceof Map) return { [TAG]: "Map", v: [...raw] };
  if (raw instanceof Set) return { [TAG]: "Set", v: [...raw] };
  if (typeof raw === "bigint") return { [TAG]: "BigInt", v: raw.toString() };
  if (raw instanceof ArrayBuffer) return { [TAG]: "ArrayBuffer", v: base64(new Uint8Array(raw)) };
  if (ArrayBuffer.isView(raw) && !(raw instanceof DataView)) {
    const bytes = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
    return { [TAG]: raw.constructor.name, v: base64(bytes) };
  }
  return value;
}

function reviver(_key, value) {
  if (value === null || typeof value !== "object" || !(TAG in value)) return value;
  const { [TAG]: type, v } = value;
  switch (type) {
    case "Date": return new Date(v);
    case "Map": return new Map(v);
    case "Set": return new Set(v);
    case "BigInt": return BigInt(v);
    case "ArrayBuffer": return unbase64(v).buffer;
    default: {
      const View = VIEWS[type];
      if (!View) return value;
      const bytes = unbase64(v);
      return new View(bytes.buffer, 0, bytes.byteLength / View.BYTES_PER_ELEMENT);
    }
  }
}

function encode(value) {
  if (value === undefined) throw new TypeError("storage cannot keep undefined; use delete");
  return encoder.encode(JSON.stringify(value, replacer));
}

function decode(bytes) {
  const text = decoder.decode(bytes);
  try {
    return JSON.parse(text, reviver);
  } catch {
    // Written by a room in another language, not as JSON: the text itself.
    return text;
  }
}

// ---------------------------------------------------------------------- sql

/** A JavaScript value as a SQL parameter, as Durable Objects bind them. */
function toSql(v) {
  if (v === null || v === undefined) return { tag: "null" };
  switch (typeof v) {
    case "number":
      return Number.isSafeInteger(v) ? { tag: "integer", val: BigInt(v) } : { tag: "real", val: v };
    case "bigint":
      return { tag: "integer", val: v };
    case "boolean":
      return { tag: "integer", val: v ? 1n : 0n };
    case "string":
      return { tag: "text", val: v };
  }
  if (v instanceof ArrayBuffer) return { tag: "blob", val: new Uint8Array(v) };
  if (ArrayBuffer.isView(v)) return { tag: "blob", val: new Uint8Array(v.buffer, v.byteOffset, v.byteLength) };
  throw new TypeError(`cannot bind ${Object.prototype.toString.call(v)} as a SQL value`);
}

/** A column's value as JavaScript: integers as numbers (BigInt past 2^53),
 *  blobs as ArrayBuffer, as Durable Objects return them. */
function fromSql(v) {
  switch (v.tag) {
    case "null": return null;
    case "integer": {
      const n = Number(v.val);
      return Number.isSafeInteger(n) ? n : v.val;
    }
    case "real": return v.val;
    case "text": return v.val;
    case "blob": return v.val.slice().buffer;
  }
  return null;
}

/** What `sql.exec` returns: Durable Objects' SqlStorageCursor. The query
 *  has run by the time it returns; the cursor walks its rows. */
class SqlStorageCursor {
  #rows;
  #at = 0;

  constructor(result) {
    this.columnNames = result.columnNames;
    this.rowsRead = Number(result.rowsRead);
    this.rowsWritten = Number(result.rowsWritten);
    this.#rows = result.rows;
  }

  #object(raw) {
    const row = {};
    this.columnNames.forEach((name, i) => {
      row[name] = fromSql(raw[i]);
    });
    return row;
  }

  next() {
    if (this.#at >= this.#rows.length) return { done: true, value: undefined };
    return { done: false, value: this.#object(this.#rows[this.#at++]) };
  }

  [Symbol.iterator]() {
    return this;
  }

  /** The rows not yet read, as objects. */
  toArray() {
    const out = [];
    for (const row of this) out.push(row);
    return out;
  }

  /** The one row; throws unless exactly one is left. */
  one() {
    const left = this.#rows.length - this.#at;
    if (left !== 1) throw new Error(`Expected exactly one row from the query, got ${left}`);
    return this.next().value;
  }

  /** The same cursor giving rows as arrays, in `columnNames` order. */
  raw() {
    const left = () => this.#rows.length - this.#at;
    const raw = {
      columnNames: this.columnNames,
      rowsRead: this.rowsRead,
      rowsWritten: this.rowsWritten,
      next: () =>
        left() > 0
          ? { done: false, value: this.#rows[this.#at++].map(fromSql) }
          : { done: true, value: undefined },
      [Symbol.iterator]() {
        return raw;
      },
      toArray() {
        return [...raw];
      },
      one() {
        if (left() !== 1) throw new Error(`Expected exactly one row from the query, got ${left()}`);
        return raw.next().value;
      },
    };
    return raw;
  }
}

/** The room's SQL database: Durable Objects' `ctx.storage.sql`. Its writes
 *  commit with the hook's key-value writes. */
class SqlStorage {
  exec(query, ...bindings) {
    return new SqlStorageCursor(call(() => sqlWit.exec(query, bindings.map(toSql))));
  }

  /** Bytes the database takes on disk. */
  get databaseSize() {
    return Number(call(() => sqlWit.databaseSize()));
  }
}

let savepoints = 0;

/** The room's storage, with Durable Objects' (and PartyKit's) API. Every
 *  call completes at once; the promises are for code written for both. All
 *  writes of one hook commit together when it ends, and its messages leave
 *  only after that (the output gate). */
class Storage {
  /** The room's SQL database. */
  sql = new SqlStorage();

  async get(keys) {
    if (Array.isArray(keys)) {
      const found = call(() => storageWit.getMany(keys));
      return new Map(found.map(([k, v]) => [k, decode(v)]));
    }
    const bytes = call(() => storageWit.get(keys));
    return bytes === undefined ? undefined : decode(bytes);
  }

  async put(keyOrEntries, value) {
    if (typeof keyOrEntries === "string") {
      call(() => storageWit.put(keyOrEntries, encode(value)));
      return;
    }
    const entries = Object.entries(keyOrEntries).map(([k, v]) => [k, encode(v)]);
    call(() => storageWit.putMany(entries));
  }

  async delete(keys) {
    if (Array.isArray(keys)) return call(() => storageWit.deleteMany(keys));
    return call(() => storageWit.delete(keys));
  }

  async deleteAll() {
    call(() => storageWit.deleteAll());
  }

  /** Entries in key order: `{prefix, start, startAfter, end, limit, reverse}`. */
  async list(options = {}) {
    const { prefix, start, startAfter, end, limit, reverse = false } = options;
    const skipFirst = startAfter !== undefined && !reverse;
    const found = call(() =>
      storageWit.list({
        prefix,
        start: startAfter ?? start,
        end,
        limit: limit === undefined ? undefined : limit + (skipFirst ? 1 : 0),
        reverse,
      }),
    );
    const map = new Map();
    for (const [k, v] of found) {
      if (startAfter !== undefined && k <= startAfter) continue;
      if (limit !== undefined && map.size >= limit) break;
      map.set(k, decode(v));
    }
    return map;
  }

  async getAlarm() {
    const at = call(() => alarm.get());
    return at === undefined ? null : Number(at);
  }

  async setAlarm(time) {
    const at = time instanceof Date ? time.getTime() : Number(time);
    call(() => alarm.set(BigInt(Math.max(0, Math.floor(at)))));
  }

  async deleteAlarm() {
    call(() => alarm.delete());
  }

  /** Every hook is one transaction already: this runs `f` on this storage. */
  async transaction(f) {
    return f(this);
  }

  /** Run `f` now as a part of the hook that fails alone: when it throws,
   *  its SQL writes are taken back and the error goes on (key-value writes
   *  commit with the hook). Durable Objects' `transactionSync`. */
  transactionSync(f) {
    const name = `tx${savepoints++}`;
    this.sql.exec(`SAVEPOINT ${name}`);
    try {
      const result = f();
      savepoints--;
      this.sql.exec(`RELEASE ${name}`);
      return result;
    } catch (e) {
      savepoints--;
      this.sql.exec(`ROLLBACK TO ${name}; RELEASE ${name}`);
      throw e;
    }
  }

  /** Writes are durable when the hook ends; nothing to wait for. */
  async sync() {}
}

// ------------------------------------------------------------------- timers

// setTimeout and setInterval as on PartyKit (a Durable Object): a pending
// timer keeps the room awake and fires in a hook of its own (on-timer),
// whose writes commit together and whose messages leave after them, as any
// hook's. componentize-js's own timers run only while a hook's promise is
// pending, so the SDK keeps its timers itself and asks the host
// (`timers.set`) for the earliest; its native timer is kept for waiting
// inside a hook (`await new Promise((r) => setTimeout(r, 10))`).
const nativeSetTimeout = globalThis.setTimeout;
const nativeClearTimeout = globalThis.clearTimeout;
/** Pending timers by id: when each is due, its interval, its callback. */
const pendingTimers = new Map();
let lastTimerId = 0;
/** The time last asked of the host (`undefined`: none is set there). */
let timerAsked;

function addTimer(callback, ms, args, repeat) {
  if (typeof callback !== "function") throw new TypeError("a timer's callback must be a function");
  const delay = Math.max(0, Number(ms) || 0);
  const id = ++lastTimerId;
  pendingTimers.set(id, {
    at: Date.now() + delay,
    every: repeat ? Math.max(1, delay) : undefined,
    run: () => callback(...args),
  });
  return id;
}

function clearTimer(id) {
  pendingTimers.delete(Number(id));
}

globalThis.setTimeout = (callback, ms, ...args) => addTimer(callback, ms, args, false);
globalThis.setInterval = (callback, ms, ...args) => addTimer(callback, ms, args, true);
globalThis.clearTimeout = clearTimer;
globalThis.clearInterval = clearTimer;

/** When the earliest pending timer is due, if any. */
function nextTimer() {
  let next;
  for (const t of pendingTimers.values()) if (next === undefined || t.at < next) next = t.at;
  return next;
}

/** Run the timers that are due, earliest first; what their callbacks
 *  returned (an async callback's promise is awaited by the hook). */
function runDueTimers() {
  const now = Date.now();
  const due = [...pendingTimers].filter(([, t]) => t.at <= now).sort(([a, x], [b, y]) => x.at - y.at || a - b);
  const results = [];
  for (const [id, t] of due) {
    // An earlier callback may have cleared it.
    if (pendingTimers.get(id) !== t) continue;
    if (t.every === undefined) pendingTimers.delete(id);
    else t.at = now + t.every;
    results.push(t.run());
  }
  return results;
}

/** A macrotask: it runs after every microtask queued before it. */
function macrotask() {
  return new Promise((resolve) => nativeSetTimeout(resolve, 0));
}

/** What `settled` gives for a hook that returns while it still waits on
 *  another room's answer (see "answers" below): its promise. */
class Suspended {
  constructor(promise) {
    this.promise = promise;
  }
}

/** The hook's promise, once settled. While it waits on one of the SDK's
 *  timers, wait (natively) for the earliest and run what is due. While an
 *  answer from another room is pending, the hook cannot wait for it here:
 *  it is suspended (`Suspended`), the host runs the room's other events,
 *  and it goes on in the hook that brings the answer. A hook that settles
 *  with neither pays for one promise: this is every message's path. */
function settled(hook, promise) {
  if (pendingAnswers.size > 0 || pendingTimers.size > 0) return waitOrSuspend(hook, promise);
  if (!mayStart) return promise;
  return new Promise((resolve, reject) => {
    onCallStarted = () => {
      onCallStarted = undefined;
      resolve(waitOrSuspend(hook, promise));
    };
    promise.then(
      (value) => {
        onCallStarted = undefined;
        resolve(value);
      },
      (e) => {
        onCallStarted = undefined;
        reject(e);
      },
    );
  });
}

/** `settled`'s way when the hook waits on a timer or an answer. */
async function waitOrSuspend(hook, promise) {
  let done = false;
  const watched = promise.finally(() => {
    done = true;
  });
  for (;;) {
    if (pendingAnswers.size > 0) {
      // Whatever can run without an answer has run after a macrotask.
      await Promise.race([watched.catch(() => {}), macrotask()]);
      if (done) return watched;
      if (pendingAnswers.size > 0) {
        suspend(hook, watched);
        return new Suspended(watched);
      }
    }
    const next = nextTimer();
    // Nothing the SDK can wait for: the hook settles, or starts a call.
    if (next === undefined && !mayStart) return watched;
    let handle;
    const wait = new Promise((resolve) => {
      if (next !== undefined) handle = nativeSetTimeout(resolve, Math.max(0, next - Date.now()));
    });
    await Promise.race([watched.catch(() => {}), wait, callStarted()]);
    nativeClearTimeout(handle);
    if (done) return watched;
    if (pendingAnswers.size === 0) await Promise.all(runDueTimers());
  }
}

/** Tell the host when the earliest timer is due, if that changed. */
function askForTimer() {
  const next = nextTimer();
  if (next === timerAsked) return;
  timerAsked = next;
  timers.set(next === undefined ? undefined : Math.min(0xffffffff, Math.max(0, next - Date.now())));
}

// ------------------------------------------------------------------ answers

// A room that awaits another room's answer takes its other events
// meanwhile, calls back into it included, as a Durable Object does: `fetch`
// starts the call (`rooms.start`), the hook returns to the host suspended,
// and the answer comes in a hook of its own (`on-answer`) that resolves the
// promise, so the suspended hook goes on there: its writes after the await
// commit with that hook's, and a throw there fails that hook. onRequest
// defers its answer (`rooms.defer`) and gives it when it settles
// (`rooms.respond`). onStart, the lobby and the crons wait in the hook
// (`rooms.fetch`): onStart runs to its end before any other event, as on
// PartyKit, and the others are one call with no later hook.

/** Calls started, by id: their promise's resolve and reject. */
const pendingAnswers = new Map();
/** Whether `fetch` may start a call rather than wait in the hook. */
let mayStart = false;
/** How many suspended hooks have not settled. */
let suspendedHooks = 0;
/** What the suspended hooks that failed threw, as log lines, for the hook
 *  they failed in to fail with them. */
const suspendedFailures = [];

function suspend(hook, promise) {
  suspendedHooks += 1;
  promise
    .catch((e) => {
      if (!refusals.has(e)) suspendedFailures.push(`${hook} threw ${describe(e)}`);
    })
    .finally(() => {
      suspendedHooks -= 1;
    });
}

/** Tells `settled` (or `waitOrSuspend`) that the hook started a call. */
let onCallStarted;

/** Settles when the hook starts a call. */
function callStarted() {
  return new Promise((resolve) => {
    onCallStarted = resolve;
  });
}

/** Call a room's onRequest: started while the room may take other events,
 *  else waited for in the hook. */
function roomCall(name, id, witRequest) {
  if (!mayStart) return Promise.resolve(fromWitResponse(call(() => rooms.fetch(name, id, witRequest))));
  const started = call(() => rooms.start(name, id, witRequest));
  const answer = new Promise((resolve, reject) => pendingAnswers.set(started, { resolve, reject }));
  // Pending before `settled` hears of it.
  onCallStarted?.();
  return answer;
}

/** The answer to a started call: its promise settles, and what awaited it
 *  runs on, in this hook. */
function answered(id, answer) {
  const waiter = pendingAnswers.get(id);
  if (waiter === undefined) return;
  pendingAnswers.delete(id);
  if (answer.tag === "ok") waiter.resolve(fromWitResponse(answer.val));
  else waiter.reject(witError({ payload: answer.val }));
}

// -------------------------------------------------------------------- rooms

/** PartyKit's `room.context.parties.<party>.get(id)`: `fetch` runs that
 *  room's `onRequest` (waking it if needed). */
function party(name) {
  return {
    get(id) {
      return {
        async fetch(input, init) {
          let path = "";
          if (typeof input === "string" && input.startsWith("/")) path = input;
          else if (input && typeof input === "object" && !(input instanceof Request)) init = input;
          const request = new Request(`http://localhost/parties/${name}/${encodeURIComponent(id)}${path}`, init);
          const body = new Uint8Array(await request.arrayBuffer());
          return roomCall(name, id, toWitRequest(request, body));
        },
      };
    },
  };
}

const parties = new Proxy({}, { get: (_, name) => (typeof name === "string" ? party(name) : undefined) });

// ----------------------------------------------------------- requests, room

function toRequest(witRequest) {
  const headers = new Headers(witRequest.headers);
  const origin = `http://${headers.get("host") ?? "localhost"}`;
  const hasBody = !["GET", "HEAD"].includes(witRequest.method) && witRequest.body.length > 0;
  const request = new Request(new URL(witRequest.uri, origin).href, {
    method: witRequest.method,
    headers,
    body: hasBody ? witRequest.body : undefined,
  });
  // Cloudflare's edge data, which code written for PartyKit reads: a
  // self-hosted server has none, but Cloudflare's proxy, when in front,
  // says the country.
  const country = headers.get("cf-ipcountry");
  request.cf = country ? { country } : {};
  return request;
}

function toWitRequest(request, body) {
  const url = new URL(request.url);
  return {
    method: request.method,
    uri: url.pathname + url.search,
    headers: [...request.headers],
    body,
  };
}

async function toWitResponse(response) {
  if (!(response instanceof StandardResponse)) {
    throw new TypeError("onRequest must return a Response");
  }
  return {
    status: response.status,
    headers: [...response.headers],
    body: new Uint8Array(await response.arrayBuffer()),
  };
}

/** A plain-text response, as the Rust SDK's `Response::text` makes. */
function text(status, body) {
  return new Response(body, { status, headers: { "content-type": "text/plain; charset=utf-8" } });
}

function fromWitResponse(r) {
  const empty = r.status === 204 || r.status === 304 || r.body.length === 0;
  return new Response(empty ? null : r.body, { status: r.status, headers: r.headers });
}

/** What PartyKit calls the room: who it is, its storage, its connections. */
export class Room {
  constructor() {
    this.storage = new Storage();
    this.context = { parties };
    this.parties = parties;
  }

  /** The room id from the URL. */
  get id() {
    return context.id();
  }

  /** The party (deployed component) this room belongs to. */
  get name() {
    return context.party();
  }

  /** The party's vars (from `dormouse.toml`). */
  get env() {
    return Object.fromEntries(context.vars());
  }

  broadcast(message, without = []) {
    call(() => connections.broadcast(toMessage(message), without));
  }

  getConnection(id) {
    const info = connections.get(id);
    return info === undefined ? undefined : connection(info);
  }

  getConnections(tag) {
    return connections.list(tag).map(connection);
  }
}

// ------------------------------------------------------- the lobby's sockets

/** One end of a `WebSocketPair`. In `onBeforeConnect` (the only place a
 *  PartyKit server makes one) the pair is a way to refuse with a close code
 *  a browser can read: accept the server end, close it, and answer
 *  `new Response(null, { status: 101, webSocket: pair[0] })`. The lobby
 *  cannot hold a socket, so that is all an end does: the host accepts the
 *  client's socket and closes it at once with that code and reason. */
class LobbySocket {
  #pair;
  constructor(pair) {
    this.#pair = pair;
  }
  accept() {}
  close(code = 1000, reason = "") {
    if (code !== 1000 && !(code >= 3000 && code <= 4999)) {
      throw new RangeError(`close code ${code}: use 1000 or 3000..=4999`);
    }
    const bytes = encoder.encode(String(reason));
    if (bytes.length > 123) throw new RangeError("a close reason is at most 123 bytes");
    this.#pair.close ??= { code, bytes };
  }
  send() {
    throw new Error("a WebSocketPair in onBeforeConnect can only accept and close: send in onConnect");
  }
  addEventListener() {}
  removeEventListener() {}
  /** The close frame's payload (code, then reason) for the host. */
  static payload(socket) {
    const close = socket.#pair.close ?? {
      code: 1011,
      bytes: encoder.encode("onBeforeConnect did not close its WebSocketPair"),
    };
    return Uint8Array.of(close.code >> 8, close.code & 255, ...close.bytes);
  }
}

/** Cloudflare's `WebSocketPair`: `pair[0]` for the client, `pair[1]` for
 *  the server (see [`LobbySocket`]). */
export class WebSocketPair {
  constructor() {
    const pair = {};
    this[0] = new LobbySocket(pair);
    this[1] = new LobbySocket(pair);
  }
}

/** `Response` as Cloudflare's runtime has it: `status: 101` with a
 *  `webSocket` is allowed (the fetch standard's constructor refuses 101). */
const StandardResponse = globalThis.Response;
class Response extends StandardResponse {
  #webSocket;
  constructor(body, init) {
    const upgrade = init?.status === 101 && init.webSocket instanceof LobbySocket;
    super(body, upgrade ? { ...init, status: 200 } : init);
    this.#webSocket = upgrade ? init.webSocket : null;
  }
  get status() {
    return this.#webSocket ? 101 : super.status;
  }
  get webSocket() {
    return this.#webSocket;
  }
}
globalThis.Response = Response;
globalThis.WebSocketPair = WebSocketPair;

// -------------------------------------------------------------------- hooks

/** The static hooks' view of the room (PartyKit's "lobby"). */
function lobby() {
  return { id: context.id(), env: Object.fromEntries(context.vars()), parties };
}

/** An error as a log line: its name, message and stack (SpiderMonkey's
 *  stack leaves the message out). */
function describe(e) {
  if (e instanceof Error) return `${e.name}: ${e.message}${e.stack ? `\n${e.stack}` : ""}`;
  try {
    return typeof e === "string" ? e : JSON.stringify(e);
  } catch {
    return String(e);
  }
}

/** onConnect's refusals: WIT responses thrown as its `result`'s error. */
const refusals = new WeakSet();

function refusal(witResponse) {
  refusals.add(witResponse);
  return witResponse;
}

/** Run a hook; a throw (but a refusal, which answers) is logged with its
 *  message and stack before it traps: the host alone would only know that
 *  the instance hit `unreachable`. `options.room`: a room's own hook but
 *  onStart, which may start calls; a hook suspended on an answer returns
 *  what `options.suspended(promise)` gives. A suspended hook that fails
 *  while this one runs fails this one. */
async function reporting(hook, run, options = NOT_ROOM) {
  mayStart = options.room;
  let result;
  try {
    result = await settled(hook, run());
    if (result instanceof Suspended) result = options.suspended?.(result.promise);
    // What awaited an answer this hook gave has run after a macrotask.
    if (suspendedHooks > 0) await macrotask();
  } catch (e) {
    if (!refusals.has(e)) context.log("error", `${hook} threw ${describe(e)}`);
    throw e;
  }
  if (suspendedFailures.length > 0) {
    for (const line of suspendedFailures) context.log("error", line);
    suspendedFailures.length = 0;
    throw new Error(`a suspended hook failed while ${hook} ran`);
  }
  askForTimer();
  return result;
}

/** A room's own hook (not onStart): it may start calls. */
const ROOM = { room: true };
/** onStart, the lobby's hooks, a cron: calls wait in the hook. */
const NOT_ROOM = { room: false };

/** onRequest suspended on an answer: the host keeps the caller waiting
 *  (`rooms.defer`), and the response goes when the hook settles, from
 *  whichever hook that is. What it returns now is ignored. */
function deferred(pending) {
  const id = call(() => rooms.defer());
  pending.then(
    (witResponse) => rooms.respond(id, witResponse),
    // Failed: that hook fails (reporting), and the caller with the instance.
    () => {},
  );
  return { status: 500, headers: [], body: new Uint8Array() };
}

/** The `dormouse:room/hooks`, `timer-hooks`, `lobby-hooks`, `cron-hooks` and `answer-hooks` exports for
 *  a `Party.Server` class. A hook may be async: it ends when its promise
 *  settles, so its writes and messages still commit together. A throw in a
 *  hook drops the instance and rolls the hook back, as a Rust panic does. */
export function serve(ServerClass) {
  let server = null;
  const room = () => {
    if (server === null) server = new ServerClass(new Room());
    return server;
  };
  const hooks = {
    async onStart() {
      return reporting("onStart", async () => {
        server = null;
        await room().onStart?.();
      });
    },

    async onConnect(info, witRequest) {
      return reporting("onConnect", async () => {
        // onBeforeConnect ran in the lobby (lobbyHooks, below).
        const request = toRequest(witRequest);
        const conn = connection(info);
        const ctx = { request };
        const s = room();
        if (typeof s.getConnectionTags === "function") {
          const tags = await s.getConnectionTags(conn, ctx);
          call(() => connections.setTags(conn.id, [...(tags ?? [])]));
        }
        try {
          await s.onConnect?.(conn, ctx);
        } catch (e) {
          // A Response thrown refuses the upgrade with it.
          if (e instanceof StandardResponse) throw refusal(await toWitResponse(e));
          throw e;
        }
      }, ROOM);
    },

    async onMessage(id, message) {
      return reporting("onMessage", async () => {
        await room().onMessage?.(fromMessage(message), new Connection(id));
      }, ROOM);
    },

    async onClose(id, code, reason, wasClean) {
      return reporting("onClose", async () => {
        await room().onClose?.(new Connection(id), code, reason, wasClean);
      }, ROOM);
    },

    async onError(id, description) {
      return reporting("onError", async () => {
        await room().onError?.(new Connection(id), new Error(description));
      }, ROOM);
    },

    async onRequest(witRequest) {
      return reporting("onRequest", async () => {
        // onBeforeRequest ran in the lobby (lobbyHooks, below).
        const request = toRequest(witRequest);
        const s = room();
        if (typeof s.onRequest !== "function") {
          return toWitResponse(text(404, "not found"));
        }
        return toWitResponse(await s.onRequest(request));
      }, { room: true, suspended: deferred });
    },

    async onAlarm(_retryCount) {
      return reporting("onAlarm", async () => {
        await room().onAlarm?.();
      }, ROOM);
    },
  };
  const timerHooks = {
    async onTimer() {
      // The host's timer fired: none is set there now.
      timerAsked = undefined;
      return reporting("a timer", async () => {
        await Promise.all(runDueTimers());
      }, ROOM);
    },
  };
  const answerHooks = {
    async onAnswer(id, answer) {
      return reporting("an answer", async () => answered(id, answer), ROOM);
    },
  };
  // PartyKit's static hooks, which the host runs in the lobby: an instance
  // of their own, before the room (a call into the room from there is an
  // ordinary call). `undefined` tells the host the class has none.
  const before = (name) => async (_room, witRequest) => {
    const hook = ServerClass[name];
    if (typeof hook !== "function") return undefined;
    return reporting(name, async () => {
      const verdict = await hook.call(ServerClass, toRequest(witRequest), lobby(), {});
      if (verdict instanceof Response && verdict.webSocket) {
        // Accepted and closed: the host sends the close frame (lobby.wit).
        return { tag: "err", val: { status: 101, headers: [], body: LobbySocket.payload(verdict.webSocket) } };
      }
      if (verdict instanceof StandardResponse) return { tag: "err", val: await toWitResponse(verdict) };
      if (verdict instanceof Request) {
        const body = new Uint8Array(await verdict.arrayBuffer());
        return { tag: "ok", val: toWitRequest(verdict, body) };
      }
      return { tag: "ok", val: witRequest };
    });
  };
  const lobbyHooks = {
    onBeforeConnect: before("onBeforeConnect"),
    onBeforeRequest: before("onBeforeRequest"),
  };
  // PartyKit's `static onCron(cron, lobby, ctx)`, which the host runs at a
  // cron's tick (`[[parties.NAME.crons]]`) outside any room, as the lobby's
  // hooks run. A class without it fails the run, so the log says why.
  const cronHooks = {
    async onCron(name, scheduledMs) {
      return reporting("onCron", async () => {
        const hook = ServerClass.onCron;
        if (typeof hook !== "function") {
          throw new Error(`cron ${name} is due, but the class has no static onCron`);
        }
        const cron = { name, cron: name, scheduledTime: Number(scheduledMs), noRetry() {} };
        await hook.call(ServerClass, cron, lobby(), {});
      });
    },
  };
  return { hooks, timerHooks, lobbyHooks, cronHooks, answerHooks };
}
