"""Ticker: a test guest for the Python SDK's timer (tests/e2e/timers.rs).

``tick:MS:K`` sets the timer MS ahead, K times in a row; each ``on_timer``
broadcasts ``tick N``, N counted in the Server's memory (so it restarts at 1
in a new instance), and stores N under ``ticks``. ``starts`` answers how
many times ``on_start`` ran in this room (counted in storage). A cron logs
``cron NAME at TICK`` (outside any room), and raises if its name is ``raise``.
``call-self`` calls this room's own ``on_request`` without waiting
(``room.start``; tests/e2e/calls.rs) and answers ``started``; ``on_answer``
broadcasts ``answer STATUS BODY``.
"""

import dormouse


class Server(dormouse.Server):
    ticks = 0
    every = 0
    left = 0

    def on_start(self):
        self.room.storage.put("starts", (self.room.storage.get("starts") or 0) + 1)

    def on_message(self, message, sender):
        if message == "starts":
            sender.send(str(self.room.storage.get("starts")))
        elif message.startswith("tick:"):
            _, ms, times = message.split(":")
            self.every, self.left = int(ms), int(times)
            self.room.set_timer(self.every)
            sender.send("timer set")
        elif message == "call-self":
            self.room.start("main", self.room.id, "/hello")
            sender.send("started")

    def on_request(self, request):
        return dormouse.Response(f"hello from {self.room.id}")

    def on_answer(self, id, answer):
        if isinstance(answer, dormouse.Response):
            self.room.broadcast(f"answer {answer.status} {answer.body.decode()}")
        else:
            self.room.broadcast(f"failed {answer}")

    def on_timer(self):
        self.ticks += 1
        self.room.storage.put("ticks", self.ticks)
        self.room.broadcast(f"tick {self.ticks}")
        self.left -= 1
        if self.left > 0:
            self.room.set_timer(self.every)

    @staticmethod
    def on_cron(name, scheduled_ms):
        if name == "raise":
            raise ValueError("the cron was asked to raise")
        dormouse.log(f"cron {name} at {scheduled_ms}")
