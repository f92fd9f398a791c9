// Pages in a real browser: Debian's chromium driven by playwright-core, on a
// page `dormouse dev` serves. Driven by host/tests/browser.rs:
//   node browser.mjs chat|yjs http://HOST:PORT
// Each check prints one line; a failed check throws (exit code 1).
import { chromium } from "playwright-core";

const [page_kind, base] = process.argv.slice(2);
const say = (line) => console.log(line);
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";

// Flags that keep Chromium off the network it cannot reach here, as root.
const browser = await chromium.launch({
  executablePath,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

/// A page as a new person opens it: its own context (own localStorage).
async function person(url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (e) => say(`page error: ${e.message}`));
  await page.goto(url);
  return page;
}

const pages = {
  // Two people chat; names show; one reloads and sees the history.
  async chat() {
    const room = `${base}/#browser-${Date.now()}`;
    const ada = await person(room);
    const bob = await person(room);
    for (const [page, name] of [[ada, "ada"], [bob, "bob"]]) {
      await page.waitForFunction(() => document.getElementById("status").textContent.includes("connected"));
      await page.fill("#name", name);
      await page.dispatchEvent("#name", "change");
    }
    say("both connected");
    await ada.fill("#text", "hello from ada");
    await ada.press("#text", "Enter");
    await bob.waitForFunction(() => document.getElementById("log").innerText.includes("hello from ada"));
    await bob.fill("#text", "hi ada");
    await bob.press("#text", "Enter");
    await ada.waitForFunction(() => document.getElementById("log").innerText.includes("hi ada"));
    const names = await ada.$$eval("#log b", (bs) => bs.map((b) => b.textContent));
    if (!names.includes("ada") || !names.includes("bob")) throw new Error(`names shown: ${names}`);
    say("messages and names seen");
    await bob.reload();
    await bob.waitForFunction(() => {
      const log = document.getElementById("log").innerText;
      return log.includes("hello from ada") && log.includes("hi ada");
    });
    say("history after reload");
  },

  // Two people edit one document; presence shows both; a reload keeps it.
  async yjs() {
    const doc = `${base}/#browser-${Date.now()}`;
    const ada = await person(doc);
    const bob = await person(doc);
    for (const [page, name] of [[ada, "ada"], [bob, "bob"]]) {
      await page.waitForSelector("#editor:not([disabled])");
      await page.fill("#name", name);
      await page.dispatchEvent("#name", "change");
    }
    say("both synced");
    await ada.click("#editor");
    await ada.keyboard.type("hello from ada");
    await bob.waitForFunction(() => document.getElementById("editor").value === "hello from ada");
    await bob.click("#editor");
    await bob.press("#editor", "End");
    await bob.keyboard.type(", and bob");
    const both = "hello from ada, and bob";
    await ada.waitForFunction((t) => document.getElementById("editor").value === t, both);
    say("edits converge");
    for (const page of [ada, bob]) {
      await page.waitForFunction(() => {
        const names = [...document.querySelectorAll("#people li")].map((li) => li.dataset.name);
        return names.includes("ada") && names.includes("bob");
      });
    }
    say("presence shows both");
    await bob.close();
    await ada.waitForFunction(() =>
      ![...document.querySelectorAll("#people li")].some((li) => li.dataset.name === "bob"));
    say("a closed page leaves");
    await ada.reload();
    await ada.waitForFunction((t) => document.getElementById("editor").value === t, both);
    say("document after reload");
  },
};

try {
  await pages[page_kind]();
} finally {
  await browser.close();
}
process.exit(0);
