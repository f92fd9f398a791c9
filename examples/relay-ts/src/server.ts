// Relay, in TypeScript: every message goes to every other connection, and
// nothing is kept. The twin of examples/relay, byte for byte on the wire.
//
// Run with: cargo run -p dormouse -- dev examples/relay-ts
import type * as Party from "dormouse";

export default class Relay implements Party.Server {
  constructor(readonly room: Party.Room) {}

  onMessage(message: string | ArrayBuffer, sender: Party.Connection) {
    this.room.broadcast(message, [sender.id]);
  }
}
