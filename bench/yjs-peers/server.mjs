// The peers `dormouse bench yjs` runs beside Dormouse, each as its own
// process so that its memory is its own:
//   node server.mjs hocuspocus PORT   (@hocuspocus/server, in memory)
//   node server.mjs y-websocket PORT  (@y/websocket-server, in memory)
// Neither persists here: the reference server needs y-leveldb for that and
// Hocuspocus an extension; the bench says so next to their figures.
// Prints "listening" once it accepts connections.
import http from "node:http";
import { WebSocketServer } from "ws";

const [kind, port] = process.argv.slice(2);

if (kind === "hocuspocus") {
  const { Server } = await import("@hocuspocus/server");
  const server = new Server({ port: Number(port), address: "127.0.0.1", quiet: true, stopOnSignals: true });
  await server.listen();
} else if (kind === "y-websocket") {
  const { setupWSConnection } = await import("@y/websocket-server/utils");
  const wss = new WebSocketServer({ noServer: true });
  wss.on("connection", setupWSConnection);
  const server = http.createServer((_req, res) => res.end("okay"));
  server.on("upgrade", (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => wss.emit("connection", ws, req)));
  await new Promise((resolve) => server.listen(Number(port), "127.0.0.1", resolve));
} else {
  console.error(`server.mjs: no such peer ${kind} (hocuspocus or y-websocket)`);
  process.exit(2);
}
console.log("listening");
