// The live console in headless Chromium (playwright-core driving Debian's
// chromium): two browser contexts on one session, a point from one shown
// in the other's table within a second, and bad tokens shown as messages.
// Usage: node console.test.mjs <base> <token A> <token B> <user B> <artifacts dir>
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, tokenA, tokenB, userB, artifacts] = process.argv.slice(2);
if (!artifacts) {
  console.error("usage: console.test.mjs <base> <tokenA> <tokenB> <userB> <artifacts>");
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Playwright gives every launch a fresh temporary profile (user data dir).
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

const pages = [];
function check(cond, what) {
  if (!cond) throw new Error("failed: " + what);
  console.log("ok - " + what);
}

async function open(name) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  pages.push([name, page]);
  const resp = await page.goto(base + "/console/");
  check(resp && resp.ok(), `${name}: the console page is served`);
  return page;
}

async function signIn(page, token) {
  await page.fill("#token", token);
  await page.click("#auth button[type=submit]");
}

try {
  const a = await open("a");
  await signIn(a, tokenA);
  await a.waitForSelector("#whoami:not(:empty)");
  await a.waitForSelector("#quota td:has-text('points')");
  check(true, "a signed in and sees its quota");
  await a.fill("#title", "console test");
  await a.fill("#members", userB);
  await a.click("#create button[type=submit]");
  await a.waitForSelector("#status.online", { timeout: 15000 });
  const sid = (await a.textContent("#sid")).trim();
  check(/^[0-9a-f-]{36}$/.test(sid), "a created and joined a session");

  const b = await open("b");
  await signIn(b, tokenB);
  await b.waitForSelector("#whoami:not(:empty)");
  await b.waitForSelector("#sessions li");
  check(true, "b's session list is loaded");
  await b.fill("#joinid", sid);
  await b.click("#joinform button[type=submit]");
  await b.waitForSelector("#status.online", { timeout: 15000 });
  await a.waitForSelector(`#participants li:has-text('${userB}')`, { timeout: 5000 });
  check(true, "a sees b join");
  await b.waitForSelector(`#presence li:has-text('${userB}')`, { timeout: 10000 });
  check(true, "b sees the members' presence");

  await b.fill("#kind", "speed");
  await b.fill("#value", "12.5");
  const t0 = Date.now();
  await b.click("#send button[type=submit]");
  await a.waitForSelector("#points tbody tr:has-text('speed')", { timeout: 1000 });
  const ms = Date.now() - t0;
  check(ms <= 1000, `b's point is in a's table within a second (${ms} ms)`);
  await b.waitForSelector("#points tbody tr.mine:has-text('speed')", { timeout: 5000 });
  check(true, "b's own point is acked into its table");
  for (const v of ["70", "75", "72"]) {
    await a.fill("#kind", "heart_rate");
    await a.fill("#value", v);
    await a.click("#send button[type=submit]");
  }
  await b.waitForSelector("#points tbody tr:has-text('heart_rate') >> nth=2", { timeout: 5000 });
  await b.waitForSelector("#legend span:has-text('heart_rate')");
  check(true, "a's points reach b's table and chart");
  await a.screenshot({ path: join(artifacts, "console-a.png"), fullPage: true });
  await b.screenshot({ path: join(artifacts, "console-b.png"), fullPage: true });

  const c = await open("bad");
  await signIn(c, "not-a-token");
  await c.waitForSelector("#messages div:has-text('Bad token')", { timeout: 5000 });
  check(true, "a malformed token shows an error message");
  const forged = tokenA.slice(0, tokenA.lastIndexOf(".") + 1) + "AAAA" + tokenA.slice(tokenA.lastIndexOf(".") + 5);
  await signIn(c, forged);
  await c.waitForSelector("#messages div:has-text('unauthorized')", { timeout: 5000 });
  check(true, "a token the server refuses shows its error message");
  await c.fill("#joinid", "not-a-session");
  await c.click("#joinform button[type=submit]");
  await c.waitForSelector("#messages div:has-text('Join')", { timeout: 5000 });
  check(await c.isVisible("header"), "errors never blank the page");
  await c.screenshot({ path: join(artifacts, "console-bad-token.png"), fullPage: true });
} catch (e) {
  for (const [name, page] of pages) {
    await page.screenshot({ path: join(artifacts, `failure-${name}.png`), fullPage: true }).catch(() => {});
  }
  console.error(e.stack || String(e));
  await browser.close();
  process.exit(1);
}
await browser.close();
