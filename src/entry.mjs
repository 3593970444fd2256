// The Worker's entry module: worker-build's bundle (build/index.js) as it
// is, except that the objects called over JS RPC are declared here as
// `DurableObject` subclasses. The runtime offers RPC only on such classes
// and worker-build's are plain, so each subclass holds the Rust object and
// forwards to it; a fetch to an object costs about three times the runtime
// CPU of an RPC call carrying the same data (see `http::Hop`).
import { DurableObject } from "cloudflare:workers";
import * as rust from "../build/index.js";

export default rust.default;
export const ActiveSessionDO = rust.ActiveSessionDO;
export const ExportDO = rust.ExportDO;

export class QuotaDO extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.rust = new rust.QuotaDO(ctx, env);
  }
  fetch(request) {
    return this.rust.fetch(request);
  }
  rpc(path, user, plan, service, body) {
    return this.rust.rpc(path, user, plan, service, body);
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
  rpc(path, user, plan, service, body) {
    return this.rust.rpc(path, user, plan, service, body);
  }
}
