"""Todos in SQL, in Python: the twin of examples/todos-sql, the same
protocol (see its module doc): on connect {"todos", "open"}; `add <text>`
and `done <id>` tell everyone {"todo", "open"}; `clear` deletes the done
ones in one transaction and tells {"cleared", "open"}; HTTP GET ?status=open
and GET ?id=N; POST adds one.

Run with: cargo run -p dormouse -- dev examples/todos-sql-py
"""

import json

import dormouse
from dormouse import Response, RoomError

SCHEMA = """
CREATE TABLE IF NOT EXISTS todos (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done'))
);
CREATE INDEX IF NOT EXISTS todos_by_status ON todos (status, id);
"""


class Server(dormouse.Server):
    def on_start(self):
        self.sql = self.room.storage.sql
        self.sql.exec(SCHEMA)

    def todos(self, status=None):
        if status:
            return self.sql.exec(
                "SELECT id, text, status FROM todos WHERE status = ? ORDER BY id", status
            ).to_list()
        return self.sql.exec("SELECT id, text, status FROM todos ORDER BY id").to_list()

    def open(self) -> int:
        return self.sql.exec("SELECT count(*) AS open FROM todos WHERE status = 'open'").one()["open"]

    def changed(self, todo: int) -> str:
        row = self.sql.exec("SELECT id, text, status FROM todos WHERE id = ?", todo).one()
        return json.dumps({"todo": row, "open": self.open()})

    def add(self, text: str) -> int:
        return self.sql.exec("INSERT INTO todos (text) VALUES (?) RETURNING id", text).one()["id"]

    def on_connect(self, conn, request):
        conn.send(json.dumps({"todos": self.todos(), "open": self.open()}))

    def on_message(self, message, sender):
        def error(why: str):
            sender.send(json.dumps({"error": why}))

        if message.startswith("add "):
            self.room.broadcast(self.changed(self.add(message[4:])))
        elif message.startswith("done "):
            try:
                todo = int(message[5:])
            except ValueError:
                return error(f"{message[5:]} is not an id")
            if self.sql.exec("UPDATE todos SET status = 'done' WHERE id = ?", todo).rows_written == 0:
                return error(f"no todo has id {todo}")
            self.room.broadcast(self.changed(todo))
        elif message == "clear":
            with self.sql.transaction():
                ids = [row["id"] for row in self.sql.exec("SELECT id FROM todos WHERE status = 'done'")]
                for todo in ids:
                    self.sql.exec("DELETE FROM todos WHERE id = ?", todo)
            self.room.broadcast(json.dumps({"cleared": ids, "open": self.open()}))
        else:
            error("say `add TEXT`, `done ID` or `clear`")

    def on_request(self, request):
        if request.method == "GET":
            todo = request.query.get("id")
            if todo is not None:
                rows = self.sql.exec("SELECT id, text, status FROM todos WHERE id = ?", int(todo)).to_list()
                return Response(json.dumps(rows[0])) if rows else Response("no such todo", 404)
            return Response(json.dumps(self.todos(request.query.get("status"))))
        if request.method == "POST":
            try:
                todo = self.add(request.text())
            except RoomError as e:
                return Response(str(e), 400)
            self.room.broadcast(self.changed(todo))
            return Response(str(todo))
        return Response("use GET or POST", 405)
