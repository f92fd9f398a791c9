// Pages in a real browser: Debian's chromium driven by playwright-core, on a
// page `dormouse dev` serves. Driven by host/tests/browser.rs:
//   node browser.mjs chat|yjs http://HOST:PORT SHOTS_DIR
// Each check prints one line; a failed check throws (exit code 1). Every
// page open then is saved as SHOTS_DIR/KIND-failed-N.png; on success
// SHOTS_DIR/KIND.png shows the page (the README's screenshots).
import { chromium } from "playwright-core";

const [page_kind, base, shots] = process.argv.slice(2);
const opened = [];
let shot = null;
/** The README's screenshot of this page: `page` as it is now. */
async function snap(page) {
  shot = await page.screenshot({ path: `${shots}/${page_kind}.png` });
}
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
  opened.push(page);
  await page.setViewportSize({ width: 900, height: 640 });
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

  // Two people type at once and converge; presence shows both; one goes
  // offline, edits, comes back and merges; a reload keeps the text.
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
    const value = (page) => page.$eval("#editor", (e) => e.value);
    await ada.click("#editor");
    await ada.keyboard.type("|");
    await bob.waitForFunction(() => document.getElementById("editor").value === "|");
    // At once: bob before the bar, ada after it.
    await bob.click("#editor");
    await bob.press("#editor", "Home");
    await ada.press("#editor", "End");
    await Promise.all([
      ada.keyboard.type("ada types here", { delay: 15 }),
      bob.keyboard.type("bob types too", { delay: 15 }),
    ]);
    const both = "bob types too|ada types here";
    for (const page of [ada, bob]) {
      await page.waitForFunction((t) => document.getElementById("editor").value === t, both);
    }
    say("typing at once converges");
    for (const page of [ada, bob]) {
      await page.waitForFunction(() => {
        const names = [...document.querySelectorAll("#people li")].map((li) => li.dataset.name);
        return names.includes("ada") && names.includes("bob");
      });
    }
    say("presence shows both");
    await snap(ada);
    // Offline: new connections fail. Chromium keeps an open WebSocket open
    // through it, where a real network loss would end it (the provider sees
    // 30 s of silence): so the page's socket is dropped here too.
    await bob.context().setOffline(true);
    await bob.evaluate(() => window.editorProvider.ws?.close());
    await bob.waitForFunction(() => !document.getElementById("status").textContent.includes("synced"));
    await bob.press("#editor", "End");
    await bob.keyboard.type(" (bob offline)");
    await ada.press("#editor", "Home");
    await ada.keyboard.type("(ada online) ");
    await new Promise((r) => setTimeout(r, 500));
    if ((await value(ada)).includes("offline")) throw new Error("an offline edit arrived while offline");
    await bob.context().setOffline(false);
    const merged = "(ada online) bob types too|ada types here (bob offline)";
    for (const page of [ada, bob]) {
      await page.waitForFunction((t) => document.getElementById("editor").value === t, merged, { timeout: 20000 });
    }
    say("offline edits merge");
    await bob.close();
    await ada.waitForFunction(() =>
      ![...document.querySelectorAll("#people li")].some((li) => li.dataset.name === "bob"));
    say("a closed page leaves");
    await ada.reload();
    await ada.waitForFunction((t) => document.getElementById("editor").value === t, merged);
    say("text after reload");
  },
};

try {
  await pages[page_kind]();
  if (shot === null) await snap(opened[0]);
} catch (e) {
  for (const [i, page] of opened.entries()) {
    if (!page.isClosed()) await page.screenshot({ path: `${shots}/${page_kind}-failed-${i}.png` }).catch(() => {});
  }
  throw e;
} finally {
  await browser.close();
}
process.exit(0);
