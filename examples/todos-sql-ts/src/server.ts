// Todos in SQL, written as a Durable Object that uses `ctx.storage.sql`
// is written, then moved to Dormouse by renaming one object: `this.ctx`
// became `this.room` (the class is a PartyKit server). Every SQL line below
// is Cloudflare's API as Cloudflare documents it.
//
// Protocol: as examples/todos-sql (its module doc): on connect
// `{"todos", "open"}`; `add <text>` and `done <id>` tell everyone
// `{"todo", "open"}`; `clear` deletes the done ones in one transaction and
// tells `{"cleared", "open"}`; HTTP `GET ?status=open` and `GET ?id=N`.
// `GET /stats` answers the table's columns, the database's size and what a
// query read and wrote.
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

  open(): number {
    return this.sql.exec<{ open: number }>("SELECT count(*) AS open FROM todos WHERE status = 'open'").one().open;
  }

  changed(id: number): string {
    const todo = this.sql.exec<Todo>("SELECT id, text, status FROM todos WHERE id = ?", id).one();
    return JSON.stringify({ todo, open: this.open() });
  }

  onConnect(conn: Party.Connection) {
    conn.send(JSON.stringify({ todos: this.todos(), open: this.open() }));
  }

  onMessage(message: string | ArrayBuffer, sender: Party.Connection) {
    const text = message as string;
    const error = (why: string) => sender.send(JSON.stringify({ error: why }));
    if (text.startsWith("add ")) {
      const { id } = this.sql.exec<{ id: number }>("INSERT INTO todos (text) VALUES (?) RETURNING id", text.slice(4)).one();
      this.room.broadcast(this.changed(id));
    } else if (text.startsWith("done ")) {
      const id = Number(text.slice(5));
      if (!Number.isSafeInteger(id)) return error(`${text.slice(5)} is not an id`);
      if (this.sql.exec("UPDATE todos SET status = 'done' WHERE id = ?", id).rowsWritten === 0) {
        return error(`no todo has id ${id}`);
      }
      this.room.broadcast(this.changed(id));
    } else if (text === "clear") {
      // All or nothing: a throw inside takes back the deletes.
      const cleared = this.room.storage.transactionSync(() => {
        const ids = [...this.sql.exec<{ id: number }>("SELECT id FROM todos WHERE status = 'done'")].map((r) => r.id);
        for (const id of ids) this.sql.exec("DELETE FROM todos WHERE id = ?", id);
        return ids;
      });
      this.room.broadcast(JSON.stringify({ cleared, open: this.open() }));
    } else {
      error("say `add TEXT`, `done ID` or `clear`");
    }
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
    const id = url.searchParams.get("id");
    if (id !== null) {
      const found = this.sql.exec<Todo>("SELECT id, text, status FROM todos WHERE id = ?", Number(id)).toArray();
      return found.length ? Response.json(found[0]) : new Response("no such todo", { status: 404 });
    }
    return Response.json(this.todos(url.searchParams.get("status") ?? undefined));
  }
}
