// Every error answer of the API reaches the caller as a SeshError with the
// answer's status, code, message and retryAfterMs: the HTTP routes (400,
// 401, 403, 404, 405, 409, 413, 422, 429) and the live session's refusals
// and `error` frames. Also the HTTP routes' happy paths that the exchange
// test does not cover.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Sesh, SeshError } from "../../dist/index.js";
import { TestServer, freePort, mint, serviceToken, userToken, waitFor } from "../support/server.mjs";

let srv;

before(async () => {
  srv = await TestServer.start({ name: "sesh-ts-errors" });
});

after(async () => {
  await srv?.stop();
});

const as = (user, plan = "pro") => new Sesh({ url: srv.base, token: userToken(user, plan), WebSocket });

/** Asserts that `p` rejects with a SeshError of this status and code. */
async function fails(p, status, code, extra = () => true) {
  let err;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof SeshError, `a SeshError, not ${err}`);
  assert.equal(err.status, status, `${err.code}: ${err.message}`);
  assert.equal(err.code, code, err.message);
  assert.equal(typeof err.message, "string");
  assert.ok(err.message.length > 0);
  assert.ok(extra(err), `${err.code}: ${err.message} (retryAfterMs ${err.retryAfterMs})`);
  return err;
}

test("401: a malformed, forged or expired token", async () => {
  const bad = new Sesh({ url: srv.base, token: "not-a-token" });
  const e = await fails(bad.quota(), 401, "unauthorized");
  assert.ok(e.requestId, "the answer's X-Request-Id is kept");
  const good = userToken("ts-err-a");
  const forged = good.slice(0, good.lastIndexOf(".") + 1) + "AAAA" + good.slice(good.lastIndexOf(".") + 5);
  await fails(new Sesh({ url: srv.base, token: forged }).quota(), 401, "unauthorized");
  const expired = mint({ sub: "ts-err-a", exp: Math.floor(Date.now() / 1000) - 10 });
  await fails(new Sesh({ url: srv.base, token: () => expired }).createSession(), 401, "unauthorized");
});

test("403: not a member, not the owner, not a service token", async () => {
  const a = as("ts-err-owner");
  const s = await a.createSession({ members: ["ts-err-member"] });
  await fails(as("ts-err-stranger").getSession(s.id), 403, "forbidden");
  await fails(as("ts-err-member").endSession(s.id), 403, "forbidden");
  await fails(a.quotaCheck({ subject: "x", resource: "api" }), 403, "forbidden");
  await fails(a.metrics("someone-else"), 403, "forbidden");
});

test("404: an unknown session, a route the server does not have", async () => {
  const a = as("ts-err-a");
  await fails(a.getSession("0192cc09-1400-7e5f-8a6b-7c8d9e0f1a2b"), 404, "not_found");
  await fails(a.getSession("not-a-uuid"), 404, "not_found");
  await fails(a.request("GET", "/v1/nothing-here"), 404, "not_found");
});

test("405: a known path with another method", async () => {
  const a = as("ts-err-a");
  await fails(a.request("DELETE", "/v1/quota"), 405, "method_not_allowed");
  await fails(a.request("PUT", "/v1/sessions"), 405, "method_not_allowed");
});

test("409: points to an ended session", async () => {
  const a = as("ts-err-a");
  const s = await a.createSession();
  const ended = await a.endSession(s.id);
  assert.equal(ended.status, "ended");
  assert.ok(ended.endedAt);
  await fails(a.sendPoints(s.id, [{ kind: "k" }]), 409, "session_ended");
});

test("413: a body over 1 MiB", async () => {
  const a = as("ts-err-a");
  const s = await a.createSession();
  const big = "x".repeat(15 * 1024);
  const points = Array.from({ length: 100 }, (_, i) => ({ kind: "k", data: { big, i } }));
  await fails(a.sendPoints(s.id, points), 413, "payload_too_large");
});

test("422: bodies of the wrong shape", async () => {
  const a = as("ts-err-a");
  const s = await a.createSession();
  await fails(a.sendPoints(s.id, [{ kind: "" }]), 422, "validation_failed", (e) => e.message.includes("points[0]"));
  await fails(a.sendPoints(s.id, []), 422, "validation_failed");
  await fails(a.createSession({ title: "t".repeat(201) }), 422, "validation_failed");
  await fails(a.heartbeat({ status: "offline" }), 422, "validation_failed");
  await fails(
    a.sendPoints(s.id, [{ kind: "k", ts: Date.now() + 48 * 3600_000 }]),
    422,
    "validation_failed",
  );
});

test("400: a bad query or path id", async () => {
  const a = as("ts-err-a");
  await fails(a.listSessions({ from: "yesterday" }), 400, "bad_request");
  await fails(a.presence("not a user id!"), 400, "bad_request");
  const s = await a.createSession();
  await fails(a.request("GET", `/v1/sessions/${s.id}/points`, { query: { afterSeq: -1 } }), 400, "bad_request");
});

test("429: the api rate limit, with retryAfterMs from Retry-After", async () => {
  const free = as("ts-err-free", "free"); // 60 a minute, burst 20
  const answers = await Promise.allSettled(Array.from({ length: 30 }, () => free.quota()));
  const refused = answers.filter((r) => r.status === "rejected").map((r) => r.reason);
  assert.ok(refused.length >= 5, `${refused.length} of 30 refused`);
  for (const e of refused) {
    assert.ok(e instanceof SeshError);
    assert.equal(e.status, 429);
    assert.equal(e.code, "rate_limited");
    assert.ok(e.retryAfterMs >= 1000, `retryAfterMs ${e.retryAfterMs}`);
    assert.ok(e.retryable);
  }
});

test("quotaCheck answers a refusal as a decision; refunds give units back", async () => {
  const svc = new Sesh({ url: srv.base, token: serviceToken() });
  const subject = "ts-err-gateway-user";
  let last;
  for (let i = 0; i < 31; i++) last = await svc.quotaCheck({ subject, plan: "free", resource: "sessions" });
  assert.equal(last.allowed, false);
  assert.equal(last.limit, 30);
  assert.equal(last.remaining, 0);
  assert.ok(last.retryAfterMs > 0);
  assert.equal(last.error.code, "quota_exceeded");
  const refund = await svc.quotaRefund({ subject, resource: "sessions", cost: 1 });
  assert.equal(typeof refund.allowed, "boolean");
  const again = await svc.quotaCheck({ subject, plan: "free", resource: "sessions" });
  assert.equal(again.allowed, true);
  await fails(svc.quotaCheck({ subject, plan: "no-such-plan", resource: "api" }), 422, "validation_failed");
});

test("a request that never reaches a server is a transport error", async () => {
  const port = await freePort();
  const s = new Sesh({ url: `http://127.0.0.1:${port}`, token: "t" });
  const e = await fails(s.health(), undefined, "transport");
  assert.ok(e.retryable);
  const thrower = new Sesh({ url: srv.base, token: () => Promise.reject(new Error("no session")) });
  await fails(thrower.quota(), undefined, "unauthorized", (x) => x.message.includes("no session"));
});

test("the live session: refused joins stop with the refusal", async () => {
  const a = as("ts-err-owner2");
  const s = await a.createSession();
  const stranger = as("ts-err-stranger").join(s.id);
  const r1 = await stranger.stopped;
  assert.equal(r1.status, 403);
  assert.equal(r1.code, "forbidden");
  assert.equal(stranger.status, "closed");
  await assert.rejects(stranger.send({ kind: "k" }), (e) => e === r1);

  const unknown = a.join("0192cc09-1400-7e5f-8a6b-7c8d9e0f1a2b");
  const r2 = await unknown.stopped;
  assert.equal(r2.status, 404);

  await a.sendPoints(s.id, [{ kind: "k", value: 1 }, { kind: "k", value: 2 }]);
  await a.endSession(s.id);
  const late = a.join(s.id, { afterSeq: 0 });
  const seen = [];
  late.on("point", (p) => seen.push(p.seq));
  const ended = new Promise((r) => late.once("ended", r));
  const r3 = await late.stopped;
  assert.equal(r3.status, 409);
  assert.equal(r3.code, "session_ended");
  assert.deepEqual(await ended, { lastSeq: 2 });
  assert.deepEqual(seen, [1, 2], "what it asked for is read over HTTP when the join is refused");
});

test("the live session: error frames reject the send they are about", async (t) => {
  const a = as("ts-err-owner3");
  const s = await a.createSession();
  const live = a.join(s.id);
  await waitFor(() => live.status === "open", 30_000, "open");
  const e = await live.send({ kind: "k", ts: Date.now() + 48 * 3600_000 }).catch((x) => x);
  assert.ok(e instanceof SeshError, String(e));
  assert.equal(e.code, "validation_failed");
  assert.equal(e.status, undefined);
  assert.ok(e.ref, "the frame's ref is kept");
  const ok = await live.send({ kind: "k", value: 1 });
  assert.equal(ok.seq, 1);
  // Refused here, never sent: an id of 65 characters would get no ref back.
  const local = await live.send({ kind: "k", id: "x".repeat(65) }).catch((x) => x);
  assert.equal(local.code, "validation_failed");
  const errors = [];
  live.on("error", (x) => errors.push(x));
  live.signal({ cursor: 1 }); // not served yet: answered with an error frame
  await waitFor(() => errors.length > 0 || live.status !== "open", 1000, "an answer to the signal").catch(() => {});
  t.diagnostic(
    `a signal frame (contract section 10) was answered: ${
      errors.length ? `error ${errors[0].code}: ${errors[0].message}` : "with nothing (served)"
    }`,
  );
  await live.close();
  assert.equal(live.status, "closed");
  await assert.rejects(live.send({ kind: "k" }), (x) => x.code === "closed");
});

test("happy paths: get, list (paged), presence one and many, quota, metrics, exports", async () => {
  const a = as("ts-hp-owner");
  const made = [];
  for (let i = 0; i < 3; i++) made.push(await a.createSession({ title: `hp ${i}`, members: ["ts-hp-b"], metadata: { i } }));
  const got = await a.getSession(made[0].id);
  assert.equal(got.title, "hp 0");
  assert.deepEqual(got.metadata, { i: 0 });
  const listed = [];
  for await (const s of a.sessions({ limit: 2 })) listed.push(s.id);
  assert.deepEqual(listed, made.map((s) => s.id).reverse(), "newest first, across pages");
  const accepted = await a.sendPoints(made[0].id, [{ kind: "hr", value: 70 }, { kind: "hr", value: 72, id: "p2" }]);
  assert.deepEqual(accepted, { seqs: [1, 2] });
  const again = await a.sendPoints(made[0].id, [{ kind: "hr", value: 72, id: "p2" }]);
  assert.deepEqual(again, { seqs: [2] }, "an id sent again is stored once");
  const page = await a.getPoints(made[0].id, { afterSeq: 1 });
  assert.equal(page.lastSeq, 2);
  assert.deepEqual(page.points.map((p) => p.seq), [2]);
  const me = await a.heartbeat({ status: "busy", activity: "testing" });
  assert.equal(me.status, "busy");
  const one = await a.presence("ts-hp-owner");
  assert.equal(one.activity, "testing");
  const many = await a.presence(["ts-hp-b", "ts-hp-owner"]);
  assert.deepEqual(many.map((p) => p.userId), ["ts-hp-b", "ts-hp-owner"]);
  const q = await a.quota();
  assert.equal(q.plan, "pro");
  assert.equal(q.subject, "ts-hp-owner");
  const m = await a.metrics("ts-hp-owner", { granularity: "day" });
  assert.equal(m.granularity, "day");
  assert.ok(Array.isArray(m.buckets));
  const ex = await a.startExport("ts-hp-owner");
  assert.ok(ex.id);
  const st = await a.exportStatus("ts-hp-owner", ex.id);
  assert.equal(st.id, ex.id);
  // Before it is done the download is 409 export_not_ready (a small export
  // may be done already).
  const early = await a.downloadExport("ts-hp-owner", ex.id).catch((e) => e);
  if (early instanceof SeshError) {
    assert.equal(early.status, 409);
    assert.equal(early.code, "export_not_ready");
  } else {
    assert.equal((await a.exportStatus("ts-hp-owner", ex.id)).status, "done");
  }
  const done = await waitFor(
    async () => {
      const x = await a.exportStatus("ts-hp-owner", ex.id);
      return x.status === "done" ? x : undefined;
    },
    60_000,
    "the export",
  );
  const bytes = await a.downloadExport("ts-hp-owner", ex.id);
  assert.equal(bytes.length, done.bytes);
  assert.equal(bytes[0], 0x1f, "gzip");
  assert.equal((await a.health()).status, "ok");
});

test("members and viewers (contract section 10) when the server has them", async (t) => {
  const a = as("ts-mem-owner");
  const s = await a.createSession({ members: ["ts-mem-writer"] });
  let first;
  try {
    first = await a.setMember(s.id, "ts-mem-viewer", "viewer");
  } catch (e) {
    if (e instanceof SeshError && e.status === 404 && /route/.test(e.message)) {
      t.skip(`the server has no members route yet: PUT /v1/sessions/{id}/members/{userId} answers ${e.status} ${e.code} "${e.message}"`);
      return;
    }
    throw e;
  }
  assert.deepEqual(first.viewers, ["ts-mem-viewer"]);
  const viewer = as("ts-mem-viewer");
  const lv = viewer.join(s.id);
  await waitFor(() => lv.status === "open", 30_000, "the viewer joined");
  const refused = await lv.send({ kind: "k" }).catch((e) => e);
  assert.equal(refused.code, "forbidden");
  const removed = new Promise((r) => lv.once("removed", r));
  const after = await a.removeMember(s.id, "ts-mem-viewer");
  assert.deepEqual(after.viewers, []);
  assert.equal((await removed).code, "removed");
  const reason = await lv.stopped;
  assert.equal(reason.code, "removed");
  await fails(viewer.getSession(s.id), 403, "forbidden");
  await fails(a.removeMember(s.id, "ts-mem-viewer"), 404, "not_found");
  await fails(a.setMember(s.id, "ts-mem-owner", "writer"), 422, "validation_failed");
});
