// Types of the JavaScript SDK: PartyKit's `partykit/server` names, so a
// server moves with one import changed:
//   import type * as Party from "dormouse";   // was: "partykit/server"
// What differs from PartyKit is in README.md's table.

/** A message as a hook receives it, and as `send` takes it. */
export type WSMessage = string | ArrayBuffer | ArrayBufferView;

/** Options a server may declare; Dormouse always hibernates. */
export interface ServerOptions {
  hibernate?: boolean;
}

/** An HTTP request as a hook sees it: the Fetch API's, with what code
 *  written for PartyKit (Cloudflare's `Request`) also reads. */
export interface Request extends globalThis.Request {
  json<T = unknown>(): Promise<T>;
  /** Cloudflare's edge data. A self-hosted server has no edge: an empty
   *  object, with `country` from a `cf-ipcountry` header when Cloudflare's
   *  proxy is in front. */
  readonly cf?: { country?: string; [key: string]: unknown };
}

/** PartyKit's connection context: the upgrade request. */
export interface ConnectionContext {
  request: Request;
}

/** A WebSocket connection, held by the host while the room sleeps. */
export interface Connection<TState = unknown> {
  /** The client's `_pk` id (partysocket sends one), or one the host made. */
  readonly id: string;
  /** The upgrade URL (the origin is a placeholder: `http://localhost`). */
  readonly uri: string;
  /** The value set with `setState` (JSON), or null. Survives hibernation. */
  readonly state: TState | null;
  /** Replace the state (16 KiB of JSON at most), or map the old one. */
  setState(state: TState | null | ((prev: TState | null) => TState | null)): TState | null;
  /** Durable Objects' names for the same state. */
  serializeAttachment(value: unknown): void;
  deserializeAttachment(): unknown;
  /** Tags from `getConnectionTags`. */
  readonly tags: string[];
  send(message: WSMessage): void;
  /** Code 1000 or 3000-4999. */
  close(code?: number, reason?: string): void;
}

/** `list` options, as Durable Objects take them. */
export interface StorageListOptions {
  start?: string;
  startAfter?: string;
  end?: string;
  prefix?: string;
  reverse?: boolean;
  limit?: number;
}

/** A value SQL binds or returns: integers as numbers (BigInt past 2^53),
 *  blobs as ArrayBuffer. */
export type SqlStorageValue = ArrayBuffer | string | number | bigint | null;

/** What `sql.exec` returns (Durable Objects' SqlStorageCursor). */
export interface SqlStorageCursor<T extends Record<string, SqlStorageValue>> {
  next(): { done?: false; value: T } | { done: true; value?: never };
  toArray(): T[];
  one(): T;
  raw<U extends SqlStorageValue[]>(): IterableIterator<U> & {
    toArray(): U[];
    one(): U;
    readonly columnNames: string[];
  };
  readonly columnNames: string[];
  readonly rowsRead: number;
  readonly rowsWritten: number;
  [Symbol.iterator](): IterableIterator<T>;
}

/** The room's SQL database (Durable Objects' `ctx.storage.sql`). Its writes
 *  commit with the hook's key-value writes, or not at all. */
export interface SqlStorage {
  exec<T extends Record<string, SqlStorageValue>>(
    query: string,
    ...bindings: (SqlStorageValue | boolean | Uint8Array | undefined)[]
  ): SqlStorageCursor<T>;
  readonly databaseSize: number;
}

/** The room's durable storage (Durable Objects' API). Values: JSON values,
 *  plus Date, Map, Set, BigInt, ArrayBuffer and typed arrays. All writes of
 *  a hook commit together when it ends. */
export interface Storage {
  get<T = unknown>(key: string): Promise<T | undefined>;
  get<T = unknown>(keys: string[]): Promise<Map<string, T>>;
  put<T>(key: string, value: T): Promise<void>;
  put<T>(entries: Record<string, T>): Promise<void>;
  delete(key: string): Promise<boolean>;
  delete(keys: string[]): Promise<number>;
  deleteAll(): Promise<void>;
  list<T = unknown>(options?: StorageListOptions): Promise<Map<string, T>>;
  getAlarm(): Promise<number | null>;
  setAlarm(scheduledTime: number | Date): Promise<void>;
  deleteAlarm(): Promise<void>;
  transaction<T>(closure: (txn: Storage) => Promise<T>): Promise<T>;
  /** Run `closure` now; when it throws, its SQL writes are taken back. */
  transactionSync<T>(closure: () => T): T;
  sync(): Promise<void>;
  readonly sql: SqlStorage;
}

/** Another room, for `fetch` to its `onRequest`. */
export interface Stub {
  fetch(init?: RequestInit): Promise<Response>;
  fetch(path: string, init?: RequestInit): Promise<Response>;
}

export interface Parties {
  [party: string]: { get(id: string): Stub };
}

/** The room a server runs in. */
export interface Room {
  /** The room id from the URL. */
  readonly id: string;
  /** The party (deployed component) the room belongs to. */
  readonly name: string;
  /** The party's vars from `dormouse.toml`. */
  readonly env: Record<string, string>;
  readonly storage: Storage;
  readonly context: { parties: Parties };
  /** PartyKit's older name for `context.parties`. */
  readonly parties: Parties;
  broadcast(message: WSMessage, without?: string[]): void;
  getConnection<TState = unknown>(id: string): Connection<TState> | undefined;
  getConnections<TState = unknown>(tag?: string): Iterable<Connection<TState>>;
}

/** What the static hooks see (PartyKit's "lobby"). */
export interface Lobby {
  id: string;
  env: Record<string, string>;
  parties: Parties;
}

export type Response = globalThis.Response;
export type ExecutionContext = Record<string, never>;

/** PartyKit's other names for the same types. */
export type Party = Room;
export type PartyKitRoom = Room;
export type PartyRequest = Request;
export type PartyStorage = Storage;
export type PartyKitStorage = Storage;
export type PartyConnection<TState = unknown> = Connection<TState>;
export type PartyConnectionContext = ConnectionContext;
export type PartyKitContext = ConnectionContext;
export type PartyStub = Stub;
export type PartyLobby = Lobby;
export type PartyExecutionContext = ExecutionContext;
export type PartyServer = Server;
export type PartyWorker = Worker;
export type PartyCron = Cron;
export type PartyServerOptions = ServerOptions;

/** Any connection's type, whatever state it carries: a server declares
 *  its hooks with its own `Connection<State>` (as PartyKit's examples do),
 *  which `Connection<unknown>` would refuse. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyConnection = Connection<any>;

/** A room's logic: PartyKit's `Party.Server`. Every hook is optional and
 *  may be async. */
export interface Server {
  readonly options?: ServerOptions;
  onStart?(): void | Promise<void>;
  onConnect?(connection: AnyConnection, ctx: ConnectionContext): void | Promise<void>;
  onMessage?(message: string | ArrayBuffer, sender: AnyConnection): void | Promise<void>;
  onClose?(connection: AnyConnection, code: number, reason: string, wasClean: boolean): void | Promise<void>;
  onError?(connection: AnyConnection, error: Error): void | Promise<void>;
  onRequest?(request: Request): Response | Promise<Response>;
  onAlarm?(): void | Promise<void>;
  getConnectionTags?(connection: AnyConnection, ctx: ConnectionContext): string[] | Promise<string[]>;
}

/** The class itself, with PartyKit's static hooks. */
export interface Worker {
  new (room: Room): Server;
  onBeforeConnect?(request: Request, lobby: Lobby, ctx: ExecutionContext): Request | Response | Promise<Request | Response>;
  onBeforeRequest?(request: Request, lobby: Lobby, ctx: ExecutionContext): Request | Response | Promise<Request | Response>;
  /** A cron of the party is due (`[[parties.NAME.crons]]`, or `"crons"` in
   *  `partykit.json`); runs outside any room, as the lobby's hooks do. */
  onCron?(cron: Cron, lobby: Lobby, ctx: ExecutionContext): void | Promise<void>;
}

/** A cron's tick, as `static onCron` gets it. `cron` is the cron's name
 *  too (the host's hook carries the name and the tick, not the schedule);
 *  `noRetry` does nothing, since a failed tick is never retried here. */
export interface Cron {
  name: string;
  cron: string;
  /** The tick, Unix ms (UTC). */
  scheduledTime: number;
  noRetry(): void;
}

/** One end of a `WebSocketPair`. In `onBeforeConnect` a pair refuses with
 *  a close code a browser can read: accept `pair[1]`, close it, and answer
 *  `new Response(null, { status: 101, webSocket: pair[0] })`. The lobby
 *  holds no socket, so an end can only accept and close. */
export interface LobbySocket {
  accept(): void;
  /** 1000, or 3000..=4999; a reason of at most 123 bytes. */
  close(code?: number, reason?: string): void;
}

declare global {
  /** The URL Pattern standard's `URLPattern`: `dormouse build` bundles a
   *  polyfill (`urlpattern-polyfill`) into a room that names it. */
  interface URLPatternInit {
    protocol?: string;
    username?: string;
    password?: string;
    hostname?: string;
    port?: string;
    pathname?: string;
    search?: string;
    hash?: string;
    baseURL?: string;
  }
  interface URLPatternComponentResult {
    input: string;
    groups: Record<string, string | undefined>;
  }
  interface URLPatternResult {
    inputs: (string | URLPatternInit)[];
    protocol: URLPatternComponentResult;
    username: URLPatternComponentResult;
    password: URLPatternComponentResult;
    hostname: URLPatternComponentResult;
    port: URLPatternComponentResult;
    pathname: URLPatternComponentResult;
    search: URLPatternComponentResult;
    hash: URLPatternComponentResult;
  }
  interface URLPattern {
    test(input?: string | URLPatternInit, baseURL?: string): boolean;
    exec(input?: string | URLPatternInit, baseURL?: string): URLPatternResult | null;
    readonly protocol: string;
    readonly username: string;
    readonly password: string;
    readonly hostname: string;
    readonly port: string;
    readonly pathname: string;
    readonly search: string;
    readonly hash: string;
    readonly hasRegExpGroups: boolean;
  }
  // eslint-disable-next-line no-var
  var URLPattern: {
    prototype: URLPattern;
    new (input?: string | URLPatternInit, baseURL?: string, options?: { ignoreCase?: boolean }): URLPattern;
    new (input?: string | URLPatternInit, options?: { ignoreCase?: boolean }): URLPattern;
  };
  /** Cloudflare's `WebSocketPair` (see `LobbySocket`). */
  // eslint-disable-next-line no-var
  var WebSocketPair: { new (): { 0: LobbySocket; 1: LobbySocket } };
  interface ResponseInit {
    webSocket?: LobbySocket | null;
  }
  interface Response {
    readonly webSocket?: LobbySocket | null;
  }
}

/** Wrap a server class as the component's hooks (the build does this). */
export function serve(server: Worker): unknown;
