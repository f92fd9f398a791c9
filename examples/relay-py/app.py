"""Relay, in Python: every message goes to every other connection, and
nothing is kept. The twin of examples/relay, byte for byte on the wire.

Run with: cargo run -p dormouse -- dev examples/relay-py
"""

import dormouse


class Server(dormouse.Server):
    def on_message(self, message, sender):
        self.room.broadcast(message, [sender.id])
