// Counter, in TypeScript: one number in storage key `count` that survives
// hibernation and restarts. The twin of examples/counter: on connect the
// count is sent; `inc` adds 1 and broadcasts the new count; HTTP GET returns
// it, POST adds 1. The stored value (JSON `5`) is the Rust room's too.
//
// Run with: cargo run -p dormouse -- dev examples/counter-ts
import type * as Party from "dormouse";

const text = (status: number, body: string) =>
  new Response(body, { status, headers: { "content-type": "text/plain; charset=utf-8" } });

export default class Counter implements Party.Server {
  constructor(readonly room: Party.Room) {}

  async count(): Promise<number> {
    return (await this.room.storage.get<number>("count")) ?? 0;
  }

  /** The write commits when the hook ends; what the hook sends after it
   *  leaves only once it has (the output gate). */
  async increment(): Promise<number> {
    const next = (await this.count()) + 1;
    await this.room.storage.put("count", next);
    return next;
  }

  async onConnect(conn: Party.Connection) {
    conn.send(String(await this.count()));
  }

  async onMessage(message: string | ArrayBuffer) {
    if (message === "inc") this.room.broadcast(String(await this.increment()));
  }

  async onRequest(request: Party.Request) {
    switch (request.method) {
      case "GET":
        return text(200, String(await this.count()));
      case "POST": {
        const n = await this.increment();
        this.room.broadcast(String(n));
        return text(200, String(n));
      }
      default:
        return text(405, "use GET or POST");
    }
  }
}
