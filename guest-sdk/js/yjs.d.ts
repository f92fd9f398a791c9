// Types of `dormouse/yjs` (yjs.js): a Party.Server serving a Yjs document.
import type * as Y from "yjs";
import type { Connection, ConnectionContext, Request, Room, Server } from "./index";

/** The close code for a message that does not decode. */
export const MALFORMED: 4400;

export declare class YServer implements Server {
  constructor(room: Room);
  readonly room: Room;
  /** When updates are folded into a snapshot (then onChange runs). */
  compaction: { afterMs: number; updates: number; bytes: number };
  /** y-partykit's `readOnly`, per connection. */
  isReadOnly(conn: Connection, ctx: ConnectionContext): boolean;
  /** y-partykit's `load`: the first content of an empty document. */
  onLoad(): Y.Doc | undefined;
  /** y-partykit's `callback.handler`: the document after each compaction. */
  onChange(doc: Y.Doc): void;
  /** A y-partykit custom message (`__YPS:` text), without its prefix. */
  onCustomMessage(conn: Connection, message: string): void;
  sendCustom(conn: Connection, message: string): void;
  broadcastCustom(message: string, without?: string[]): void;
  onConnect(conn: Connection, ctx: ConnectionContext): void;
  onMessage(message: string | ArrayBuffer, conn: Connection): void;
  onClose(conn: Connection): void;
  onAlarm(): void;
  onRequest(request: Request): Response;
}
