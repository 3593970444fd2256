// The page side of the Chromium test, bundled with esbuild: one client of
// the package as a browser user has it (global fetch and WebSocket, the
// token from a function), driven from Node through `window.harness`.
import { Sesh, SeshError } from "../../dist/index.js";

const state = {
  sesh: undefined,
  live: undefined,
  tokenCalls: 0,
  points: [],
  status: [],
  errors: [],
  sends: [],
};

function errorShape(e) {
  return e instanceof SeshError
    ? { isSeshError: true, name: e.name, status: e.status ?? null, code: e.code, message: e.message, retryAfterMs: e.retryAfterMs ?? null }
    : { isSeshError: false, message: String(e) };
}

window.harness = {
  init(url, token) {
    state.sesh = new Sesh({
      url,
      token: async () => {
        state.tokenCalls++;
        return token;
      },
    });
  },
  join(sessionId) {
    const live = state.sesh.join(sessionId);
    state.live = live;
    live.on("point", (p) => state.points.push({ seq: p.seq, userId: p.userId, id: p.id }));
    live.on("status", (s) => state.status.push(s.status));
    live.on("error", (e) => state.errors.push(errorShape(e)));
  },
  send(prefix, from, to) {
    for (let n = from; n < to; n++) {
      state.sends.push(
        state.live.send({ kind: prefix, value: n, data: { n } }).then(
          (ack) => ({ ok: true, ...ack }),
          (e) => ({ ok: false, error: errorShape(e) }),
        ),
      );
    }
  },
  acks() {
    return Promise.all(state.sends);
  },
  view() {
    return {
      status: state.live?.status,
      lastSeq: state.live?.lastSeq ?? null,
      unacked: state.live?.unacked ?? 0,
      tokenCalls: state.tokenCalls,
      points: state.points,
      statuses: state.status,
      errors: state.errors,
      secure: window.isSecureContext,
    };
  },
  async errorOf(method, ...args) {
    try {
      await state.sesh[method](...args);
      return { isSeshError: false, message: "no error" };
    } catch (e) {
      return errorShape(e);
    }
  },
  async badToken(url) {
    try {
      await new Sesh({ url, token: "not-a-token" }).quota();
      return { isSeshError: false, message: "no error" };
    } catch (e) {
      return errorShape(e);
    }
  },
  async close() {
    await state.live?.close();
    return state.live?.status;
  },
};
