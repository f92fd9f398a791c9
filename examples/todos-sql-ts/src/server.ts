// Todos in SQL, written as a Durable Object that uses `ctx.storage.sql`
// is written, then moved to Dormouse by renaming one object: `this.ctx`
// became `this.room` (the class is a PartyKit server). Every SQL line below
// is Cloudflare's API as Cloudflare documents it.
//
// Protocol: WebSocket text `add <text>` adds a todo, `done <id>` marks it
// done, `clear` deletes the done ones in one transaction; after each, every
// connection gets `{"todos": [...], "open": N}`. HTTP `GET ?status=open`
// answers those todos as JSON; `GET /stats` answers the table's columns, the
// database's size and what the last query read and wrote.
import type * as Party from "dormouse";

type Todo = { id: number; text: string; status: "open" | "done" };

export default class TodosServer implements Party.Server {
  options: Party.ServerOptions = { hibernate: true };
  sql: Party.SqlStorage;

  constructor(readonly room: Party.Room) {
    this.sql = room.storage.sql;
    this.sql.exec(`CREATE TABLE IF NOT EXISTS todos (
      id INTEGER PRIMARY KEY,
      text TEXT NOT NULL,
      status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done'))
    )`);
    this.sql.exec("CREATE INDEX IF NOT EXISTS todos_by_status ON todos (status, id)");
  }

  todos(status?: string): Todo[] {
    return status
      ? this.sql.exec<Todo>("SELECT id, text, status FROM todos WHERE status = ? ORDER BY id", status).toArray()
      : this.sql.exec<Todo>("SELECT id, text, status FROM todos ORDER BY id").toArray();
  }

  state() {
    const { open } = this.sql.exec<{ open: number }>("SELECT count(*) AS open FROM todos WHERE status = 'open'").one();
    return JSON.stringify({ todos: this.todos(), open });
  }

  onConnect(conn: Party.Connection) {
    conn.send(this.state());
  }

  onMessage(message: string | ArrayBuffer, sender: Party.Connection) {
    const text = message as string;
    if (text.startsWith("add ")) {
      this.sql.exec("INSERT INTO todos (text) VALUES (?)", text.slice(4));
    } else if (text.startsWith("done ")) {
      const id = Number(text.slice(5));
      if (!Number.isSafeInteger(id)) {
        sender.send(JSON.stringify({ error: `${text.slice(5)} is not an id` }));
        return;
      }
      this.sql.exec("UPDATE todos SET status = 'done' WHERE id = ?", id);
    } else if (text === "clear") {
      // All or nothing: a throw inside takes back the deletes.
      this.room.storage.transactionSync(() => {
        const ids = [...this.sql.exec<{ id: number }>("SELECT id FROM todos WHERE status = 'done'")].map((r) => r.id);
        for (const id of ids) this.sql.exec("DELETE FROM todos WHERE id = ?", id);
        if (this.sql.exec("SELECT 1 FROM todos WHERE status = 'done'").toArray().length) throw new Error("not cleared");
      });
    } else {
      sender.send(JSON.stringify({ error: "say `add TEXT`, `done ID` or `clear`" }));
      return;
    }
    this.room.broadcast(this.state());
  }

  onRequest(request: Party.Request) {
    const url = new URL(request.url);
    if (url.pathname.endsWith("/stats")) {
      const cursor = this.sql.exec("SELECT * FROM todos WHERE status = ?", "open");
      const rows = cursor.raw().toArray();
      return Response.json({
        columns: cursor.columnNames,
        rows: rows.length,
        rowsRead: cursor.rowsRead,
        rowsWritten: this.sql.exec("UPDATE todos SET text = text WHERE status = 'open'").rowsWritten,
        databaseSize: this.sql.databaseSize,
      });
    }
    return Response.json(this.todos(url.searchParams.get("status") ?? undefined));
  }
}
