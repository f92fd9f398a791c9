// examples/yjs in TypeScript, on `dormouse/yjs`: the same protocol, storage
// layout and behaviour as the Rust room (tests/e2e/yjs.rs runs against
// both). `?mode=view` connects read-only; with a TOKEN var, `?token=` must
// match it or the upgrade gets 401; the custom message `ping` gets `pong`.
//
// Run with: cargo run -p dormouse -- dev examples/yjs-ts --public examples/yjs/public
import type * as Party from "dormouse";
import { YServer } from "dormouse/yjs";
import type * as Y from "yjs";

export default class Notes extends YServer {
  static onBeforeConnect(request: Party.Request, lobby: Party.Lobby) {
    const token = lobby.env.TOKEN;
    if (token && new URL(request.url).searchParams.get("token") !== token) {
      return new Response("a token is needed for this document", { status: 401 });
    }
    return request;
  }

  isReadOnly(_conn: Party.Connection, ctx: Party.ConnectionContext) {
    return new URL(ctx.request.url).searchParams.get("mode") === "view";
  }

  onChange(doc: Y.Doc) {
    console.log(`document compacted: ${doc.getText("t").length} characters of text`);
  }

  onCustomMessage(conn: Party.Connection, message: string) {
    if (message === "ping") this.sendCustom(conn, "pong");
  }
}
