// The exchange of the Node test in headless Chromium: the package bundled
// with esbuild into a small page (harness.mjs), two browser contexts (alice
// and bob) on one session through a real `wrangler dev` that is SIGKILLed
// and restarted on the same port and state mid-stream, driven with
// playwright-core and Debian's chromium. The page is served from another
// port than the API's, so CORS is in the way as for a real web app.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "node:http";
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { Sesh } from "../../dist/index.js";
import { TestServer, sleep, userToken, waitFor } from "../support/server.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const artifacts = process.env.SESH_TEST_ARTIFACTS ?? join(here, "../../test-results");

let srv;
let browser;
let bundle;
let pages;
let pageOrigin;
const PAGE =
  '<!doctype html><meta charset="utf-8"><title>sesh client test</title><script type="module" src="harness.js"></script>';

before(async () => {
  const out = await build({
    entryPoints: [join(here, "harness.mjs")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
  });
  bundle = out.outputFiles[0].text;
  // The page comes from a server of its own on the loopback address (so
  // that Chromium's local network access checks let it call the API there).
  pages = createServer((req, res) => {
    if (req.url.endsWith("/harness.js")) {
      res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
    } else {
      res.writeHead(200, { "content-type": "text/html" }).end(PAGE);
    }
  });
  await new Promise((r) => pages.listen(0, "127.0.0.1", r));
  pageOrigin = `http://127.0.0.1:${pages.address().port}`;
  srv = await TestServer.start({ name: "sesh-ts-browser" });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
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
});

after(async () => {
  await browser?.close();
  await new Promise((r) => (pages ? pages.close(r) : r()));
  await srv?.stop();
});

async function openPage(name, user) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  const logs = [];
  page.on("pageerror", (e) => logs.push(`[${name}] page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") logs.push(`[${name}] console: ${m.text()}`);
  });
  await page.goto(`${pageOrigin}/index.html`);
  await page.waitForFunction(() => window.harness !== undefined);
  await page.evaluate(([url, token]) => window.harness.init(url, token), [srv.base, userToken(user, "pro")]);
  return { page, logs, view: () => page.evaluate(() => window.harness.view()) };
}

test("two browser clients exchange points through a SIGKILL and restart", { timeout: 240_000 }, async () => {
  const owner = new Sesh({ url: srv.base, token: userToken("br-alice", "pro") });
  const session = await owner.createSession({ title: "browser", members: ["br-bob"] });
  const a = await openPage("alice", "br-alice");
  const b = await openPage("bob", "br-bob");
  try {
    assert.equal((await a.view()).secure, true, "a secure context (crypto.randomUUID)");
    for (const p of [a, b]) await p.page.evaluate((sid) => window.harness.join(sid), session.id);
    await waitFor(async () => (await a.view()).status === "open" && (await b.view()).status === "open", 30_000, "both open");

    const send = (p, prefix, from, to) =>
      p.page.evaluate(([x, f, t]) => window.harness.send(x, f, t), [prefix, from, to]);
    await send(a, "a", 0, 15);
    await send(b, "b", 0, 15);
    await sleep(300);
    await send(a, "a", 100, 110);
    await send(b, "b", 100, 110);
    const before = { a: (await a.view()).tokenCalls, b: (await b.view()).tokenCalls };
    await srv.crash();
    await send(a, "a", 200, 210);
    await send(b, "b", 200, 210);
    await waitFor(
      async () => (await a.view()).status === "reconnecting" && (await b.view()).status === "reconnecting",
      10_000,
      "both reconnecting",
    );
    await srv.restart();
    await send(a, "a", 300, 310);
    await send(b, "b", 300, 310);

    const acksA = await a.page.evaluate(() => window.harness.acks());
    const acksB = await b.page.evaluate(() => window.harness.acks());
    assert.ok(acksA.every((k) => k.ok) && acksB.every((k) => k.ok), JSON.stringify([...acksA, ...acksB].filter((k) => !k.ok)));
    const total = acksA.length + acksB.length;
    await waitFor(
      async () => (await a.view()).points.length >= acksB.length && (await b.view()).points.length >= acksA.length,
      30_000,
      "each page to see the other's points",
    );
    await sleep(300);
    const va = await a.view();
    const vb = await b.view();
    assert.ok(va.tokenCalls > before.a && vb.tokenCalls > before.b, "the token functions were called again after the restart");
    assert.ok(va.statuses.includes("reconnecting") && va.statuses.at(-1) === "open", va.statuses.join(","));

    const stored = [];
    for await (const p of owner.points(session.id)) stored.push(p);
    assert.equal(stored.length, total, "every point stored once");
    assert.deepEqual(
      stored.map((p) => p.seq),
      stored.map((_, i) => i + 1),
    );
    const byKey = new Map(stored.map((p) => [`${p.userId}/${p.id}`, p]));
    assert.equal(byKey.size, total, "no id stored twice");
    for (const [acks, user] of [
      [acksA, "br-alice"],
      [acksB, "br-bob"],
    ]) {
      assert.equal(new Set(acks.map((k) => k.id)).size, acks.length, `${user}: each acked once`);
      for (const k of acks) assert.equal(byKey.get(`${user}/${k.id}`)?.seq, k.seq, `${user}: ${k.id} acked with its seq`);
    }
    assert.deepEqual(
      va.points.map((p) => p.seq),
      stored.filter((p) => p.userId === "br-bob").map((p) => p.seq),
      "alice's page sees each of bob's points once, in order",
    );
    assert.deepEqual(
      vb.points.map((p) => p.seq),
      stored.filter((p) => p.userId === "br-alice").map((p) => p.seq),
      "bob's page sees each of alice's points once, in order",
    );
    assert.equal(va.lastSeq, total);

    // Errors reach the page as SeshErrors too (through CORS).
    const e404 = await a.page.evaluate(() => window.harness.errorOf("getSession", "0192cc09-1400-7e5f-8a6b-7c8d9e0f1a2b"));
    assert.deepEqual([e404.isSeshError, e404.status, e404.code], [true, 404, "not_found"]);
    const e401 = await a.page.evaluate((url) => window.harness.badToken(url), srv.base);
    assert.deepEqual([e401.isSeshError, e401.status, e401.code], [true, 401, "unauthorized"]);
    // (POST: the preflight allows only GET, POST and OPTIONS today.)
    const e405 = await a.page.evaluate(() => window.harness.errorOf("request", "POST", "/v1/quota"));
    assert.deepEqual([e405.status, e405.code], [405, "method_not_allowed"]);

    for (const p of [a, b]) assert.equal(await p.page.evaluate(() => window.harness.close()), "closed");
    assert.deepEqual([...a.logs, ...b.logs].filter((l) => l.includes("page error")), []);
  } catch (e) {
    mkdirSync(artifacts, { recursive: true });
    for (const [name, p] of [
      ["alice", a],
      ["bob", b],
    ]) {
      console.error(name, JSON.stringify(await p.view().catch(() => null)));
      console.error(p.logs.join("\n"));
      await p.page.screenshot({ path: join(artifacts, `browser-${name}.png`) }).catch(() => {});
    }
    console.error(srv.logTail(30));
    throw e;
  }
});
