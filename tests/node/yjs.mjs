// Yjs's own clients against a Dormouse Yjs room (examples/yjs): y-partykit's
// YPartyKitProvider at /parties/main/ROOM and y-websocket's WebsocketProvider
// at /party/ROOM, unchanged. Driven by tests/e2e/yjs.rs:
//   node yjs.mjs SCENARIO HOST ROOM [ARGS]
// Each scenario prints what it saw, one line at a time, and exits 0 when
// every check held (a failed check throws, and the exit code is 1).
import * as Y from "yjs";
import { WebsocketProvider } from "y-websocket";
import YPartyKitProvider from "y-partykit/provider";
import WS from "ws";

const [scenario, host, room, ...args] = process.argv.slice(2);
const say = (line) => console.log(line);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// Wait until `check()` is true, or fail naming `what`.
async function until(what, check, ms = 10000) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const options = { WebSocketPolyfill: WS, disableBc: true, maxBackoffTime: 300 };

/// A y-partykit client (`kind` "pk") or a y-websocket one ("ws").
function client(kind, params = {}) {
  const doc = new Y.Doc();
  const provider =
    kind === "pk"
      ? new YPartyKitProvider(host, room, doc, { ...options, params })
      : new WebsocketProvider(`ws://${host}/party`, room, doc, { ...options, params });
  return { doc, provider };
}

async function synced(c, what = "sync") {
  await until(what, () => c.provider.synced);
}

const json = (c) =>
  JSON.stringify({
    text: c.doc.getText("t").toString(),
    map: c.doc.getMap("m").toJSON(),
    array: c.doc.getArray("a").toJSON(),
  });

function close(...clients) {
  for (const c of clients) c.provider.destroy();
}

function equal(a, b, what) {
  if (a !== b) throw new Error(`${what}: ${a} != ${b}`);
}

const scenarios = {
  // Text, map and array edits from both providers converge; a late joiner
  // gets all of it; edits made after the room hibernated (the test waits
  // out its idle timeout between phases) converge too.
  async converge() {
    const a = client("pk");
    const b = client("ws");
    await synced(a);
    await synced(b);
    a.doc.getText("t").insert(0, "hello");
    b.doc.getMap("m").set("from", "websocket");
    a.doc.getArray("a").push([1, 2]);
    b.doc.getArray("a").push([3]);
    await until("first edits converge", () => json(a) === json(b) && a.doc.getArray("a").length === 3);
    say(`converged ${json(a)}`);
    const late = client("ws");
    await synced(late);
    await until("late joiner has everything", () => json(late) === json(a));
    say("late joiner has everything");
    close(late);
    await sleep(Number(args[0] ?? 0)); // the room hibernates here
    say("slept");
    b.doc.getText("t").insert(5, " world");
    a.doc.getMap("m").set("after", "sleep");
    await until("edits after hibernation converge", () =>
      json(a) === json(b) && a.doc.getText("t").toString() === "hello world" && b.doc.getMap("m").get("after") === "sleep");
    say(`converged after sleep ${json(b)}`);
    close(a, b);
  },

  // Write N items through one client; each is acknowledged once another
  // client has it (relayed after the room's commit). Prints "acked N".
  async write() {
    const n = Number(args[0]);
    const a = client("pk");
    const b = client("ws");
    await synced(a);
    await synced(b);
    const start = a.doc.getArray("a").length;
    for (let i = 0; i < n; i++) {
      a.doc.getArray("a").push([`w${start + i}`]);
      a.doc.getText("t").insert(a.doc.getText("t").length, "x");
    }
    await until("all relayed", () => b.doc.getArray("a").length === start + n);
    say(`acked ${start + n}`);
    close(a, b);
  },

  // A fresh client's view of the document, as one line of JSON.
  async read() {
    const c = client(args[0] ?? "ws");
    await synced(c);
    say(`doc ${json(c)}`);
    close(c);
  },

  // One client pushes numbered items as fast as it can; another prints the
  // highest one it has seen relayed ("seen N"), until the host is killed.
  async hammer() {
    const a = client("pk");
    const b = client("ws");
    await synced(a);
    await synced(b);
    let seen = -1;
    b.doc.getArray("a").observe(() => {
      const arr = b.doc.getArray("a");
      const last = arr.length - 1;
      if (last > seen) {
        seen = last;
        say(`seen ${seen}`);
      }
    });
    let i = 0;
    for (;;) {
      a.doc.getArray("a").push([i++]);
      await sleep(2);
    }
  },

  // Presence: join, update and leave are seen by the others, and states
  // survive the room's hibernation (the test sleeps past its idle timeout).
  async awareness() {
    const a = client("pk");
    const b = client("ws");
    await synced(a);
    await synced(b);
    a.provider.awareness.setLocalStateField("user", { name: "ada" });
    b.provider.awareness.setLocalStateField("user", { name: "bob" });
    const names = (c) =>
      [...c.provider.awareness.getStates().values()].map((s) => s.user?.name).filter(Boolean).sort().join(",");
    await until("a and b see each other", () => names(a) === "ada,bob" && names(b) === "ada,bob");
    say("joined ada,bob");
    await sleep(Number(args[0] ?? 0)); // the room hibernates here
    const c = client("pk");
    await synced(c);
    c.provider.awareness.setLocalStateField("user", { name: "cy" });
    await until("a newcomer after hibernation sees everyone", () => names(c) === "ada,bob,cy");
    say("newcomer sees ada,bob,cy");
    a.provider.awareness.setLocalStateField("user", { name: "ada lovelace" });
    await until("an update is seen", () => names(b) === "ada lovelace,bob,cy" && names(c) === "ada lovelace,bob,cy");
    say("update seen");
    await sleep(Number(args[0] ?? 0)); // and again
    // Only a's client may be announced gone: the others' providers relayed
    // the states they heard, and the room must not take those as a's.
    const removed = new Set();
    for (const x of [b, c]) x.provider.awareness.on("change", ({ removed: r }) => r.forEach((id) => removed.add(id)));
    // Gone without a word (a crash, a lost network): a graceful provider
    // sends its own removal, so only the room can tell the others here.
    a.provider.shouldConnect = false;
    a.provider.ws.terminate();
    await until("a leave is seen", () => names(b) === "bob,cy" && names(c) === "bob,cy");
    say("leave seen");
    await sleep(300);
    equal([...removed].join(","), String(a.doc.clientID), "clients announced gone");
    say("no one else left");
    close(b, c);
  },

  // A document larger than a client may send in one message (1 MiB by
  // default), typed in 100 KB pieces: a new client still syncs, though the
  // room's answer is one message of all of it.
  async large() {
    const a = client("ws");
    await synced(a);
    for (let i = 0; i < 12; i++) a.doc.getText("t").insert(0, "y".repeat(100_000));
    const b = client("ws");
    await until("a new client has the large document", () => b.provider.synced && b.doc.getText("t").length === 1_200_000, 20000);
    say("synced 1200000");
    close(a, b);
  },

  // A lone client hears its own presence back, as from the y-websocket
  // server: its provider closes a socket that received nothing for 30 s,
  // and a lone editor's only traffic may be its presence renewal.
  async lone() {
    const a = client("ws");
    await synced(a);
    await sleep(200);
    const before = a.provider.wsLastMessageReceived;
    a.provider.awareness.setLocalStateField("user", { name: "ada" });
    await until("its presence back", () => a.provider.wsLastMessageReceived > before, 3000);
    say("echoed");
    close(a);
  },

  // Presence renewed with an unchanged state every 100 ms for ARG ms (the
  // clients' heartbeat, sped up). Prints "ready" once the state is set.
  async heartbeat() {
    const a = client("pk");
    await synced(a);
    a.provider.awareness.setLocalStateField("user", { name: "ada" });
    say("ready");
    const end = Date.now() + Number(args[0]);
    while (Date.now() < end) {
      await sleep(100);
      a.provider.awareness.setLocalState(a.provider.awareness.getLocalState());
    }
    close(a);
  },

  // A client edits while disconnected; its edits merge when it reconnects,
  // and it gets a deletion made meanwhile, after the room compacted it into
  // its snapshot (the test gives the wait, past the compaction's delay).
  async offline() {
    const a = client("pk");
    const b = client("ws");
    await synced(a);
    await synced(b);
    a.doc.getText("t").insert(0, "hello world");
    await until("b has the text", () => b.doc.getText("t").toString() === "hello world");
    b.provider.disconnect();
    a.doc.getText("t").delete(0, 6);
    b.doc.getText("t").insert(0, "offline ");
    await sleep(Number(args[0] ?? 0));
    b.provider.connect();
    await until("offline edits merge", () => {
      const t = a.doc.getText("t").toString();
      return t === b.doc.getText("t").toString() && t.includes("offline ") && !t.includes("hello");
    });
    say(`merged ${a.doc.getText("t").toString()}`);
    close(a, b);
  },

  // A read-only client gets the document and others' edits; its own edits
  // reach nobody.
  async readonly() {
    const a = client("pk");
    const viewer = client("pk", { mode: "view" });
    await synced(a);
    await synced(viewer);
    a.doc.getText("t").insert(0, "by writer");
    await until("viewer sees the writer", () => viewer.doc.getText("t").toString() === "by writer");
    viewer.doc.getText("t").insert(0, "by viewer ");
    await sleep(300);
    equal(a.doc.getText("t").toString(), "by writer", "the writer's text");
    const fresh = client("ws");
    await synced(fresh);
    equal(fresh.doc.getText("t").toString(), "by writer", "a fresh client's text");
    say("viewer kept out");
    close(a, viewer, fresh);
  },

  // A malformed update closes only its sender, with a reason; the document
  // and the other client are unharmed. y-partykit's custom message answers.
  async malformed() {
    const a = client("pk");
    await synced(a);
    a.doc.getText("t").insert(0, "safe");
    const bad = new WS(`ws://${host}/parties/main/${room}`);
    await new Promise((r, j) => { bad.on("open", r); bad.on("error", j); });
    const pong = new Promise((r) => bad.on("message", (m, binary) => { if (!binary) r(m.toString()); }));
    bad.send("__YPS:ping");
    equal(await pong, "__YPS:pong", "custom message answer");
    say("custom pong");
    const closed = new Promise((r) => bad.on("close", (code, reason) => r(`${code} ${reason}`)));
    // messageSync, messageYjsUpdate, a length of 5, then bytes that are no update.
    bad.send(Buffer.from([0, 2, 5, 0xff, 0xff, 0xff, 0xff, 0xff]));
    const why = await closed;
    if (!why.startsWith("4400 malformed Yjs")) throw new Error(`closed with ${why}`);
    say(`closed ${why.split(":")[0]}`);
    a.doc.getText("t").insert(4, "!");
    const fresh = client("ws");
    await synced(fresh);
    await until("document unharmed", () => fresh.doc.getText("t").toString() === "safe!");
    equal(a.provider.wsconnected, true, "the other client's socket");
    say("document unharmed");
    close(a, fresh);
  },
};

const run = scenarios[scenario];
if (!run) throw new Error(`no scenario ${scenario}`);
await run();
process.exit(0);
