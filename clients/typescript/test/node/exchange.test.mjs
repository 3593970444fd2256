// Two clients exchanging points through a real `wrangler dev` that is
// SIGKILLed and restarted on the same port and state folder mid-stream:
// every point acked once, stored once (read back with GET .../points) and
// seen once, in seq order, by the other; the token functions are called
// again for the reconnects; a late joiner replays the whole session in
// pages (REPLAY_PAGE is small here, so `resumed` says `more`).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Sesh } from "../../dist/index.js";
import { TestServer, sleep, userToken, waitFor } from "../support/server.mjs";

let srv;

before(async () => {
  srv = await TestServer.start({ name: "sesh-ts-exchange", vars: { REPLAY_PAGE: "7" } });
});

after(async () => {
  await srv?.stop();
});

function client(user, counter) {
  return new Sesh({
    url: srv.base,
    WebSocket,
    token: async () => {
      counter.n++;
      return userToken(user, "pro");
    },
  });
}

/** Joins and records what the live session tells. */
function record(live) {
  const r = { points: [], status: [], errors: [], welcomes: 0 };
  live.on("point", (p) => r.points.push(p));
  live.on("status", (s) => r.status.push(s.status));
  live.on("error", (e) => r.errors.push(e));
  live.on("welcome", () => r.welcomes++);
  return r;
}

function assertInOrderOnce(points, what) {
  for (let i = 1; i < points.length; i++) {
    assert.ok(points[i].seq > points[i - 1].seq, `${what}: seq ${points[i].seq} after ${points[i - 1].seq}`);
  }
}

test("two clients exchange points through a SIGKILL and restart of the runtime", { timeout: 240_000 }, async () => {
  const ca = { n: 0 };
  const cb = { n: 0 };
  const a = client("ts-alice", ca);
  const b = client("ts-bob", cb);
  const session = await a.createSession({ title: "exchange", members: ["ts-bob", "ts-carol"] });

  const la = a.join(session.id);
  const lb = b.join(session.id);
  const ra = record(la);
  const rb = record(lb);
  await waitFor(() => la.status === "open" && lb.status === "open", 30_000, "both open");
  assert.equal(la.userId, "ts-alice");
  assert.equal(lb.userId, "ts-bob");

  const sends = { a: [], b: [] };
  const send = (who, live, n, extra = {}) => {
    const p = live.send({ kind: `${who}-kind`, value: n, data: { n }, ...extra });
    sends[who].push(p);
    return p;
  };

  // Before the crash: both at once, each batch acked.
  for (let n = 0; n < 15; n++) {
    send("a", la, n);
    send("b", lb, n);
  }
  // Ids the caller chose are kept.
  const own = await send("a", la, 15, { id: "alice-chosen-id-1" });
  assert.equal(own.id, "alice-chosen-id-1");
  await Promise.all([...sends.a, ...sends.b]);

  // Mid-stream: points in flight when the runtime is killed, more sent while
  // it is down, more after it is back.
  for (let n = 100; n < 110; n++) {
    send("a", la, n);
    send("b", lb, n);
  }
  const tokensBefore = { a: ca.n, b: cb.n };
  await srv.crash();
  for (let n = 200; n < 210; n++) {
    send("a", la, n);
    send("b", lb, n);
  }
  await waitFor(() => la.status === "reconnecting" && lb.status === "reconnecting", 10_000, "both reconnecting");
  await sleep(500);
  await srv.restart();
  for (let n = 300; n < 310; n++) {
    send("a", la, n);
    send("b", lb, n);
  }
  const acks = {
    a: await Promise.all(sends.a),
    b: await Promise.all(sends.b),
  };
  await waitFor(() => la.status === "open" && lb.status === "open", 30_000, "both open again");
  assert.ok(ca.n > tokensBefore.a, `alice's token function was called again (${tokensBefore.a} -> ${ca.n})`);
  assert.ok(cb.n > tokensBefore.b, `bob's token function was called again (${tokensBefore.b} -> ${cb.n})`);
  assert.ok(ra.status.includes("reconnecting") && ra.status.at(-1) === "open", ra.status.join(","));
  assert.ok(ra.welcomes >= 2 && rb.welcomes >= 2);

  const total = sends.a.length + sends.b.length;
  await waitFor(
    () => ra.points.length >= sends.b.length && rb.points.length >= sends.a.length,
    30_000,
    "each side to see the other's points",
  );
  await sleep(300); // anything delivered twice would show up now

  // Stored once each, with the seq its ack gave.
  const stored = [];
  for await (const p of a.points(session.id, { limit: 50 })) stored.push(p);
  assert.equal(stored.length, total, "every point stored once");
  assert.deepEqual(
    stored.map((p) => p.seq),
    stored.map((_, i) => i + 1),
    "seqs 1..N without gaps",
  );
  const byId = new Map(stored.map((p) => [`${p.userId}/${p.id}`, p]));
  assert.equal(byId.size, total, "no id stored twice");
  for (const [who, user] of [
    ["a", "ts-alice"],
    ["b", "ts-bob"],
  ]) {
    const ids = new Set(acks[who].map((k) => k.id));
    assert.equal(ids.size, acks[who].length, `${who}: each send acked once, with its own id`);
    for (const k of acks[who]) {
      const p = byId.get(`${user}/${k.id}`);
      assert.ok(p, `${who}: ${k.id} is stored`);
      assert.equal(p.seq, k.seq, `${who}: ${k.id} acked with its stored seq`);
    }
  }
  // Seen once, in order, by the other.
  assertInOrderOnce(ra.points, "alice");
  assertInOrderOnce(rb.points, "bob");
  assert.deepEqual(
    ra.points.map((p) => p.seq),
    stored.filter((p) => p.userId === "ts-bob").map((p) => p.seq),
    "alice sees each of bob's points once, in order",
  );
  assert.deepEqual(
    rb.points.map((p) => p.seq),
    stored.filter((p) => p.userId === "ts-alice").map((p) => p.seq),
    "bob sees each of alice's points once, in order",
  );
  assert.equal(la.lastSeq, total);
  assert.equal(lb.lastSeq, total);
  assert.equal(la.unacked, 0);

  // A late joiner replays the whole session (pages of 7, following `more`).
  const cc = { n: 0 };
  const c = client("ts-carol", cc);
  const lc = c.join(session.id, { afterSeq: 0 });
  const rc = record(lc);
  await waitFor(() => rc.points.length >= total, 30_000, "carol's replay");
  await sleep(200);
  assert.deepEqual(
    rc.points.map((p) => p.seq),
    stored.map((p) => p.seq),
    "the replay holds every point once, in order",
  );
  assert.equal(cc.n, 1, "one token for carol's one connect");

  // The owner ends the session: everyone hears `ended` and stops for good.
  const ended = Promise.all([la, lb, lc].map((l) => new Promise((r) => l.once("ended", r))));
  await a.endSession(session.id);
  const e = await ended;
  assert.deepEqual(
    e.map((x) => x.lastSeq),
    [total, total, total],
  );
  const reasons = await Promise.all([la.stopped, lb.stopped, lc.stopped]);
  assert.ok(reasons.every((r) => r.code === "session_ended" && r.status === 409));
  await assert.rejects(la.send({ kind: "late" }), (err) => err.code === "session_ended");
  await Promise.all([la.close(), lb.close(), lc.close()]);
  assert.deepEqual([la.status, lb.status, lc.status], ["closed", "closed", "closed"]);
  assert.deepEqual(
    [...ra.errors, ...rb.errors].filter((x) => x.code !== "transport"),
    [],
    "no error but the outage's failed connects",
  );
});
