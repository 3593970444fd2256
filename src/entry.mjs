// The Worker's entry module: worker-build's bundle (build/index.js) as it
// is, except for the object classes, declared here as `DurableObject`
// subclasses that hold the Rust object and forward to it:
// - QuotaDO and PresenceDO serve JS RPC (`rpc`), which the runtime offers
//   only on such classes; a fetch to an object costs about three times the
//   runtime CPU of an RPC call carrying the same data (see `http::Hop`).
// - ActiveSessionDO takes a WebSocket frame synchronously (`frame`) and
//   returns a promise only when something is left to wait for (`finish`):
//   most frames need none. A request's answer does not wait for what it
//   left (a points batch's flush to D1): `finish` runs after it.
import { DurableObject } from "cloudflare:workers";
import * as rust from "../build/index.js";

export default rust.default;
export const ExportDO = rust.ExportDO;

export class QuotaDO extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.rust = new rust.QuotaDO(ctx, env);
  }
  fetch(request) {
    return this.rust.fetch(request);
  }
  rpc(call, user, plan, service, payload) {
    return this.rust.rpc(call, user, plan, service, payload);
  }
}

export class PresenceDO extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.rust = new rust.PresenceDO(ctx, env);
  }
  fetch(request) {
    return this.rust.fetch(request);
  }
  alarm() {
    return this.rust.alarm();
  }
  rpc(call, user, plan, service, payload) {
    return this.rust.rpc(call, user, plan, service, payload);
  }
}

export class ActiveSessionDO extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.rust = new rust.ActiveSessionDO(ctx, env);
  }
  async fetch(request) {
    const response = await this.rust.fetch(request);
    // An answered points batch may leave its flush to D1: it runs after
    // the answer (the object stays up for it; the alarm retries a flush
    // cut short).
    if (this.rust.pending()) this.rust.finish();
    return response;
  }
  alarm() {
    return this.rust.alarm();
  }
  webSocketMessage(ws, message) {
    if (this.rust.frame(ws, message)) return this.rust.finish();
  }
  webSocketClose(ws, code, reason, wasClean) {
    return this.rust.webSocketClose(ws, code, reason, wasClean);
  }
  webSocketError(ws, error) {
    return this.rust.webSocketError(ws, error);
  }
}
