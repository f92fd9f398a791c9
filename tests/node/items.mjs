// partysocket against examples/items-ts, a server written as PartyKit's docs
// write one. Driven by tests/e2e/typescript.rs; prints one line per check.
import PartySocket from "partysocket";
import WS from "ws";

const [host, room] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// onBeforeConnect refuses a client that names no user.
const refused = await new Promise((resolve) => {
  const ws = new WS(`ws://${host}/parties/main/${room}`);
  ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
  ws.on("open", () => resolve("opened"));
});
console.log(`refused ${refused}`);

function client(user) {
  const ws = new PartySocket({ host, room, party: "main", query: { user }, WebSocket: WS });
  const inbox = [];
  ws.addEventListener("message", (e) => inbox.push(JSON.parse(e.data)));
  const next = async (type) => {
    for (let i = 0; i < 1000; i++) {
      const at = inbox.findIndex((m) => m.type === type);
      if (at >= 0) return inbox.splice(at, 1)[0];
      await sleep(10);
    }
    throw new Error(`${user} got no ${type}`);
  };
  return { ws, next };
}

const ada = client("ada");
const bob = client("bob");
const synced = await ada.next("sync");
await bob.next("sync");
console.log(`synced ${synced.items.length}`);
await sleep(200); // the room hibernates here (idle timeout 50 ms)
ada.ws.send(JSON.stringify({ type: "add", id: "1", text: "milk" }));
await ada.next("ack");
const added = await bob.next("update");
console.log(`added, bob saw ${added.item.text}`);
await sleep(200);
bob.ws.send(JSON.stringify({ type: "vote", id: "1" }));
await bob.next("ack");
const voted = await ada.next("update");
console.log(`voted, ada saw ${voted.item.votes}`);
ada.ws.close();
bob.ws.close();
await sleep(200);
const cy = client("cy");
const late = await cy.next("sync");
const [item] = late.items;
console.log(`a newcomer syncs ${item.text} with ${item.votes} vote`);
cy.ws.close();
process.exit(0);
