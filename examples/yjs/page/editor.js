// The editor page of examples/yjs: a textarea bound to a Y.Text, with
// presence (who is here, their colour and where their caret is) from Yjs
// awareness. It talks to the room with y-partykit's provider, unchanged.
// Bundled by `npm run build` (esbuild) into ../public/editor.js.
import * as Y from "yjs";
import YPartyKitProvider from "y-partykit/provider";

const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#9a6324"];

const room = location.hash.slice(1) || "notes";
const doc = new Y.Doc();
const text = doc.getText("t");
const provider = new YPartyKitProvider(location.host, room, doc, {
  protocol: location.protocol === "https:" ? "wss" : "ws",
});
const awareness = provider.awareness;

const editor = document.getElementById("editor");
const status = document.getElementById("status");
const people = document.getElementById("people");
const nameInput = document.getElementById("name");

nameInput.value = localStorage.getItem("name") || "guest" + Math.floor(Math.random() * 1000);
const colour = COLOURS[doc.clientID % COLOURS.length];
awareness.setLocalStateField("user", { name: nameInput.value, colour });
nameInput.onchange = () => {
  localStorage.setItem("name", nameInput.value);
  awareness.setLocalStateField("user", { name: nameInput.value, colour });
};

provider.on("status", ({ status: s }) => {
  status.textContent = `document "${room}": ${s}`;
});
// Editable once the document has loaded, and from then on offline too:
// edits made meanwhile merge when the connection comes back.
provider.on("sync", (synced) => {
  if (!synced) return;
  status.textContent = `document "${room}": synced`;
  editor.disabled = false;
  shown = text.toString();
  editor.value = shown;
});

// Local edits: the smallest change between the old and new value (common
// prefix and suffix), applied to the Y.Text.
let shown = "";
editor.addEventListener("input", () => {
  const next = editor.value;
  let start = 0;
  while (start < shown.length && start < next.length && shown[start] === next[start]) start++;
  let endOld = shown.length;
  let endNew = next.length;
  while (endOld > start && endNew > start && shown[endOld - 1] === next[endNew - 1]) {
    endOld--;
    endNew--;
  }
  doc.transact(() => {
    if (endOld > start) text.delete(start, endOld - start);
    if (endNew > start) text.insert(start, next.slice(start, endNew));
  }, "editor");
  shown = next;
  caret();
});

// Remote edits: move the caret with the text around it, by the change's delta.
text.observe((event) => {
  if (event.transaction.origin === "editor") return;
  let [selStart, selEnd] = [editor.selectionStart, editor.selectionEnd];
  let at = 0;
  for (const op of event.delta) {
    if (op.retain) {
      at += op.retain;
    } else if (op.insert) {
      const n = op.insert.length;
      if (at <= selStart) selStart += n;
      if (at <= selEnd) selEnd += n;
      at += n;
    } else if (op.delete) {
      const n = op.delete;
      selStart -= Math.max(0, Math.min(n, selStart - at));
      selEnd -= Math.max(0, Math.min(n, selEnd - at));
    }
  }
  shown = text.toString();
  editor.value = shown;
  if (document.activeElement === editor) editor.setSelectionRange(selStart, selEnd);
});

function caret() {
  awareness.setLocalStateField("caret", editor.selectionStart);
}
editor.addEventListener("keyup", caret);
editor.addEventListener("click", caret);

function render() {
  people.textContent = "";
  for (const [id, state] of awareness.getStates()) {
    if (!state.user) continue;
    const li = document.createElement("li");
    li.dataset.name = state.user.name;
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.style.background = state.user.colour;
    const where = typeof state.caret === "number" ? ` (at ${state.caret})` : "";
    const me = id === doc.clientID ? " (you)" : "";
    li.append(dot, document.createTextNode(state.user.name + me + where));
    people.append(li);
  }
}
awareness.on("change", render);
render();

// For tests and the console.
window.editorDoc = doc;
window.editorProvider = provider;
