// A PartyKit server as PartyKit's docs write one, moved to Dormouse by its
// import line alone (it was `import type * as Party from "partykit/server"`).
// It follows the partial-state-loading pattern of PartyKit's hibernation
// guide: each item lives under its own key, `item:<id>`, and a message reads
// and writes only the item it names, so waking costs nothing.
//
// Protocol (JSON text): client -> server `{"type":"add","id","text"}` or
// `{"type":"vote","id"}`; server -> others `{"type":"update","item"}`, and
// -> the sender `{"type":"ack","id"}`; on connect `{"type":"sync","items"}`.
import type * as Party from "dormouse";

type Item = { id: string; text: string; votes: number };

export default class ItemsServer implements Party.Server {
  options: Party.ServerOptions = { hibernate: true };

  constructor(readonly room: Party.Room) {}

  static async onBeforeConnect(request: Party.Request) {
    // Refuse clients that name no user, before the room is even involved.
    const user = new URL(request.url).searchParams.get("user");
    if (!user) return new Response("who are you?", { status: 401 });
    return request;
  }

  getConnectionTags(_conn: Party.Connection, ctx: Party.ConnectionContext) {
    const user = new URL(ctx.request.url).searchParams.get("user") ?? "anonymous";
    return [`user:${user}`];
  }

  async onConnect(conn: Party.Connection, _ctx: Party.ConnectionContext) {
    const items = await this.room.storage.list<Item>({ prefix: "item:" });
    conn.send(JSON.stringify({ type: "sync", items: [...items.values()] }));
  }

  async onMessage(message: string | ArrayBuffer, sender: Party.Connection) {
    const { type, id, text } = JSON.parse(message as string);
    const item = (await this.room.storage.get<Item>(`item:${id}`)) ?? { id, text: "", votes: 0 };
    if (type === "add") item.text = text;
    if (type === "vote") item.votes += 1;
    this.room.storage.put(`item:${id}`, item);
    this.room.broadcast(JSON.stringify({ type: "update", item }), [sender.id]);
    sender.send(JSON.stringify({ type: "ack", id }));
  }

  onClose(_conn: Party.Connection) {}

  onError(conn: Party.Connection, error: Error) {
    console.error(`connection ${conn.id} failed: ${error.message}`);
  }

  async onRequest(request: Party.Request) {
    if (request.method === "GET") {
      const items = await this.room.storage.list<Item>({ prefix: "item:" });
      return Response.json([...items.values()]);
    }
    return new Response("Method not allowed", { status: 405 });
  }
}
