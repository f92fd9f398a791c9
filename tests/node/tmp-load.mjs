import WebSocket from "ws";
const [addr, party, cmd, n, secs] = process.argv.slice(2);
let acked = 0; const stop = Date.now() + Number(secs) * 1000;
await Promise.all([...Array(Number(n)).keys()].map((i) => new Promise((res) => {
  const ws = new WebSocket(`ws://${addr}/parties/${party}/l-${i}`);
  let first = true;
  ws.on("message", () => { if (!first) acked++; first = false; if (Date.now() > stop) { ws.close(); res(); } else ws.send(cmd); });
  ws.on("error", res);
})));
console.log(party, acked / Number(secs), "per s");
