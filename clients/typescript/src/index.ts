/**
 * `@sesh/client`: the Sesh API from browsers, Node >= 20, Deno, Bun and
 * Workers. `new Sesh({ url, token })` gives every HTTP route as a method
 * and `sesh.join(sessionId)` a live session that reconnects, resumes and
 * sends each point exactly once.
 *
 * @module
 */

export { Sesh } from "./client.js";
export type {
  FetchLike,
  MetricsQuery,
  PointsQuery,
  RawAnswer,
  RequestOptions,
  SeshOptions,
  SessionQuery,
  TokenSource,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { Live, randomId } from "./live.js";
export type { Ack, LiveDeps } from "./live.js";
export { SeshError, parseRetryAfter } from "./error.js";
export type { ClientErrorCode, SeshErrorInit } from "./error.js";
export { Machine, DEFAULT_BACKOFF, backoffCeiling, backoffDelay } from "./machine.js";
export type {
  Backoff,
  EventOutput,
  LiveEventName,
  LiveEvents,
  LiveOptions,
  LiveStatus,
  MachineDeps,
  Output,
  StatusChange,
} from "./machine.js";
export type * from "./wire.js";
