"""Todos in SQL, in Python: the twin of examples/todos-sql, the same
protocol. WebSocket text `add <text>` adds a todo, `done <id>` marks it
done, `clear` deletes the done ones in one transaction; after each, every
connection gets {"todos": [...], "open": N}, as a new connection does. HTTP
GET ?status=open (or done) answers those todos as a JSON array; POST with a
text body adds one and answers its id.

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

    def state(self) -> str:
        open_ = self.sql.exec("SELECT count(*) AS open FROM todos WHERE status = 'open'").one()
        return json.dumps({"todos": self.todos(), "open": open_["open"]})

    def add(self, text: str) -> int:
        return self.sql.exec("INSERT INTO todos (text) VALUES (?) RETURNING id", text).one()["id"]

    def on_connect(self, conn, request):
        conn.send(self.state())

    def on_message(self, message, sender):
        if message.startswith("add "):
            self.add(message[4:])
        elif message.startswith("done "):
            try:
                todo = int(message[5:])
            except ValueError:
                sender.send(json.dumps({"error": f"{message[5:]} is not an id"}))
                return
            self.sql.exec("UPDATE todos SET status = 'done' WHERE id = ?", todo)
        elif message == "clear":
            with self.sql.transaction():
                for row in self.sql.exec("SELECT id FROM todos WHERE status = 'done'").to_list():
                    self.sql.exec("DELETE FROM todos WHERE id = ?", row["id"])
        else:
            sender.send(json.dumps({"error": "say `add TEXT`, `done ID` or `clear`"}))
            return
        self.room.broadcast(self.state())

    def on_request(self, request):
        if request.method == "GET":
            return Response(json.dumps(self.todos(request.query.get("status"))))
        if request.method == "POST":
            try:
                todo = self.add(request.text())
            except RoomError as e:
                return Response(str(e), 400)
            self.room.broadcast(self.state())
            return Response(str(todo))
        return Response("use GET or POST", 405)
