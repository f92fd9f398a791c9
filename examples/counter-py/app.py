"""Counter, in Python: the twin of examples/counter, byte for byte on the
wire. One number in storage key `count` (JSON `5`, as the Rust room keeps
it): on connect the count is sent; `inc` adds 1 and broadcasts it; HTTP GET
returns it, POST adds 1.

Run with: cargo run -p dormouse -- dev examples/counter-py
"""

import dormouse
from dormouse import Response


class Server(dormouse.Server):
    def count(self) -> int:
        return self.room.storage.get("count") or 0

    def increment(self) -> int:
        # The write commits when the hook returns; what the hook sends after
        # it leaves only once it has (the output gate).
        n = self.count() + 1
        self.room.storage.put("count", n)
        return n

    def on_connect(self, conn, request):
        conn.send(str(self.count()))

    def on_message(self, message, sender):
        if message == "inc":
            self.room.broadcast(str(self.increment()))

    def on_request(self, request):
        if request.method == "GET":
            return Response(str(self.count()))
        if request.method == "POST":
            n = self.increment()
            self.room.broadcast(str(n))
            return Response(str(n))
        return Response("use GET or POST", 405)
