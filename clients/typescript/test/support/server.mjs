// A throw-away `wrangler dev` of the prebuilt Worker (build/, from `cargo
// xtask build --features test-faults`), started the way the Rust tests'
// launcher (launcher/src/lib.rs) does it: a free port, `--persist-to` a
// temporary state folder with the D1 migrations applied first, its own
// process group, waited for on /health; `crash()` is a SIGKILL of the whole
// group and `restart()` starts it again on the same port and state. A
// watchdog shell stops it if the test process dies without cleaning up.
import { spawn, spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, closeSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
/** The repository's root (where wrangler.toml is). */
export const ROOT = process.env.SESH_ROOT ?? resolve(here, "../../../..");
export const WRANGLER = process.env.SESH_WRANGLER ?? join(ROOT, "node_modules/.bin/wrangler");
/** The secret the test servers are started with. */
export const SECRET = "ts-client-test-secret-0123456789abcdef";

/** A port nobody listens on now. */
export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.unref();
    s.on("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

const b64url = (s) => Buffer.from(s).toString("base64url");

/** An HS256 JWT signed with the tests' secret. */
export function mint(claims, secret = SECRET) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** A user's token, valid for an hour. */
export function userToken(sub, plan = "pro", ttl = 3600) {
  return mint({ sub, plan, exp: Math.floor(Date.now() / 1000) + ttl });
}

/** A service token. */
export function serviceToken(sub = "backend") {
  return mint({ sub, role: "service", plan: "enterprise", exp: Math.floor(Date.now() / 1000) + 3600 });
}

function procStat(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return { state: f[0], ppid: Number(f[1]) };
  } catch {
    return undefined;
  }
}

function alive(pid) {
  const st = procStat(pid);
  return st !== undefined && st.state !== "Z" && st.state !== "X";
}

/** `root` and every process under it. */
function processTree(root) {
  const kids = new Map();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const st = procStat(Number(name));
    if (!st) continue;
    if (!kids.has(st.ppid)) kids.set(st.ppid, []);
    kids.get(st.ppid).push(Number(name));
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) out.push(...(kids.get(out[i]) ?? []));
  return out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class TestServer {
  constructor({ vars = {}, name = "sesh-ts" } = {}) {
    this.vars = { AUTH_SECRET: SECRET, ALLOWED_ORIGINS: "*", ...vars };
    this.state = mkdtempSync(join(tmpdir(), `${name}-`));
    this.log = `${this.state}.log`;
    this.child = undefined;
    this.port = 0;
    this.base = "";
    this.starts = 0;
  }

  /** Applies the migrations to a fresh state folder and starts the server. */
  static async start(opts) {
    if (!existsSync(join(ROOT, "build/index.js"))) {
      throw new Error(`no Worker bundle in ${ROOT}/build: run \`cargo xtask build --features test-faults\` first`);
    }
    const s = new TestServer(opts);
    const fd = openSync(s.log, "a");
    const r = spawnSync(WRANGLER, ["d1", "migrations", "apply", "DB", "--local", "--persist-to", s.state], {
      cwd: ROOT,
      env: { ...process.env, CI: "true" },
      stdio: ["ignore", fd, fd],
    });
    closeSync(fd);
    if (r.status !== 0) throw new Error(`D1 migrations failed (${r.status}):\n${s.logTail()}`);
    s.port = await freePort();
    s.base = `http://127.0.0.1:${s.port}`;
    await s.spawn();
    return s;
  }

  async spawn() {
    const fd = openSync(this.log, "a");
    const args = ["dev", "--ip", "127.0.0.1", "--port", String(this.port)];
    args.push("--inspector-port", String(await freePort()));
    args.push("--persist-to", this.state, "--show-interactive-dev-session=false", "--log-level", "warn");
    for (const [k, v] of Object.entries(this.vars)) args.push("--var", `${k}:${v}`);
    this.child = spawn(WRANGLER, args, {
      cwd: ROOT,
      env: { ...process.env, CI: "true", SESH_PREBUILT: "1" },
      stdio: ["ignore", fd, fd],
      detached: true, // its own process group
    });
    closeSync(fd);
    this.starts++;
    this.watchdog(this.child.pid);
    const exited = new Promise((r) => this.child.once("exit", (code, sig) => r(`exited (${code ?? sig})`)));
    const deadline = Date.now() + 180_000;
    for (;;) {
      const state = await Promise.race([exited, this.health().then((ok) => (ok ? "up" : undefined))]);
      if (state === "up") return;
      if (state !== undefined) throw new Error(`the server ${state}:\n${this.logTail()}`);
      if (Date.now() > deadline) throw new Error(`the server was not healthy on ${this.base} in time:\n${this.logTail()}`);
      await sleep(250);
    }
  }

  async health() {
    try {
      const r = await fetch(`${this.base}/health`, { signal: AbortSignal.timeout(2000) });
      await r.text();
      return r.status === 200;
    } catch {
      return false;
    }
  }

  /** If this process dies without stopping the server, the group goes too, and the state folder. */
  watchdog(pgid) {
    const script =
      `while kill -0 ${process.pid} 2>/dev/null && kill -0 ${pgid} 2>/dev/null; do sleep 1; done; ` +
      `kill -0 ${process.pid} 2>/dev/null && exit 0; ` +
      `kill -TERM -${pgid} 2>/dev/null; sleep 3; kill -KILL -${pgid} 2>/dev/null; rm -rf '${this.state}' '${this.log}'`;
    spawn("sh", ["-c", script], { stdio: "ignore", detached: true }).unref();
  }

  async signalAll(sig, graceMs) {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    const pids = processTree(child.pid);
    const kill = (s, list) => {
      try {
        process.kill(-child.pid, s);
      } catch {}
      for (const p of list) {
        try {
          process.kill(p, s);
        } catch {}
      }
    };
    kill(sig, pids);
    const deadline = Date.now() + graceMs;
    let left = pids.filter(alive);
    while (left.length && Date.now() < deadline) {
      await sleep(100);
      left = left.filter(alive);
    }
    kill("SIGKILL", left);
    while (pids.some(alive)) await sleep(50);
  }

  /** SIGKILL to the runtime and everything under it, as a crash. */
  async crash() {
    await this.signalAll("SIGKILL", 0);
  }

  /** Starts it again on the same port and state folder. */
  async restart() {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.spawn();
        return;
      } catch (e) {
        if (attempt >= 3) throw e;
        await this.signalAll("SIGKILL", 0);
        await sleep(1000);
      }
    }
  }

  /** Stops it (TERM, then KILL after 10 s) and removes its state. */
  async stop({ keepLog = false } = {}) {
    await this.signalAll("SIGTERM", 10_000);
    rmSync(this.state, { recursive: true, force: true });
    if (!keepLog) rmSync(this.log, { force: true });
  }

  logTail(lines = 40) {
    try {
      return readFileSync(this.log, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }
}

/** Polls `cond` until it holds, or fails after `ms`. */
export async function waitFor(cond, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

export { sleep };
