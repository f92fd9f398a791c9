// A test guest for the JavaScript SDK's surface (tests/e2e/typescript.rs).
// Text commands, each answered to the sender:
//   state            -> `state N`, N counting up in the connection's state
//   uri              -> the sender's upgrade URL
//   tagged:TAG       -> how many connections carry TAG (getConnectionTags)
//   alarm:MS         -> `alarm set`; the alarm then broadcasts `alarm fired K`
//   put:KEY:JSON     -> `ok`        get:KEY -> the stored value as JSON
//   throw            -> puts `doomed` = true, sends `never`, then throws
//   hang             -> puts `doomed` = true, then awaits what never settles
//   types            -> stores values JSON cannot say, reads them back
//   fetch:ROOM       -> another room's onRequest, through context.parties
//   visit            -> PartyKit's link-counter: room `all-pages` counts
//                       the visit and, before it answers, tells this room
//                       (which awaits it) the count: `count N` to everyone
//                       here, then `visited N told` to the sender
//   visit-fail       -> puts `before`, awaits a visit, puts `after`, throws
//   cursor:X         -> batched as PartyKit's cursors example does: a
//                       setInterval flushes `batch ID:X,...` every 16 ms to
//                       everyone (a close adds `remove ID`), and clears
//                       itself when a flush finds nothing
//   sleep:MS         -> awaits setTimeout within the hook, then `slept`
//   later:MS         -> an async setTimeout callback that puts `later` and
//                       broadcasts `later N`, N counting in memory
// HTTP: /throw throws; /cf answers request.cf as JSON; a PUT of {"n":N}
// answers 2N; anything else answers what it got.
// The lobby (static hooks, outside the room): ?lobby=refuse refuses the
// connection with 403; ?lobby=mark adds a header the room tags as
// `lobby-marked`; an HTTP request to .../via-lobby is answered by the lobby
// with what the room itself answers to .../from-lobby.
// A cron (static onCron, outside any room) POSTs `NAME@TIME` to room
// `crons`' /record, which keeps the list; GET /records answers it.
// ?tag=T sets the connection's tag; ?throw=1 makes onConnect throw;
// ?visit=1 makes onConnect visit (as the `visit` command does); the
// keys doom-close and doom-alarm, when true, make onClose and onAlarm throw.
import type * as Party from "dormouse";

type State = { n: number };

export default class Surface implements Party.Server {
  pending: string[] = [];
  flusher: ReturnType<typeof setInterval> | undefined;
  laters = 0;

  constructor(readonly room: Party.Room) {}

  batch(update: string) {
    this.pending.push(update);
    this.flusher ??= setInterval(() => this.flush(), 16);
  }

  flush() {
    if (this.pending.length === 0) {
      clearInterval(this.flusher);
      this.flusher = undefined;
      return;
    }
    this.room.broadcast(`batch ${this.pending.join(",")}`);
    this.pending = [];
  }

  static async onBeforeConnect(request: Party.Request, _lobby: Party.Lobby) {
    const lobby = new URL(request.url).searchParams.get("lobby");
    if (lobby === "refuse") return new Response("refused by the lobby", { status: 403 });
    if (lobby === "close" || lobby === "unclosed") {
      // PartyKit's way to refuse with a close code a browser can read.
      const pair = new WebSocketPair();
      pair[1].accept();
      if (lobby === "close") pair[1].close(4001, "closed by the lobby");
      return new Response(null, { status: 101, webSocket: pair[0] });
    }
    if (lobby === "mark") {
      const marked = new Request(request);
      marked.headers.set("x-lobby", "marked");
      return marked;
    }
    return request;
  }

  static async onBeforeRequest(request: Party.Request, lobby: Party.Lobby) {
    if (!new URL(request.url).pathname.endsWith("/via-lobby")) return request;
    // The room itself: from inside it, this would wait on itself.
    const answer = await lobby.parties.main.get(lobby.id).fetch("/from-lobby");
    return new Response(`lobby saw ${answer.status} ${await answer.text()}`);
  }

  static async onCron(cron: Party.Cron, lobby: Party.Lobby) {
    const body = `${cron.name}@${cron.scheduledTime}`;
    const answer = await lobby.parties.main.get("crons").fetch("/record", { method: "POST", body });
    if (!answer.ok) throw new Error(`the record failed: ${answer.status}`);
  }

  getConnectionTags(_conn: Party.Connection, ctx: Party.ConnectionContext) {
    if (ctx.request.headers.get("x-lobby") === "marked") return ["lobby-marked"];
    const tag = new URL(ctx.request.url).searchParams.get("tag");
    return tag ? [tag] : [];
  }

  async onConnect(conn: Party.Connection<State>, ctx: Party.ConnectionContext) {
    const params = new URL(ctx.request.url).searchParams;
    if (params.get("throw")) throw new Error("refused by a throw");
    conn.setState({ n: 0 });
    // As PartyKit's link-counter does, from onConnect.
    if (params.get("visit")) conn.send(`visited ${await (await this.visit()).text()}`);
  }

  async onMessage(message: string | ArrayBuffer, sender: Party.Connection<State>) {
    if (typeof message !== "string") return;
    const [command, arg, ...rest] = message.split(":");
    const storage = this.room.storage;
    switch (command) {
      case "state": {
        const next = sender.setState((prev) => ({ n: (prev?.n ?? 0) + 1 }));
        sender.send(`state ${next?.n}`);
        break;
      }
      case "uri":
        sender.send(sender.uri);
        break;
      // URLPattern (a polyfill the build bundles): match a path, name its parts.
      case "pattern": {
        const match = new URLPattern({ pathname: "/items/:id/:part?" }).exec({ pathname: arg });
        sender.send(match ? JSON.stringify(match.pathname.groups) : "no match");
        break;
      }
      // PartyKit sends what is not a string or bytes as its string.
      case "number":
        // (PartyKit's types take strings and bytes; its runtime, anything.)
        sender.send(Number(arg) as unknown as string);
        this.room.broadcast(true as unknown as string);
        break;
      case "tagged":
        sender.send(String([...this.room.getConnections(arg)].length));
        break;
      case "alarm":
        await storage.setAlarm(Date.now() + Number(arg));
        sender.send(`alarm set ${(await storage.getAlarm()) !== null}`);
        break;
      case "put":
        await storage.put(arg, JSON.parse(rest.join(":")));
        sender.send("ok");
        break;
      case "get":
        sender.send(JSON.stringify((await storage.get(arg)) ?? null));
        break;
      case "hang":
        await storage.put("doomed", true);
        await new Promise(() => {});
        break;
      case "throw":
        await storage.put("doomed", true);
        sender.send("never");
        throw new Error("boom");
      case "types": {
        const value = {
          when: new Date(86_400_000),
          map: new Map([["a", 1]]),
          set: new Set(["x"]),
          big: 2n ** 70n,
          bytes: new Uint8Array([1, 2, 255]),
        };
        await storage.put("typed", value);
        const back = (await storage.get<typeof value>("typed"))!;
        const ok = [
          back.when instanceof Date && back.when.getTime() === 86_400_000,
          back.map instanceof Map && back.map.get("a") === 1,
          back.set instanceof Set && back.set.has("x"),
          back.big === 2n ** 70n,
          back.bytes instanceof Uint8Array && back.bytes.join() === "1,2,255",
        ];
        const many = await storage.get(["typed", "missing"]);
        const listed = await storage.list({ prefix: "typ" });
        sender.send(`types ${ok.join(",")} ${many.size} ${[...listed.keys()].join()}`);
        break;
      }
      case "cursor":
        this.batch(`${sender.id}:${arg}`);
        break;
      case "sleep":
        await new Promise((resolve) => setTimeout(resolve, Number(arg)));
        sender.send("slept");
        break;
      case "later":
        setTimeout(async () => {
          await storage.put("later", true);
          this.room.broadcast(`later ${++this.laters}`);
        }, Number(arg));
        break;
      case "visit": {
        const res = await this.visit();
        sender.send(`visited ${await res.text()}`);
        break;
      }
      case "visit-fail":
        await storage.put("before", true);
        await this.visit();
        await storage.put("after", true);
        throw new Error("failed after the answer");
      case "fetch": {
        const res = await this.room.context.parties.main.get(arg).fetch("/hello", { method: "POST", body: "ping" });
        sender.send(`fetched ${res.status} ${await res.text()}`);
        break;
      }
    }
  }

  visit() {
    const from = encodeURIComponent(this.room.id);
    return this.room.context.parties.main.get("all-pages").fetch(`/visit?from=${from}`, { method: "POST" });
  }

  async onClose(conn: Party.Connection, code: number) {
    this.room.broadcast(`closed ${conn.id} ${code}`);
    this.batch(`remove ${conn.id}`);
    if (await this.room.storage.get("doom-close")) throw new Error("onClose throws");
  }

  async onAlarm() {
    if (await this.room.storage.get("doom-alarm")) throw new Error("onAlarm throws");
    const fired = ((await this.room.storage.get<number>("fired")) ?? 0) + 1;
    await this.room.storage.put("fired", fired);
    this.room.broadcast(`alarm fired ${fired}`);
  }

  async onRequest(request: Party.Request) {
    const url = new URL(request.url);
    if (url.pathname.endsWith("/throw")) throw new Error("no answer");
    if (url.pathname.endsWith("/cf")) return new Response(JSON.stringify(request.cf));
    if (url.pathname.endsWith("/visit")) {
      const visits = ((await this.room.storage.get<number>("visits")) ?? 0) + 1;
      await this.room.storage.put("visits", visits);
      // The page that asked waits on this very call.
      const page = this.room.context.parties.main.get(url.searchParams.get("from")!);
      const told = await page.fetch("/count", { method: "POST", body: String(visits) });
      return new Response(`${visits} ${await told.text()}`);
    }
    if (url.pathname.endsWith("/count")) {
      const count = Number(await request.text());
      await this.room.storage.put("count", count);
      this.room.broadcast(`count ${count}`);
      return new Response("told");
    }
    if (url.pathname.endsWith("/record")) {
      const list = [...((await this.room.storage.get<string[]>("record")) ?? []), await request.text()];
      await this.room.storage.put("record", list);
      return new Response(String(list.length));
    }
    if (url.pathname.endsWith("/records")) {
      return new Response(((await this.room.storage.get<string[]>("record")) ?? []).join(","));
    }
    if (request.method === "PUT") {
      const { n } = await request.json<{ n: number }>();
      return new Response(String(n * 2));
    }
    const body = await request.text();
    return new Response(JSON.stringify({ method: request.method, path: url.pathname, body, room: this.room.id }), {
      status: 201,
      headers: { "content-type": "application/json", "x-room": this.room.id },
    });
  }
}
