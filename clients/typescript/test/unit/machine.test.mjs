// The machine against a fake server on a virtual clock, no sockets: frames
// travel through queues that a drop empties (so acks and points in flight
// are lost), and the server can go down and come back with its storage.
// The same cases as the Rust client's machine tests, plus the TypeScript
// client's own (removed, catch-up after an end, local refusals, state).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Machine, backoffCeiling, backoffDelay, DEFAULT_BACKOFF, SeshError, randomId } from "../../dist/index.js";

/** A small seeded PRNG (mulberry32), so every run is the same. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const OPTS = { backoff: { initialMs: 100, maxMs: 2000, factor: 2 } };

function machine(seed = 1, opts = OPTS) {
  let n = 0;
  return new Machine(opts, { random: rng(seed), newId: () => `id-${seed}-${++n}` });
}

function drain(m) {
  const out = [];
  for (let o = m.pollOutput(); o !== undefined; o = m.pollOutput()) out.push(o);
  return out;
}

const welcome = (over = {}) =>
  JSON.stringify({ type: "welcome", sessionId: "s", connId: "c", userId: "a", lastSeq: 0, participants: [], ...over });

const stored = (seq, userId = "b", extra = {}) =>
  JSON.stringify({ type: "point", seq, userId, kind: "k", ts: 0, ...extra });

/** A machine that is open and welcomed at time 0. */
function open(seed = 1, opts = OPTS) {
  const m = machine(seed, opts);
  m.start(0);
  m.connected(0);
  m.received(0, welcome());
  drain(m);
  return m;
}

class Sim {
  constructor(users, seed) {
    this.now = 1000;
    this.rand = rng(seed * 7919 + 13);
    this.server = { points: [], ids: new Map(), up: true, conns: new Map(), nextConn: 0, page: 3, ended: false };
    this.peers = users.map((user, i) => ({
      m: machine(seed * 31 + i),
      user,
      toServer: [],
      toClient: [],
      connected: false,
      events: [],
      acked: new Map(),
      ackCount: 0,
      refused: [],
      sent: [],
      catchUp: undefined,
    }));
  }

  start() {
    for (const p of this.peers) p.m.start(this.now);
    this.settle();
  }

  send(i, kind) {
    const id = this.peers[i].m.send(this.now, { kind });
    this.peers[i].sent.push(id);
    return id;
  }

  outputs(i) {
    for (let o = this.peers[i].m.pollOutput(); o !== undefined; o = this.peers[i].m.pollOutput()) this.output(i, o);
  }

  settle() {
    for (let round = 0; round < 100000; round++) {
      let moved = false;
      for (let i = 0; i < this.peers.length; i++) {
        const p = this.peers[i];
        for (let o = p.m.pollOutput(); o !== undefined; o = p.m.pollOutput()) {
          moved = true;
          this.output(i, o);
        }
      }
      for (let i = 0; i < this.peers.length; i++) {
        const p = this.peers[i];
        if (p.toServer.length) {
          moved = true;
          this.serverReceives(i, p.toServer.shift());
        }
        if (p.toClient.length) {
          moved = true;
          p.m.received(this.now, p.toClient.shift());
        }
      }
      if (!moved) return;
    }
    throw new Error("no quiescence");
  }

  output(i, o) {
    const p = this.peers[i];
    switch (o.type) {
      case "connect":
        if (this.server.up && !this.server.ended) {
          p.m.connected(this.now);
          p.connected = true;
          const conn = ++this.server.nextConn;
          this.server.conns.set(i, conn);
          p.toClient.push(welcome({ connId: `c${conn}`, userId: p.user, lastSeq: this.server.points.length }));
          this.broadcast(i, { type: "joined", connId: `c${conn}`, userId: p.user, joinedAt: "2026-01-01T00:00:00Z" });
        } else if (this.server.ended) {
          p.m.connectFailed(
            this.now,
            new SeshError({ status: 409, code: "session_ended", message: "ended" }),
            this.server.points.length,
          );
        } else {
          p.m.connectFailed(this.now, new SeshError({ code: "transport", message: "connection refused" }));
        }
        return;
      case "send":
        if (p.connected) p.toServer.push(o.text);
        return;
      case "closeSocket":
        this.cut(i, false);
        return;
      case "event":
        p.events.push(o);
        return;
      case "acked":
        p.ackCount++;
        assert.ok(!p.acked.has(o.id), `${o.id} acked twice`);
        p.acked.set(o.id, o.seq);
        return;
      case "refused":
        p.refused.push([o.id, o.error]);
        return;
      case "catchUp": {
        const pts = this.server.points.filter((s) => s.seq > o.afterSeq);
        p.m.caughtUp(this.now, pts);
        return;
      }
      case "stopped":
        p.stopped = o.reason;
        return;
    }
  }

  broadcast(from, frame) {
    const text = JSON.stringify(frame);
    this.peers.forEach((p, j) => {
      if (j !== from && this.server.conns.has(j)) p.toClient.push(text);
    });
  }

  serverReceives(i, text) {
    if (!this.server.up || !this.server.conns.has(i)) return;
    const f = JSON.parse(text);
    const p = this.peers[i];
    switch (f.type) {
      case "point": {
        assert.ok(typeof f.id === "string", "every point has an id");
        const key = `${p.user}\u0000${f.id}`;
        const known = this.server.ids.get(key);
        if (known !== undefined) {
          p.toClient.push(JSON.stringify({ type: "ack", id: f.id, seq: known }));
          return;
        }
        const { type, ...np } = f;
        const s = { seq: this.server.points.length + 1, userId: p.user, ...np, ts: 0 };
        this.server.ids.set(key, s.seq);
        this.server.points.push(s);
        p.toClient.push(JSON.stringify({ type: "ack", id: f.id, seq: s.seq }));
        this.broadcast(i, { type: "point", ...s });
        return;
      }
      case "resume": {
        const page = this.server.points.slice(f.afterSeq, f.afterSeq + this.server.page);
        const through = page.length ? page[page.length - 1].seq : f.afterSeq;
        for (const s of page) p.toClient.push(JSON.stringify({ type: "point", ...s }));
        const last = this.server.points.length;
        p.toClient.push(JSON.stringify({ type: "resumed", lastSeq: last, throughSeq: through, more: through < last }));
        return;
      }
      case "ping":
        p.toClient.push('{"type":"pong"}');
        return;
      case "end": {
        this.server.ended = true;
        const text = JSON.stringify({ type: "ended", lastSeq: this.server.points.length });
        for (const [j] of this.server.conns) this.peers[j].toClient.push(text);
        return;
      }
      default:
        return;
    }
  }

  /** Cuts peer i's socket: frames in flight are lost; the machine hears of it unless it closed it itself. */
  cut(i, tell) {
    const p = this.peers[i];
    const was = p.connected;
    p.connected = false;
    p.toServer.length = 0;
    p.toClient.length = 0;
    const conn = this.server.conns.get(i);
    if (conn !== undefined) {
      this.server.conns.delete(i);
      this.broadcast(i, { type: "left", connId: `c${conn}`, userId: p.user });
    }
    if (tell && was) p.m.disconnected(this.now);
  }

  crashServer() {
    this.server.up = false;
    for (let i = 0; i < this.peers.length; i++) this.cut(i, true);
  }

  /** Moves the virtual clock to the earliest timeout (at most max ms ahead) and fires it. */
  advance(max) {
    const limit = this.now + max;
    const ts = this.peers.map((p) => p.m.pollTimeout()).filter((t) => t !== undefined);
    const next = Math.min(limit, ...ts);
    this.now = Math.max(this.now, next);
    for (const p of this.peers) {
      const t = p.m.pollTimeout();
      if (t !== undefined && t <= this.now) p.m.handleTimeout(this.now);
    }
    this.settle();
  }

  seen(i, name = "point") {
    return this.peers[i].events.filter((e) => e.name === name).map((e) => e.data);
  }

  /** Each sent point stored once and acked once with its seq; each peer saw exactly the others' points, in order. */
  check() {
    const st = this.server.points;
    this.peers.forEach((p, i) => {
      assert.equal(p.m.unacked, 0, `peer ${i} has unacked points`);
      assert.equal(p.ackCount, p.sent.length, `peer ${i}: one ack per point`);
      for (const id of p.sent) {
        assert.equal(st.filter((s) => s.userId === p.user && s.id === id).length, 1, `${id} stored once`);
        assert.equal(st[p.acked.get(id) - 1].id, id);
      }
      const mine = new Set(p.sent);
      const others = st.filter((s) => !mine.has(s.id)).map((s) => s.seq);
      assert.deepEqual(
        this.seen(i).map((s) => s.seq),
        others,
        `peer ${i} sees the others' points once, in order`,
      );
    });
  }
}

test("backoff grows to its cap with full jitter", () => {
  const b = DEFAULT_BACKOFF;
  assert.equal(backoffCeiling(b, 0), 500);
  assert.equal(backoffCeiling(b, 1), 1000);
  assert.equal(backoffCeiling(b, 4), 8000);
  assert.equal(backoffCeiling(b, 5), 10000);
  assert.equal(backoffCeiling(b, 1000), 10000);
  const r = rng(7);
  const delays = Array.from({ length: 200 }, () => backoffDelay(b, 3, r));
  assert.ok(delays.every((d) => d >= 0 && d <= 4000 && Number.isInteger(d)));
  assert.ok(delays.some((d) => d < 1000));
  assert.ok(delays.some((d) => d > 3000));
});

test("points are acked and delivered to the other", () => {
  const sim = new Sim(["a", "b"], 1);
  sim.start();
  assert.equal(sim.peers[0].events.find((e) => e.name === "welcome")?.data.userId, "a");
  for (let k = 0; k < 5; k++) {
    sim.send(0, `a${k}`);
    sim.send(1, `b${k}`);
  }
  sim.settle();
  sim.check();
  assert.equal(sim.server.points.length, 10);
  assert.ok(sim.seen(0, "joined").some((p) => p.userId === "b"));
  assert.equal(sim.peers[0].m.lastSeq, 10);
});

test("generated ids are v4 UUIDs and given ids are kept", () => {
  const id = randomId();
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.notEqual(randomId(), id);
  const m = machine();
  assert.equal(m.send(0, { kind: "k", id: "mine" }), "mine");
  assert.match(m.send(0, { kind: "k" }), /^id-/);
});

test("nothing is sent before welcome, and queued points go after it", () => {
  const m = machine();
  m.start(0);
  assert.deepEqual(
    drain(m).map((o) => o.type),
    ["event", "connect"],
  );
  m.send(0, { kind: "k", id: "p1" });
  assert.deepEqual(drain(m), []);
  m.connected(5);
  assert.deepEqual(drain(m), []);
  assert.equal(m.status, "connecting");
  m.received(6, welcome());
  const out = drain(m);
  assert.deepEqual(out[0], { type: "event", name: "status", data: { status: "open" } });
  assert.equal(out[1].name, "welcome");
  assert.deepEqual(out[2], { type: "send", text: '{"type":"point","kind":"k","id":"p1"}' });
  assert.equal(m.status, "open");
});

test("a lost ack is resent with its id and stored once", () => {
  const sim = new Sim(["a", "b"], 2);
  sim.start();
  sim.send(0, "x");
  sim.outputs(0);
  sim.serverReceives(0, sim.peers[0].toServer.shift());
  sim.cut(0, true); // the ack is lost with the socket
  sim.settle();
  assert.equal(sim.peers[0].m.unacked, 1);
  for (let k = 0; k < 20; k++) sim.advance(5000);
  sim.check();
  assert.equal(sim.server.points.length, 1);
});

test("a point lost on the way is resent", () => {
  const sim = new Sim(["a", "b"], 3);
  sim.start();
  sim.send(0, "x");
  sim.outputs(0);
  sim.cut(0, true);
  assert.equal(sim.server.points.length, 0);
  for (let k = 0; k < 20; k++) sim.advance(5000);
  sim.check();
  assert.equal(sim.server.points.length, 1);
});

test("a reconnect resumes from the last seq seen, following `more`", () => {
  const sim = new Sim(["a", "b"], 4);
  sim.start();
  sim.send(1, "b0");
  sim.settle();
  sim.cut(0, true);
  for (let k = 1; k <= 7; k++) sim.send(1, `b${k}`); // b goes on while a is away
  sim.settle();
  assert.equal(sim.seen(0).length, 1);
  for (let k = 0; k < 20; k++) sim.advance(5000);
  sim.check();
  const status = sim.seen(0, "status").map((s) => s.status);
  assert.deepEqual(status, ["connecting", "open", "reconnecting", "open"]);
  assert.equal(sim.peers[0].m.lastSeq, 8);
});

test("the server down for a while is retried with growing, capped waits", () => {
  const sim = new Sim(["a", "b"], 5);
  sim.start();
  sim.send(0, "a0");
  sim.settle();
  sim.crashServer();
  sim.send(0, "a1");
  sim.send(1, "b1");
  for (let k = 0; k < 12; k++) sim.advance(60000);
  const waits = sim.seen(0, "status").filter((s) => s.status === "reconnecting");
  assert.ok(waits.length >= 5, JSON.stringify(waits));
  assert.ok(waits.every((w) => w.retryInMs <= 2000));
  assert.deepEqual(
    waits.map((w) => w.attempt),
    waits.map((_, k) => k + 1),
  );
  sim.server.up = true;
  for (let k = 0; k < 20; k++) sim.advance(5000);
  sim.check();
});

test("a forbidden or unknown session stops and refuses pending points", () => {
  for (const status of [403, 404]) {
    const m = machine();
    m.start(0);
    drain(m);
    m.send(0, { kind: "k", id: "p" });
    m.connectFailed(1, new SeshError({ status, code: status === 403 ? "forbidden" : "not_found", message: "no" }));
    const out = drain(m);
    assert.ok(out.some((o) => o.type === "refused" && o.id === "p" && o.error.status === status));
    assert.ok(out.some((o) => o.type === "event" && o.name === "status" && o.data.status === "closed"));
    assert.equal(out[out.length - 1].type, "stopped");
    assert.ok(m.stopped);
    assert.equal(m.pollTimeout(), undefined);
    // Sending now is refused at once.
    m.send(2, { kind: "k", id: "late" });
    assert.equal(drain(m)[0].type, "refused");
  }
});

test("401 and other failed connects are retried (a fresh token each time)", () => {
  const m = machine();
  m.start(0);
  drain(m);
  m.connectFailed(1, new SeshError({ status: 401, code: "unauthorized", message: "expired" }));
  assert.ok(!m.stopped);
  const t = m.pollTimeout();
  assert.ok(t !== undefined && t <= 101);
  m.handleTimeout(t);
  assert.ok(drain(m).some((o) => o.type === "connect"));
  // Retry-After of a full session is a floor of the wait.
  m.connectFailed(t + 1, new SeshError({ status: 429, code: "quota_exceeded", message: "full", retryAfterMs: 5000 }));
  assert.ok(m.pollTimeout() >= t + 1 + 5000);
});

test("a silent socket is dropped after the pong timeout", () => {
  const m = open();
  assert.equal(m.pollTimeout(), 20000);
  m.handleTimeout(20000);
  assert.deepEqual(drain(m), [{ type: "send", text: '{"type":"ping"}' }]);
  assert.equal(m.pollTimeout(), 30000);
  m.handleTimeout(30000);
  const out = drain(m);
  assert.equal(out[0].type, "closeSocket");
  assert.equal(out[1].data.status, "reconnecting");
});

test("a connect that never gets its welcome times out", () => {
  const m = machine();
  m.start(0);
  m.connected(10);
  drain(m);
  assert.equal(m.pollTimeout(), 10010);
  m.handleTimeout(10010);
  const out = drain(m);
  assert.deepEqual(
    out.map((o) => o.type + (o.name ? `:${o.name}` : "")),
    ["closeSocket", "event:error", "event:status"],
  );
});

test("rate-limited points wait and go again in order", () => {
  const m = open();
  const a = m.send(0, { kind: "k" });
  const b = m.send(0, { kind: "k" });
  drain(m);
  m.received(10, JSON.stringify({ type: "error", code: "rate_limited", message: "slow down", ref: a, retryAfterMs: 300 }));
  assert.deepEqual(drain(m), []);
  assert.equal(m.pollTimeout(), 310);
  m.handleTimeout(310);
  const sent = drain(m);
  assert.equal(sent.length, 2);
  assert.ok(sent[0].text.includes(a) && sent[1].text.includes(b));
});

test("a point the server could not store (unavailable) is sent again after the wait", () => {
  const m = open();
  const a = m.send(0, { kind: "k" });
  drain(m);
  m.received(10, JSON.stringify({ type: "error", code: "unavailable", message: "try again", ref: a, retryAfterMs: 50 }));
  assert.deepEqual(drain(m), []);
  m.handleTimeout(60);
  assert.ok(drain(m)[0].text.includes(a));
  assert.equal(m.unacked, 1);
});

test("a refused point resolves with the server's error", () => {
  const m = open();
  const id = m.send(0, { kind: "k" });
  drain(m);
  m.received(1, JSON.stringify({ type: "error", code: "quota_exceeded", message: "daily points quota", ref: id, retryAfterMs: 9000 }));
  const [o] = drain(m);
  assert.equal(o.type, "refused");
  assert.equal(o.id, id);
  assert.equal(o.error.code, "quota_exceeded");
  assert.equal(o.error.retryAfterMs, 9000);
  assert.equal(m.unacked, 0);
  // An error about nothing of ours is an event.
  m.received(2, JSON.stringify({ type: "error", code: "unknown_type", message: "what?" }));
  const [e] = drain(m);
  assert.equal(e.name, "error");
  assert.equal(e.data.code, "unknown_type");
});

test("points that can never be stored are refused at once, not sent", () => {
  const m = open();
  m.send(0, { kind: "k", id: "x".repeat(65) });
  m.send(0, { kind: "", id: "empty-kind" });
  m.send(0, { kind: "k", id: "big", data: { s: "x".repeat(70000) } });
  const out = drain(m);
  assert.deepEqual(
    out.map((o) => [o.type, o.error?.code]),
    [
      ["refused", "validation_failed"],
      ["refused", "validation_failed"],
      ["refused", "payload_too_large"],
    ],
  );
  // 64 characters (not bytes) is fine.
  m.send(0, { kind: "é".repeat(64), id: "é".repeat(64) });
  assert.equal(drain(m)[0].type, "send");
});

test("the same id twice while in flight is sent once and acked once", () => {
  const m = open();
  m.send(0, { kind: "k", id: "dup" });
  m.send(0, { kind: "k", id: "dup" });
  assert.equal(drain(m).length, 1);
  m.received(1, JSON.stringify({ type: "ack", id: "dup", seq: 1 }));
  assert.deepEqual(drain(m), [{ type: "acked", id: "dup", seq: 1 }]);
});

test("out-of-order points are held until the gap fills", () => {
  const m = open();
  m.received(1, stored(2));
  m.received(1, stored(3));
  assert.deepEqual(drain(m), []);
  assert.equal(m.pollTimeout(), 2001);
  m.handleTimeout(2001);
  assert.deepEqual(drain(m), [{ type: "send", text: '{"type":"resume","afterSeq":0}' }]);
  for (const s of [1, 2, 3]) m.received(2001, stored(s));
  assert.deepEqual(
    drain(m).filter((o) => o.name === "point").map((o) => o.data.seq),
    [1, 2, 3],
  );
  assert.equal(m.lastSeq, 3);
});

test("our own acked seqs fill gaps without being delivered", () => {
  const m = open();
  const id = m.send(0, { kind: "k" });
  drain(m);
  m.received(1, stored(2));
  m.received(1, JSON.stringify({ type: "ack", id, seq: 1 }));
  const out = drain(m);
  assert.deepEqual(out[0], { type: "acked", id, seq: 1 });
  assert.equal(out[1].data.seq, 2);
  assert.equal(m.lastSeq, 2);
});

test("afterSeq replays the session from there on the first join", () => {
  const m = machine(1, { ...OPTS, afterSeq: 0 });
  m.start(0);
  m.connected(0);
  m.received(0, welcome({ lastSeq: 2 }));
  const out = drain(m);
  assert.deepEqual(out[out.length - 1], { type: "send", text: '{"type":"resume","afterSeq":0}' });
  m.received(1, stored(1));
  m.received(1, stored(2));
  m.received(1, JSON.stringify({ type: "resumed", lastSeq: 2, throughSeq: 2, more: false }));
  assert.deepEqual(
    drain(m).filter((o) => o.name === "point").map((o) => o.data.seq),
    [1, 2],
  );
});

test("removed: stops for good, says why, refuses pending points", () => {
  const m = open();
  m.send(0, { kind: "k", id: "p" });
  drain(m);
  m.received(1, JSON.stringify({ type: "members", members: ["b"], viewers: [] }));
  m.received(1, '{"type":"removed"}');
  const out = drain(m);
  assert.deepEqual(out[0], { type: "event", name: "members", data: { members: ["b"], viewers: [] } });
  assert.equal(out[1].name, "removed");
  assert.equal(out[1].data.code, "removed");
  assert.ok(out.some((o) => o.type === "refused" && o.id === "p" && o.error.code === "removed"));
  assert.equal(out[out.length - 1].type, "stopped");
  // The close 1008 that follows changes nothing: no reconnect.
  m.disconnected(2);
  assert.deepEqual(drain(m), []);
  assert.equal(m.pollTimeout(), undefined);
});

test("ended: the other's points are all delivered, pending points are acked or refused", () => {
  const sim = new Sim(["a", "b"], 8);
  sim.start();
  sim.send(1, "b0");
  sim.settle();
  sim.cut(0, true);
  for (let k = 1; k <= 4; k++) sim.send(1, `b${k}`);
  sim.settle();
  // a's point reaches the server, its ack is lost; then b ends the session.
  sim.peers[1].m.endSession();
  sim.settle();
  assert.ok(sim.server.ended);
  for (let k = 0; k < 20; k++) sim.advance(5000);
  // a connects, is refused with 409, catches up over HTTP, and stops.
  assert.deepEqual(
    sim.seen(0).map((p) => p.seq),
    [1, 2, 3, 4, 5],
  );
  assert.deepEqual(sim.seen(0, "ended"), [{ lastSeq: 5 }]);
  assert.equal(sim.peers[0].stopped.code, "session_ended");
  assert.equal(sim.peers[1].stopped.code, "session_ended");
  assert.equal(sim.seen(0, "status").pop().status, "closed");
});

test("ended while a point of ours waits for its ack: a stored one is acked, others refused", () => {
  const m = open();
  const stored1 = m.send(0, { kind: "k" });
  const lost = m.send(0, { kind: "k" });
  drain(m);
  m.received(1, JSON.stringify({ type: "ended", lastSeq: 2 }));
  const out = drain(m);
  assert.deepEqual(out.slice(-1)[0].type, "catchUp");
  m.caughtUp(2, [
    { seq: 1, userId: "b", kind: "k", ts: 0 },
    { seq: 2, userId: "a", id: stored1, kind: "k", ts: 0 },
  ]);
  const fin = drain(m);
  assert.deepEqual(
    fin.map((o) => o.type + (o.name ? `:${o.name}` : "")),
    ["event:point", "acked", "event:ended", "closeSocket", "refused", "event:status", "stopped"],
  );
  assert.equal(fin.find((o) => o.type === "refused").id, lost);
  assert.equal(fin.find((o) => o.type === "refused").error.status, 409);
});

test("the live state is sent again after every reconnect; signals are not queued", () => {
  const m = open();
  m.setState({ cursor: 1 });
  assert.deepEqual(drain(m), [{ type: "send", text: '{"type":"state","data":{"cursor":1}}' }]);
  assert.ok(m.signal({ typing: true }, "c9"));
  assert.deepEqual(drain(m), [{ type: "send", text: '{"type":"signal","data":{"typing":true},"to":"c9"}' }]);
  m.disconnected(5);
  drain(m);
  assert.equal(m.signal({ typing: false }), false);
  m.handleTimeout(m.pollTimeout());
  drain(m);
  m.connected(300);
  m.received(300, welcome());
  assert.ok(drain(m).some((o) => o.type === "send" && o.text === '{"type":"state","data":{"cursor":1}}'));
});

test("participants follow welcome, joined, left and state; unknown frames are ignored", () => {
  const m = machine();
  m.start(0);
  m.connected(0);
  m.received(0, welcome({ participants: [{ connId: "c", userId: "a", joinedAt: "t" }] }));
  m.received(1, JSON.stringify({ type: "joined", connId: "d", userId: "b", joinedAt: "t2" }));
  m.received(1, JSON.stringify({ type: "state", connId: "d", userId: "b", data: { x: 1 } }));
  assert.deepEqual(m.participants.map((p) => p.connId), ["c", "d"]);
  assert.deepEqual(m.participants[1].state, { x: 1 });
  m.received(2, JSON.stringify({ type: "left", connId: "d", userId: "b" }));
  m.received(2, JSON.stringify({ type: "from-the-future", x: 1 }));
  m.received(2, "not json");
  assert.deepEqual(m.participants.map((p) => p.connId), ["c"]);
  const names = drain(m).filter((o) => o.type === "event").map((o) => o.name);
  assert.deepEqual(names, ["status", "status", "welcome", "joined", "state", "left", "error"]);
});

test("close refuses pending points with `closed`", () => {
  const m = open();
  m.send(0, { kind: "k", id: "p" });
  drain(m);
  m.close();
  const out = drain(m);
  assert.equal(out.find((o) => o.type === "refused").error.code, "closed");
  assert.equal(out[out.length - 1].reason.code, "closed");
});

test("random drops and crashes keep exactly-once, in order", () => {
  for (let seed = 0; seed < 60; seed++) {
    const sim = new Sim(["a", "b", "c"], seed * 7 + 1);
    sim.start();
    for (let round = 0; round < 80; round++) {
      const r = Math.floor(sim.rand() * 100);
      const who = Math.floor(sim.rand() * 3);
      if (r < 55) {
        sim.send(who, "k");
        // Deliver only part of what is in flight before the next action, so
        // drops hit frames on the way.
        const steps = Math.floor(sim.rand() * 4);
        for (let s = 0; s < steps; s++) {
          sim.outputs(who);
          const t = sim.peers[who].toServer.shift();
          if (t !== undefined) sim.serverReceives(who, t);
          const c = sim.peers[who].toClient.shift();
          if (c !== undefined) sim.peers[who].m.received(sim.now, c);
        }
      } else if (r < 70) sim.settle();
      else if (r < 85) sim.cut(who, true);
      else if (r < 90) sim.crashServer();
      else {
        sim.server.up = true;
        sim.advance(3000);
      }
    }
    sim.server.up = true;
    for (let k = 0; k < 100; k++) sim.advance(10000);
    sim.check();
  }
});

test("a first join refused as ended reads the points after afterSeq over HTTP", () => {
  const m = machine(1, { ...OPTS, afterSeq: 1 });
  m.start(0);
  drain(m);
  m.connectFailed(1, new SeshError({ status: 409, code: "session_ended", message: "ended" }), 3);
  const out = drain(m);
  assert.deepEqual(out.at(-1), { type: "catchUp", afterSeq: 1 });
  m.caughtUp(2, [2, 3].map((seq) => ({ seq, userId: "b", kind: "k", ts: 0 })));
  const fin = drain(m);
  assert.deepEqual(
    fin.filter((o) => o.name === "point").map((o) => o.data.seq),
    [2, 3],
  );
  assert.deepEqual(fin.find((o) => o.name === "ended").data, { lastSeq: 3 });
  // Without afterSeq there is nothing it asked for: it just stops.
  const n = machine();
  n.start(0);
  drain(n);
  n.connectFailed(1, new SeshError({ status: 409, code: "session_ended", message: "ended" }), 3);
  assert.ok(!drain(n).some((o) => o.type === "catchUp"));
  assert.ok(n.stopped);
});
