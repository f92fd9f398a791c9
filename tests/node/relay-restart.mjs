// The official partysocket client against a Dormouse host: two clients relay
// through /parties/main/ROOM, the host restarts, both reconnect and relay again.
// Driven by tests/e2e/partysocket.rs, which restarts the host when it reads
// "relayed 1" and expects "relayed 2" then a clean exit.
import PartySocket from "partysocket";
import WS from "ws";

const [host, room] = process.argv.slice(2);
const options = {
  host,
  room,
  party: "main",
  WebSocket: WS,
  minReconnectionDelay: 100,
  maxReconnectionDelay: 300,
  connectionTimeout: 2000,
};
const a = new PartySocket({ ...options, id: "alice" });
const b = new PartySocket({ ...options, id: "bob" });
const opens = { a: 0, b: 0 };
a.addEventListener("open", () => { opens.a++; step(); });
b.addEventListener("open", () => { opens.b++; step(); });

let round = 0;
function step() {
  // Round 1 once both are open; round 2 once both have reopened after the restart.
  const want = round + 1;
  if (opens.a >= want && opens.b >= want) {
    round = want;
    a.send(`hello ${round}`);
  }
}
b.addEventListener("message", (e) => {
  const n = Number(String(e.data).split(" ")[1]);
  console.log(`relayed ${n}`);
  if (n === 2) {
    a.close();
    b.close();
    process.exit(0);
  }
});
setTimeout(() => { console.log("timeout"); process.exit(1); }, 60000);
