// Real clients that are still sending when the host closes: each must see
// the host's close code and reason, never 1006. Driven by
// tests/e2e/close_codes.rs; prints one line per case.
import PartySocket from "partysocket";
import WS from "ws";

const [host, tries] = [process.argv[2], Number(process.argv[3])];
const big = "x".repeat(2 << 20); // over the room's 1 MiB message limit

function once(url) {
  return new Promise((resolve) => {
    const ws = new WS(url);
    ws.on("open", () => ws.send(big));
    ws.on("close", (code, reason) => resolve(`${code} ${reason}`));
    ws.on("error", () => {});
  });
}

const seen = new Map();
for (let i = 0; i < tries; i++) {
  const got = await once(`ws://${host}/parties/main/big-${i}`);
  seen.set(got, (seen.get(got) ?? 0) + 1);
}
for (const [got, n] of seen) console.log(`ws ${n}/${tries}: ${got}`);

const ps = new PartySocket({ host, room: "big-ps", party: "main", WebSocket: WS, maxRetries: 0 });
ps.addEventListener("open", () => ps.send(big));
ps.addEventListener("close", (e) => {
  console.log(`partysocket ${e.code} ${e.reason}`);
  ps.close();
  process.exit(0);
});
