// Chat, in TypeScript: the twin of examples/chat, byte for byte on the wire.
// Each message is stored under its own key (`msg:<zero-padded sequence>`),
// the last 50 go to a new connection, and each person's name lives in their
// connection's state, so it survives hibernation. examples/chat/public is
// the page (`--public examples/chat/public`).
//
// Run with: cargo run -p dormouse -- dev examples/chat-ts --public examples/chat/public
import type * as Party from "dormouse";

const HISTORY = 50;
const MAX_TEXT = 2000;
const MAX_NAME = 40;

type Stored = { seq: number; name: string; text: string };
type Person = { name: string };

const key = (seq: number) => `msg:${String(seq).padStart(12, "0")}`;

/** Trimmed, then at most `max` characters (code points, as Rust counts). */
const clip = (s: string, max: number) => Array.from(s.trim()).slice(0, max).join("");

/** A stored message as the Rust room sends it in a history: its keys in
 *  order (serde_json's maps are sorted). */
const sorted = (m: Stored) => ({ name: m.name, seq: m.seq, text: m.text });

export default class Chat implements Party.Server {
  options = { hibernate: true };

  constructor(readonly room: Party.Room) {}

  /** One past the newest stored key: reading one key, not keeping a counter
   *  in memory, is what lets the room hibernate. */
  async nextSeq(): Promise<number> {
    const newest = await this.room.storage.list<Stored>({ prefix: "msg:", reverse: true, limit: 1 });
    const [k] = newest.keys();
    return k === undefined ? 1 : Number(k.slice(4)) + 1;
  }

  async onConnect(conn: Party.Connection<Person>, ctx: Party.ConnectionContext) {
    const asked = new URL(ctx.request.url).searchParams.get("name");
    const name = clip(asked ?? "", MAX_NAME) || "anonymous";
    conn.setState({ name });
    const recent = await this.room.storage.list<Stored>({ prefix: "msg:", reverse: true, limit: HISTORY });
    const messages = [...recent.values()].reverse().map(sorted);
    conn.send(JSON.stringify({ messages, type: "history" }));
  }

  async onMessage(message: string | ArrayBuffer, sender: Party.Connection<Person>) {
    if (typeof message !== "string") return;
    if (message.startsWith("/name ")) {
      const name = clip(message.slice(6), MAX_NAME);
      if (name) sender.setState({ name });
      return;
    }
    const text = clip(message, MAX_TEXT);
    if (!text) return;
    const stored: Stored = { seq: await this.nextSeq(), name: sender.state?.name ?? "anonymous", text };
    await this.room.storage.put(key(stored.seq), stored);
    this.room.broadcast(JSON.stringify(stored));
  }

  async onRequest(request: Party.Request) {
    // GET returns the history as JSON, for scripts and tests.
    if (request.method !== "GET") {
      return new Response("use GET", { status: 405, headers: { "content-type": "text/plain; charset=utf-8" } });
    }
    const all = await this.room.storage.list<Stored>({ prefix: "msg:" });
    return new Response(JSON.stringify([...all.values()].map(sorted)), {
      headers: { "content-type": "application/json" },
    });
  }
}
