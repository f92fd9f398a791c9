// A measurement, run by hand (not a test): how long PartyKit's
// link-counter cycle takes on a running server with tests/guests/surface-ts
// as party `main` (page -> counter -> the same page -> counter -> page).
// Each round, two pages send `visit` at once; the time is until both have
// their answer.
//   target/release/dormouse dev tests/guests/surface-ts --listen 127.0.0.1:2999 &
//   node tests/node/cycle.mjs 127.0.0.1:2999 200
import WebSocket from "ws";

const [addr = "127.0.0.1:1999", rounds = "100"] = process.argv.slice(2);

function open(room) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${addr}/parties/main/${room}`);
    ws.on("open", () => resolve(ws));
    ws.on("error", reject);
  });
}

function visit(ws) {
  return new Promise((resolve) => {
    const on = (m) => {
      if (String(m).startsWith("visited")) {
        ws.off("message", on);
        resolve();
      }
    };
    ws.on("message", on);
    ws.send("visit");
  });
}

const [a, b] = await Promise.all([open("cycle-a"), open("cycle-b")]);
const times = [];
for (let i = 0; i < Number(rounds); i++) {
  const started = performance.now();
  await Promise.all([visit(a), visit(b)]);
  times.push(performance.now() - started);
}
times.sort((x, y) => x - y);
const at = (q) => times[Math.min(times.length - 1, Math.floor(q * times.length))].toFixed(2);
console.log(`${times.length} rounds of two concurrent cycles: p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${at(1)} ms`);
process.exit(0);
