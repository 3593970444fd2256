/**
 * Every type that crosses the wire: request and answer bodies of the HTTP
 * API and the frames of a live session's WebSocket, written to match the
 * Rust crate `sesh-protocol` (protocol/src) and CONTRACT.md.
 *
 * This module holds types only (no runtime code): a later step generates it
 * from the API's JSON Schemas, so keep it that way. Field names are the
 * wire's camelCase. Types marked "contract section 10/11" are in the
 * contract but may not be served yet.
 *
 * @module
 */

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A free-form JSON object (`metadata`, `data`). */
export type JsonObject = { [key: string]: Json };

// ---------------------------------------------------------------- errors

/** Every `code` of an error answer or an `error` frame. */
export type ErrorCode =
  | "bad_request"
  | "invalid_json"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "method_not_allowed"
  | "session_ended"
  | "export_not_ready"
  | "payload_too_large"
  | "validation_failed"
  | "rate_limited"
  | "quota_exceeded"
  | "internal"
  | "unavailable"
  | "unknown_type"
  | "unsupported";

/** `{"code","message"}` inside an error answer. */
export interface ErrorDetail {
  code: ErrorCode;
  message: string;
}

/** Every HTTP error answer: `{"error":{"code","message"}}`. */
export interface ErrorBody {
  error: ErrorDetail;
}

// -------------------------------------------------------------- sessions

/** `active` or `ended`. */
export type SessionStatus = "active" | "ended";

/** The role of a member (contract section 10). */
export type MemberRole = "writer" | "viewer";

/** `POST /v1/sessions`. */
export interface CreateSession {
  /** At most 200 characters. */
  title?: string;
  /** Writers: user ids (with `viewers`, at most 100). */
  members?: string[];
  /** Read-only members (contract section 10). */
  viewers?: string[];
  /** At most 16 KiB as compact JSON. */
  metadata?: JsonObject;
}

/** A live connection in a session. */
export interface Participant {
  connId: string;
  userId: string;
  /** RFC 3339 UTC. */
  joinedAt: string;
  /** The connection's live state (contract section 10; `null` until set). */
  state?: JsonObject | null;
}

/** Live figures of one point kind over the points that carry a `value`. */
export interface KindStats {
  count: number;
  sum: number;
  min: number;
  max: number;
  /** The value of the highest seq. */
  last: number;
}

/** A session as `GET /v1/sessions/{id}` answers it. */
export interface Session {
  id: string;
  ownerId: string;
  title: string | null;
  members: string[];
  /** Contract section 10; absent from servers that predate it. */
  viewers?: string[];
  metadata: JsonObject;
  status: SessionStatus;
  /** RFC 3339 UTC. */
  startedAt: string;
  endedAt?: string;
  pointCount: number;
  lastSeq: number;
  participants: Participant[];
  /** Per kind; absent in older answers. */
  stats?: Record<string, KindStats>;
}

/** A session as the list answers it: no participants. */
export interface SessionSummary {
  id: string;
  ownerId: string;
  title: string | null;
  members: string[];
  viewers?: string[];
  metadata: JsonObject;
  status: SessionStatus;
  startedAt: string;
  endedAt?: string;
  pointCount: number;
  lastSeq: number;
  stats: Record<string, KindStats>;
}

/** `GET /v1/sessions`. */
export interface SessionList {
  sessions: SessionSummary[];
  /** Present while more remain. */
  nextCursor?: string;
}

/** A point as sent. */
export interface NewPoint {
  /** 1-64 characters: the client's idempotency key. */
  id?: string;
  /** 1-64 characters. */
  kind: string;
  /** A finite number. */
  value?: number;
  /** At most 16 KiB as compact JSON. */
  data?: JsonObject;
  /** Milliseconds since the epoch (server time when absent). */
  ts?: number;
}

/** A point as stored and broadcast. */
export interface StoredPoint {
  /** 1, 2, 3 ... per session, no gaps. */
  seq: number;
  userId: string;
  id?: string;
  kind: string;
  value?: number;
  data?: JsonObject;
  ts: number;
}

/** `POST /v1/sessions/{id}/points`. */
export interface PointsBatch {
  /** 1-100 points. */
  points: NewPoint[];
}

/** The answer to `POST /v1/sessions/{id}/points`. */
export interface PointsAccepted {
  seqs: number[];
}

/** `GET /v1/sessions/{id}/points`. */
export interface PointsPage {
  points: StoredPoint[];
  /** The session's latest seq. */
  lastSeq: number;
}

/** `PUT /v1/sessions/{id}/members/{userId}` (contract section 10). */
export interface SetMember {
  role: MemberRole;
}

// -------------------------------------------------------------- presence

/** A status a heartbeat may set. */
export type HeartbeatStatus = "online" | "away" | "busy";

/** A status as shown. */
export type PresenceStatus = "online" | "away" | "busy" | "offline";

/** `POST /v1/presence/heartbeat`. */
export interface Heartbeat {
  status?: HeartbeatStatus;
  /** At most 128 characters. */
  activity?: string;
}

/** A user's presence. */
export interface Presence {
  userId: string;
  status: PresenceStatus;
  lastSeen?: string;
  activity?: string;
  connections: number;
}

/** `GET /v1/presence?users=`. */
export interface PresenceBatch {
  users: Presence[];
}

// ----------------------------------------------------------------- quota

/** A metered resource. */
export type Resource = "api" | "sessions" | "points";

/** `POST /v1/quota/check` (service tokens). */
export interface QuotaCheck {
  subject: string;
  /** Default `free`. */
  plan?: string;
  resource: Resource;
  /** At least 1; default 1. */
  cost?: number;
}

/** `POST /v1/quota/refund` (service tokens). */
export interface QuotaRefund {
  subject: string;
  resource: Resource;
  cost: number;
}

/** The answer of a quota check (200 allowed, 429 not) or a refund. */
export interface QuotaDecision {
  allowed: boolean;
  /** `null` where the plan is unlimited. */
  limit: number | null;
  remaining: number | null;
  resetMs: number | null;
  retryAfterMs?: number;
  /** Beside the figures of a 429. */
  error?: ErrorDetail;
}

/** One resource in `GET /v1/quota`. */
export interface ResourceUsage {
  limit: number | null;
  used: number;
  remaining: number | null;
  resetMs: number | null;
  resetsAt: string | null;
  /** `points` only: units held by live sessions. */
  reserved?: number;
}

/** `GET /v1/quota`. */
export interface QuotaOverview {
  subject: string;
  plan: string;
  api: ResourceUsage;
  sessions: ResourceUsage;
  points: ResourceUsage;
}

/** `GET /health`. */
export interface Health {
  status: string;
}

// ------------------------------------------------------------- analytics

/** Bucket width of `GET /v1/users/{id}/metrics`. */
export type Granularity = "hour" | "day" | "week" | "month";

/** One bucket. */
export interface Bucket {
  start: string;
  kind: string;
  count: number;
  sum: number | null;
  min: number | null;
  max: number | null;
  avg: number | null;
}

/** `GET /v1/users/{userId}/metrics`. */
export interface MetricsAnswer {
  userId: string;
  granularity: Granularity;
  buckets: Bucket[];
}

/** The state of a user export. */
export type ExportState = "pending" | "running" | "done" | "failed" | "expired";

/** `POST /v1/users/{id}/exports` and `GET .../exports/{exportId}`. */
export interface ExportStatus {
  id: string;
  status: ExportState;
  sessions?: number;
  points?: number;
  bytes?: number;
  sha256?: string;
}

// ----------------------------------------------- webhooks (section 11)

/** An event type a webhook can subscribe to (contract section 11). */
export type WebhookEventType =
  | "session.created"
  | "session.ended"
  | "participant.joined"
  | "participant.left"
  | "member.added"
  | "member.removed"
  | "presence.changed"
  | "export.done"
  | "export.failed"
  | "quota.exceeded";

/** `POST /v1/webhooks`. */
export interface CreateWebhook {
  /** http or https, at most 2048 characters. */
  url: string;
  /** Default: every type. */
  events?: WebhookEventType[];
  /** At most 256 characters. */
  description?: string;
}

/** A webhook endpoint. */
export interface Webhook {
  id: string;
  url: string;
  events: WebhookEventType[];
  description?: string;
  createdAt: string;
  /** Only in the answer to the creation. */
  secret?: string;
}

/** `GET /v1/webhooks`. */
export interface WebhookList {
  webhooks: Webhook[];
}

/** `DELETE /v1/webhooks/{id}`. */
export interface WebhookDeleted {
  id: string;
  deleted: true;
}

/** One delivery of an event to an endpoint. */
export interface WebhookDelivery {
  eventId: string;
  type: WebhookEventType;
  attempts: number;
  status: "pending" | "delivered" | "failed";
  lastStatus?: number;
  nextAttemptAt?: string;
}

/** `GET /v1/webhooks/{id}/deliveries`. */
export interface WebhookDeliveries {
  deliveries: WebhookDelivery[];
}

// ------------------------------------------------------ WebSocket frames

/** First frame on join. */
export interface WelcomeFrame {
  type: "welcome";
  sessionId: string;
  connId: string;
  userId: string;
  lastSeq: number;
  /** Who is connected, this connection included. */
  participants: Participant[];
}

/** Another connection joined. */
export interface JoinedFrame {
  type: "joined";
  connId: string;
  userId: string;
  joinedAt: string;
  state?: JsonObject | null;
}

/** Another connection left. */
export interface LeftFrame {
  type: "left";
  connId: string;
  userId: string;
}

/** A stored point of another participant (or of a replay). */
export interface PointFrame extends StoredPoint {
  type: "point";
}

/** Our point is durable. */
export interface AckFrame {
  type: "ack";
  id?: string;
  seq: number;
}

/** A replay page is done. */
export interface ResumedFrame {
  type: "resumed";
  /** The session's latest seq. */
  lastSeq: number;
  /** The last seq replayed (`afterSeq` when none was). */
  throughSeq: number;
  /** Stored points remain after `throughSeq`. */
  more: boolean;
}

/** Answer to a `ping`. */
export interface PongFrame {
  type: "pong";
}

/** Something went wrong; the socket stays open. */
export interface ErrorFrame {
  type: "error";
  code: ErrorCode;
  message: string;
  /** The point id the error is about. */
  ref?: string;
  retryAfterMs?: number;
}

/** The session ended; close 1000 follows. */
export interface EndedFrame {
  type: "ended";
  lastSeq: number;
}

/** The membership changed (contract section 10). */
export interface MembersFrame {
  type: "members";
  members: string[];
  viewers: string[];
}

/** This user was removed from the session; close 1008 follows (section 10). */
export interface RemovedFrame {
  type: "removed";
}

/** A signal from another connection (contract section 10). */
export interface SignalFrame {
  type: "signal";
  from: string;
  userId: string;
  data: JsonObject;
}

/** Another connection's live state (contract section 10). */
export interface StateFrame {
  type: "state";
  connId: string;
  userId: string;
  data: JsonObject;
}

/** Every frame the server sends. */
export type ServerFrame =
  | WelcomeFrame
  | JoinedFrame
  | LeftFrame
  | PointFrame
  | AckFrame
  | ResumedFrame
  | PongFrame
  | ErrorFrame
  | EndedFrame
  | MembersFrame
  | RemovedFrame
  | SignalFrame
  | StateFrame;

/** A point to store. */
export interface ClientPointFrame extends NewPoint {
  type: "point";
}

/** Replay the stored points after `afterSeq`. */
export interface ResumeFrame {
  type: "resume";
  afterSeq: number;
}

/** Keep-alive. */
export interface PingFrame {
  type: "ping";
}

/** End the session (owner only). */
export interface EndFrame {
  type: "end";
}

/** Room state that is not data (contract section 10). */
export interface ClientSignalFrame {
  type: "signal";
  /** At most 4 KiB. */
  data: JsonObject;
  /** Only this connection. */
  to?: string;
}

/** This connection's live state (contract section 10). */
export interface ClientStateFrame {
  type: "state";
  /** At most 2 KiB. */
  data: JsonObject;
}

/** Every frame a client sends. */
export type ClientFrame =
  | ClientPointFrame
  | ResumeFrame
  | PingFrame
  | EndFrame
  | ClientSignalFrame
  | ClientStateFrame;
