// Compiled (not run) against the built declarations: the public API as a
// TypeScript user writes it, with strict types. A wrong type here fails
// `npm run test:unit`.
import WebSocket from "ws";
import { Sesh, SeshError, type Ack, type LiveStatus, type StoredPoint } from "../../dist/index.js";
import type { CreateSession, ServerFrame, Session } from "../../dist/wire.js";
import { Machine, type Output } from "../../dist/machine.js";

export async function usage(): Promise<void> {
  const sesh = new Sesh({ url: "http://127.0.0.1:8787", token: async () => "t", WebSocket });
  const body: CreateSession = { title: "t", members: ["bob"], viewers: [], metadata: { a: [1, "x", null] } };
  const s: Session = await sesh.createSession(body);
  const one = await sesh.presence("bob");
  const many = await sesh.presence(["bob", "carol"]);
  const n: number = one.connections + many.length;
  for await (const p of sesh.points(s.id, { afterSeq: n })) {
    const seq: number = p.seq;
    void seq;
  }
  for await (const x of sesh.sessions({ from: new Date(), status: "ended" })) void x.stats;
  const d = await sesh.quotaCheck({ subject: "u", resource: "points", cost: 2 });
  const left: number | null = d.remaining;
  void left;
  const live = sesh.join(s.id, { afterSeq: 0, backoff: { maxMs: 5000 } });
  const off: () => void = live.on("point", (p: StoredPoint) => void p.kind);
  live.on("status", (st) => {
    const v: LiveStatus = st.status;
    void v;
  });
  live.on("removed", (e: SeshError) => void e.code);
  live.on("ended", ({ lastSeq }) => void lastSeq);
  off();
  const ack: Ack = await live.send({ kind: "k", value: 1, data: { x: 1 } });
  void ack.seq;
  const last: number | undefined = live.lastSeq;
  void last;
  await live.close();
  try {
    await sesh.getSession("x");
  } catch (e) {
    if (e instanceof SeshError) {
      const r: number | undefined = e.retryAfterMs;
      const st: number | undefined = e.status;
      void [r, st, e.code, e.message];
    }
  }
  const m = new Machine({}, { random: Math.random, newId: () => "id" });
  const o: Output | undefined = m.pollOutput();
  if (o?.type === "event" && o.name === "point") void o.data.seq;
  const f = JSON.parse("{}") as ServerFrame;
  if (f.type === "ack") void f.seq;
}
