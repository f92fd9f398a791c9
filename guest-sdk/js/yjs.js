// `dormouse/yjs`: Yjs documents that hibernate, for TypeScript rooms. The
// twin of the Rust SDK's `dormouse_sdk::yjs` (guest-sdk/src/yjs): the same
// y-websocket protocol, the same storage layout (a document written by a
// Rust room reads in a TypeScript one, and back), the same awareness in
// connection state. Needs `yjs` in the room's own dependencies.
//
//   import { YServer } from "dormouse/yjs";   // was: onConnect from "y-partykit"
//   export default class Notes extends YServer {
//     isReadOnly(conn, ctx) { return new URL(ctx.request.url).searchParams.get("mode") === "view"; }
//     onChange(doc) { console.log(doc.getText("t").length); }
//   }
//
// y-partykit's `onConnect(conn, room, options)` sets listeners on a socket
// that a hibernating room does not keep, so its options become methods:
// `readOnly` -> isReadOnly(conn, ctx), `callback.handler` -> onChange(doc)
// (after each compaction, which `compaction` debounces), `load` -> onLoad()
// (the first content of an empty document); `persist` is always on.
import * as Y from "yjs";
import * as encoding from "lib0/encoding";
import * as decoding from "lib0/decoding";
import * as storage from "dormouse:room/storage@0.1.0";
import * as connections from "dormouse:room/connections@0.1.0";
import * as alarm from "dormouse:room/alarm@0.1.0";
import * as context from "dormouse:room/context@0.1.0";

const CHUNK = 1 << 20;
/** The most keys one getMany, putMany or deleteMany takes (the host's bound). */
const MAX_MANY = 128;
const READ_ONLY = "y:read-only";
const CUSTOM = "__YPS:";
const BATCH = "y-pk-batch#";
/** The close code for a message that does not decode (as the Rust SDK's). */
export const MALFORMED = 4400;

const hex = (n, width) => n.toString(16).padStart(width, "0");
// An update with nothing in it (no structs, no deletions), as Yjs encodes one.
const EMPTY = new Uint8Array([0, 0]);

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The document in storage; see the Rust SDK's `yjs/document.rs` for the keys. */
class Document {
  constructor() {
    this.nextSeq = undefined;
    this.loaded = undefined;
  }

  load() {
    if (this.loaded === undefined) {
      const small = new Map(storage.getMany(["y:ds", "y:sv"]));
      const updates = [];
      let lastSeq;
      for (const [key, value] of storage.list({ prefix: "y:u:", reverse: false })) {
        const seq = key.slice(4, 20);
        if (seq === lastSeq) updates[updates.length - 1] = concat([updates[updates.length - 1], value]);
        else updates.push(value);
        lastSeq = seq;
      }
      this.loaded = { snapshot: undefined, sv: small.get("y:sv"), ds: small.get("y:ds"), updates };
      this.nextSeq = updates.length;
    }
    return this.loaded;
  }

  loadAll() {
    const loaded = this.load();
    if (loaded.snapshot === undefined) {
      loaded.snapshot = concat(storage.list({ prefix: "y:s:", reverse: false }).map(([, v]) => v));
    }
    return loaded;
  }

  full() {
    const { snapshot, updates } = this.loadAll();
    const parts = [snapshot, ...updates].filter((p) => p.length > 0);
    if (parts.length === 0) return EMPTY;
    return parts.length === 1 ? parts[0] : Y.mergeUpdates(parts);
  }

  /** Validate, store as one put (chunked if large), ask for compaction. */
  append(update, policy) {
    Y.decodeUpdate(update); // throws on what is not a Yjs update
    if (update.length <= 2 && update.every((b) => b === 0)) return false;
    if (this.nextSeq === undefined) {
      const [last] = storage.list({ prefix: "y:u:", limit: 1, reverse: true });
      this.nextSeq = last ? parseInt(last[0].slice(4, 20), 16) + 1 : 0;
    }
    const seq = this.nextSeq;
    for (let part = 0; part * CHUNK < Math.max(update.length, 1); part++) {
      storage.put(`y:u:${hex(seq, 16)}:${hex(part, 4)}`, update.subarray(part * CHUNK, (part + 1) * CHUNK));
    }
    this.nextSeq = seq + 1;
    if (this.loaded) this.loaded.updates.push(update);
    const now = Date.now();
    const due = seq + 1 >= policy.updates || update.length >= policy.bytes ? now : seq === 0 ? now + policy.afterMs : undefined;
    if (due !== undefined) {
      const current = alarm.get();
      if (current === undefined || Number(current) > due) alarm.set(BigInt(due));
    }
    return true;
  }

  stateVector() {
    const { sv } = this.load();
    return sv ?? Y.encodeStateVectorFromUpdate(this.full());
  }

  /** [step 2, updates after it] for a client whose state vector is `sv`. */
  answer(sv) {
    const loaded = this.load();
    const theirs = Y.decodeStateVector(sv);
    if (loaded.sv && loaded.ds && theirs.size > 0) {
      const snap = Y.decodeStateVector(loaded.sv);
      if ([...snap].every(([client, clock]) => (theirs.get(client) ?? 0) >= clock)) {
        // A returning client: the deletions and the updates since.
        return [Y.diffUpdate(Y.mergeUpdates([loaded.ds, ...loaded.updates]), sv), []];
      }
    }
    const all = this.loadAll();
    // A new client: the snapshot as stored, and the updates since. (Not
    // merged, as the Rust SDK does: Y.mergeUpdates of hundreds of updates
    // takes longer in the room's interpreter than the client takes to
    // apply them one by one; measured by `dormouse bench yjs`.)
    if (theirs.size === 0 && all.snapshot.length > 0) return [all.snapshot, all.updates];
    return [Y.diffUpdate(this.full(), sv), []];
  }

  /** The document built in memory (updates that do not integrate are left out). */
  doc() {
    const { snapshot, updates } = this.loadAll();
    const doc = new Y.Doc();
    for (const [i, part] of [snapshot, ...updates].entries()) {
      if (part.length === 0) continue;
      try {
        Y.applyUpdate(doc, part);
      } catch (e) {
        context.log("warn", `yjs: update ${i} left out: ${e}`);
      }
    }
    return doc;
  }

  /** Fold the updates into a new snapshot, in this hook's one commit. */
  compact() {
    if (this.load().updates.length === 0) return undefined;
    const doc = this.doc();
    const snapshot = Y.encodeStateAsUpdate(doc);
    const sv = Y.encodeStateVector(doc);
    // Diffed against its own state vector, an update keeps only deletions.
    const ds = Y.diffUpdate(snapshot, sv);
    // All in this hook's one batch: a throw half way rolls the whole
    // compaction back. The host takes at most MAX_MANY keys a call, and a
    // burst leaves thousands of updates, so they go in pieces.
    const old = [];
    for (const prefix of ["y:s:", "y:u:"]) {
      for (const [k] of storage.list({ prefix, reverse: false })) old.push(k);
    }
    for (let i = 0; i < old.length; i += MAX_MANY) storage.deleteMany(old.slice(i, i + MAX_MANY));
    const entries = [];
    for (let part = 0; part * CHUNK < snapshot.length; part++) {
      entries.push([`y:s:${hex(part, 4)}`, snapshot.subarray(part * CHUNK, (part + 1) * CHUNK)]);
    }
    entries.push(["y:sv", sv], ["y:ds", ds]);
    for (let i = 0; i < entries.length; i += MAX_MANY) storage.putMany(entries.slice(i, i + MAX_MANY));
    this.nextSeq = 0;
    this.loaded = { snapshot, sv, ds, updates: [] };
    return doc;
  }
}

// ---------------------------------------------------------------- messages

function syncMessage(type, bytes) {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, 0);
  encoding.writeVarUint(e, type);
  encoding.writeVarUint8Array(e, bytes);
  return encoding.toUint8Array(e);
}

function awarenessMessage(update) {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, 1);
  encoding.writeVarUint8Array(e, update);
  return encoding.toUint8Array(e);
}

/** An awareness update's entries: Map(client -> {clock, json}). */
function readAwareness(bytes) {
  const d = decoding.createDecoder(bytes);
  const entries = new Map();
  const n = decoding.readVarUint(d);
  for (let i = 0; i < n; i++) {
    const client = decoding.readVarUint(d);
    const clock = decoding.readVarUint(d);
    entries.set(client, { clock, json: decoding.readVarString(d) });
  }
  return entries;
}

function writeAwareness(entries) {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, entries.size);
  for (const [client, { clock, json }] of entries) {
    encoding.writeVarUint(e, client);
    encoding.writeVarUint(e, clock);
    encoding.writeVarString(e, json);
  }
  return encoding.toUint8Array(e);
}

function held(id) {
  try {
    const bytes = connections.getState(id);
    return bytes ? readAwareness(bytes) : new Map();
  } catch {
    return new Map();
  }
}

/** The clients the other open connections speak for: Map(client -> clock). */
function othersClocks(id) {
  const clocks = new Map();
  for (const info of connections.list(undefined)) {
    if (info.id !== id) for (const [client, { clock }] of held(info.id)) clocks.set(client, clock);
  }
  return clocks;
}

const binary = (bytes) => ({ tag: "binary", val: bytes });

// ------------------------------------------------------------------ server

/** A Party.Server that serves a Yjs document; extend it and override what
 *  you need (call `super.onConnect(conn, ctx)` if you override onConnect). */
export class YServer {
  constructor(room) {
    this.room = room;
    this.document = new Document();
    this.batches = new Map();
    /** When updates are folded into a snapshot (then onChange runs). */
    this.compaction = { afterMs: 2000, updates: 500, bytes: 256 << 10 };
  }

  /** Whether the connection may only read (y-partykit's `readOnly`). */
  isReadOnly(_conn, _ctx) {
    return false;
  }

  /** The first content of an empty document: a Y.Doc, or undefined. */
  onLoad() {
    return undefined;
  }

  /** The document after a compaction (y-partykit's `callback.handler`). */
  onChange(_doc) {}

  /** A y-partykit custom message (`__YPS:` text), without its prefix. */
  onCustomMessage(_conn, _message) {}

  sendCustom(conn, message) {
    conn.send(CUSTOM + message);
  }

  broadcastCustom(message, without = []) {
    this.room.broadcast(CUSTOM + message, without);
  }

  onConnect(conn, ctx) {
    // Awareness heartbeats are the host's to keep and relay (they change
    // nothing but clocks): they never wake the room.
    connections.setPresence("yjs-awareness");
    if (this.isReadOnly(conn, ctx)) {
      connections.setTags(conn.id, [...(connections.get(conn.id)?.tags ?? []), READ_ONLY]);
    }
    if (this.document.load().updates.length === 0 && !this.document.load().sv) {
      const initial = this.onLoad();
      if (initial) this.document.append(Y.encodeStateAsUpdate(initial), this.compaction);
    }
    conn.send(syncMessage(0, this.document.stateVector()));
    const all = new Map();
    for (const info of connections.list(undefined)) for (const [k, v] of held(info.id)) all.set(k, v);
    if (all.size > 0) conn.send(awarenessMessage(writeAwareness(all)));
  }

  onMessage(message, conn) {
    if (typeof message === "string") {
      if (message.startsWith(CUSTOM)) this.onCustomMessage(conn, message.slice(CUSTOM.length));
      else if (message.startsWith(BATCH)) this.#batchMarker(conn, message.slice(BATCH.length));
      return;
    }
    const bytes = new Uint8Array(message);
    const batch = this.batches.get(conn.id);
    if (batch) {
      batch.push(bytes);
      return;
    }
    this.#handle(conn, bytes);
  }

  #batchMarker(conn, marker) {
    if (marker.includes('"type":"start"')) this.batches.set(conn.id, []);
    else if (marker.includes('"type":"end"')) {
      const parts = this.batches.get(conn.id);
      this.batches.delete(conn.id);
      if (parts) this.#handle(conn, concat(parts));
      else this.#malformed(conn, "a chunked Yjs message was interrupted; reconnect");
    }
  }

  #malformed(conn, why) {
    context.log("warn", `yjs: closing ${conn.id}: ${why}`);
    conn.close(MALFORMED, why.slice(0, 120));
  }

  #handle(conn, bytes) {
    const d = decoding.createDecoder(bytes);
    let quiet = true;
    try {
      while (decoding.hasContent(d)) {
        const type = decoding.readVarUint(d);
        if (type === 0) {
          const kind = decoding.readVarUint(d);
          const payload = decoding.readVarUint8Array(d);
          quiet = false;
          if (kind === 0) {
            const [step2, updates] = this.document.answer(payload);
            conn.send(syncMessage(1, step2));
            for (const u of updates) conn.send(syncMessage(2, u));
          } else if (kind === 1 || kind === 2) {
            if (connections.get(conn.id)?.tags.includes(READ_ONLY)) continue;
            let stored;
            try {
              stored = this.document.append(payload, this.compaction);
            } catch (e) {
              return this.#malformed(conn, `malformed Yjs update: ${e.message ?? e}`);
            }
            if (stored) this.room.broadcast(syncMessage(2, payload), [conn.id]);
          } else {
            return this.#malformed(conn, `malformed Yjs message: sync type ${kind}`);
          }
        } else if (type === 1) {
          // As the Rust SDK's `awareness::apply`: a connection speaks for
          // the clients it announced first; an echo of another connection's
          // client (the y-websocket provider sends on every state it hears)
          // is neither kept nor relayed; what is kept goes to everyone, the
          // sender too, so a lone client hears its renewal back.
          const entries = readAwareness(decoding.readVarUint8Array(d));
          const mine = held(conn.id);
          let others;
          const relay = new Map();
          for (const [client, entry] of entries) {
            if (!mine.has(client)) {
              others ??= othersClocks(conn.id);
              const clock = others.get(client);
              if (clock !== undefined ? clock >= entry.clock : entry.json === "null") continue;
            }
            if (entry.json === "null") {
              if (mine.delete(client)) quiet = false;
            } else {
              if (mine.get(client)?.json !== entry.json) quiet = false;
              mine.set(client, entry);
            }
            relay.set(client, entry);
          }
          if (relay.size === 0) continue;
          try {
            connections.setState(conn.id, writeAwareness(mine));
          } catch (e) {
            context.log("warn", `yjs: awareness of ${conn.id} not kept: ${e}`);
          }
          this.room.broadcast(awarenessMessage(writeAwareness(relay)));
        } else if (type === 3) {
          const all = new Map();
          for (const info of connections.list(undefined)) for (const [k, v] of held(info.id)) all.set(k, v);
          if (all.size > 0) conn.send(awarenessMessage(writeAwareness(all)));
        } else if (type === 2) {
          decoding.readVarUint(d); // auth: servers send it, clients do not
        } else {
          return;
        }
      }
    } catch (e) {
      return this.#malformed(conn, `malformed Yjs message: ${e.message ?? e}`);
    }
    if (quiet) context.quiet();
  }

  onClose(conn) {
    this.batches.delete(conn.id);
    const gone = held(conn.id);
    if (gone.size === 0) return;
    for (const entry of gone.values()) {
      entry.clock += 1;
      entry.json = "null";
    }
    this.room.broadcast(awarenessMessage(writeAwareness(gone)));
  }

  onAlarm() {
    const doc = this.document.compact();
    if (doc) this.onChange(doc);
  }

  /** GET answers the whole document as one Yjs update. */
  onRequest(request) {
    if (request.method !== "GET") {
      return new Response("a Yjs room answers GET with its document", { status: 405 });
    }
    return new Response(this.document.full(), { headers: { "content-type": "application/octet-stream" } });
  }
}
