// Yjs's own Node clients, the shapes users have, for `dormouse bench yjs`:
//   node clients.mjs KIND BASE WORKLOAD [ARGS]
// KIND is the client: `y-websocket` (y-websocket's WebsocketProvider, for
// Dormouse and the reference server) or `hocuspocus` (HocuspocusProvider,
// Hocuspocus's own). BASE is the URL a room name is appended to.
// Workloads (each prints `figure NAME VALUE UNIT` lines, then exits 0):
//   docs N         N documents of ~10 KB typed in 100 inserts, two clients
//                  each with presence; prints "ready", then holds them open
//                  (presence renewing itself) until stdin closes, and
//                  prints how often a client reconnected meanwhile
//   typing ROOM N  one client types N single-character inserts, each its
//                  own update; the time until a second client has them all;
//                  then five fresh clients while the writer stays ("warm")
//   sync ROOM N    five fresh clients, one after another, to a document no
//                  one holds open ("cold", after a restart): the time until
//                  each is synced and holds all N characters (median, max)
//   floor N        the clients' own share of A to B, with no server and no
//                  socket: in one fresh process (as each workload above
//                  runs), A types N inserts and B applies each as the
//                  y-websocket sync message it would receive. No server
//                  can make A to B faster than this.
import * as Y from "yjs";
import * as syncProtocol from "y-protocols/sync";
import * as encoding from "lib0/encoding";
import * as decoding from "lib0/decoding";
import { WebsocketProvider } from "y-websocket";
import { HocuspocusProvider } from "@hocuspocus/provider";
import WS from "ws";

const [kind, base, workload, ...args] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const figure = (name, value, unit) => console.log(`figure ${name} ${value} ${unit}`);

async function until(what, check, ms = 60_000) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

function client(room) {
  const doc = new Y.Doc();
  if (kind === "hocuspocus") {
    const provider = new HocuspocusProvider({ url: base, name: room, document: doc, WebSocketPolyfill: WS });
    return { doc, provider, synced: () => provider.isSynced, awareness: provider.awareness };
  }
  const provider = new WebsocketProvider(base, room, doc, { WebSocketPolyfill: WS, disableBc: true });
  return { doc, provider, synced: () => provider.synced, awareness: provider.awareness };
}

const text = (c) => c.doc.getText("t");

const workloads = {
  async docs() {
    const n = Number(args[0]);
    const clients = [];
    let reconnects = 0;
    let counting = false;
    const started = Date.now();
    // 50 documents at a time, as users arriving.
    for (let at = 0; at < n; at += 50) {
      await Promise.all(
        Array.from({ length: Math.min(50, n - at) }, async (_, k) => {
          const room = `doc-${at + k}`;
          const a = client(room);
          const b = client(room);
          for (const c of [a, b]) {
            c.provider.on("status", ({ status }) => {
              if (counting && status === "connecting") reconnects++;
            });
            clients.push(c);
          }
          await until("sync", () => a.synced() && b.synced());
          a.awareness.setLocalStateField("user", { name: `a${at + k}` });
          b.awareness.setLocalStateField("user", { name: `b${at + k}` });
          for (let i = 0; i < 100; i++) text(a).insert(text(a).length, "x".repeat(100));
          await until("the peer has the document", () => text(b).length === 10_000);
        }),
      );
    }
    figure("docs_ready", Date.now() - started, "ms");
    counting = true;
    console.log("ready");
    await new Promise((resolve) => {
      process.stdin.on("end", resolve);
      process.stdin.on("close", resolve);
      process.stdin.resume();
    });
    figure("docs_reconnects", reconnects, "");
    for (const c of clients) c.provider.destroy();
  },

  async typing() {
    const [room, n] = [args[0], Number(args[1])];
    const a = client(room);
    const b = client(room);
    await until("sync", () => a.synced() && b.synced());
    const started = performance.now();
    for (let i = 0; i < n; i++) {
      text(a).insert(text(a).length, "x");
      // Let the socket write now and then, as keystrokes would.
      if (i % 500 === 499) await new Promise((r) => setImmediate(r));
    }
    await until("the peer has every insert", () => text(b).length === n);
    figure(`typing_${n}_until_peer_has_all`, (performance.now() - started).toFixed(1), "ms");
    b.provider.destroy();
    // New clients while the writer is still there (a server that keeps
    // documents only in memory forgets one whose last client left).
    await newClients(room, n, "warm");
    a.provider.destroy();
  },

  async sync() {
    await newClients(args[0], Number(args[1]), "cold");
  },

  async floor() {
    const n = Number(args[0]);
    const a = new Y.Doc();
    const b = new Y.Doc();
    const messages = [];
    a.on("update", (update) => {
      const e = encoding.createEncoder();
      encoding.writeVarUint(e, 0); // y-websocket's sync message
      syncProtocol.writeUpdate(e, update);
      messages.push(encoding.toUint8Array(e));
    });
    const started = performance.now();
    for (let i = 0; i < n; i++) a.getText("t").insert(a.getText("t").length, "x");
    for (const m of messages) {
      const d = decoding.createDecoder(m);
      decoding.readVarUint(d);
      syncProtocol.readSyncMessage(d, encoding.createEncoder(), b, null);
    }
    if (b.getText("t").length !== n) throw new Error("B is missing inserts");
    figure(`floor_${n}_a_to_b`, (performance.now() - started).toFixed(1), "ms");
  },
};

/** Five fresh clients, one after another: until each holds all `n`. */
async function newClients(room, n, label) {
  const times = [];
  for (let i = 0; i < 5; i++) {
    const started = performance.now();
    const c = client(room);
    await until("synced with everything", () => c.synced() && text(c).length === n);
    times.push(performance.now() - started);
    c.provider.destroy();
  }
  times.sort((x, y) => x - y);
  figure(`new_client_sync_${label}_p50`, times[2].toFixed(1), "ms");
  figure(`new_client_sync_${label}_max`, times[4].toFixed(1), "ms");
}

if (!workloads[workload]) {
  console.error(`clients.mjs: no such workload ${workload}`);
  process.exit(2);
}
await workloads[workload]();
process.exit(0);
