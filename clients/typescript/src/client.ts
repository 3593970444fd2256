import { parseRetryAfter, SeshError } from "./error.js";
import { Live } from "./live.js";
import type { LiveOptions } from "./machine.js";
import type {
  CreateSession,
  CreateWebhook,
  ExportStatus,
  Granularity,
  Health,
  Heartbeat,
  MemberRole,
  MetricsAnswer,
  NewPoint,
  PointsAccepted,
  PointsPage,
  Presence,
  PresenceBatch,
  QuotaCheck,
  QuotaDecision,
  QuotaOverview,
  QuotaRefund,
  Session,
  SessionList,
  SessionStatus,
  SessionSummary,
  StoredPoint,
  Webhook,
  WebhookDeleted,
  WebhookDeliveries,
  WebhookList,
} from "./wire.js";

/** A token, or where to get one (called before every request and connect). */
export type TokenSource = string | (() => string | Promise<string>);

/** The `fetch` this client needs. */
export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

/**
 * The WebSocket this client needs: the standard constructor (browsers,
 * Deno, Bun, Workers, Node >= 22) or a compatible one such as `ws`'s.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** What {@link Sesh} is built from. */
export interface SeshOptions {
  /** The server, e.g. `https://sesh.example.com` or `http://127.0.0.1:8787`. */
  url: string;
  /** A token, or a function returning one (or a promise of one). */
  token: TokenSource;
  /** Where there is no global `WebSocket` (Node 20): e.g. `ws`'s default export. */
  WebSocket?: unknown;
  /** Default: the global `fetch`. */
  fetch?: FetchLike;
  /**
   * Send the latest `Sesh-Bookmark` the server answered with on later
   * requests, so reads see this client's writes (contract section 13).
   * Default true.
   */
  readYourWrites?: boolean;
  /** Defaults for every {@link Sesh.join}. */
  live?: LiveOptions;
}

/** Options of the low-level {@link Sesh.request}. */
export interface RequestOptions {
  /** A JSON body. */
  body?: unknown;
  /** Query parameters; `undefined` ones are left out. */
  query?: Record<string, string | number | undefined>;
  /** Send the token (default true). */
  auth?: boolean;
  /** Extra headers. */
  headers?: Record<string, string>;
  /** Abort the request. */
  signal?: AbortSignal;
}

/** Filters of `GET /v1/sessions`. */
export interface SessionQuery {
  /** Sessions started at or after this time (RFC 3339 or a Date). */
  from?: string | Date;
  /** Sessions started before this time. */
  to?: string | Date;
  status?: SessionStatus;
  /** Page size, at most 100. */
  limit?: number;
  /** A `nextCursor` to start from. */
  cursor?: string;
}

/** Parameters of `GET .../points`. */
export interface PointsQuery {
  /** Points with a seq above this one (default 0: all). */
  afterSeq?: number;
  /** Page size, at most 1000. */
  limit?: number;
}

/** Parameters of `GET /v1/users/{id}/metrics`. */
export interface MetricsQuery {
  granularity?: Granularity;
  from?: string | Date;
  to?: string | Date;
  kind?: string;
}

/** An answer as {@link Sesh.raw} gives it. */
export interface RawAnswer {
  status: number;
  headers: Headers;
  text: string;
}

/** A Sesh server's API: every HTTP route, and {@link Sesh.join} for live sessions. */
export class Sesh {
  /** The server's base URL, without a trailing slash. */
  readonly url: string;
  private readonly tokenSource: TokenSource;
  private readonly fetchFn: FetchLike;
  private readonly wsCtor: WebSocketConstructor | undefined;
  private readonly readYourWrites: boolean;
  private readonly liveDefaults: LiveOptions;
  private bookmark: string | undefined;

  constructor(options: SeshOptions) {
    if (!options || typeof options.url !== "string") throw new TypeError("Sesh: `url` is required");
    if (options.token === undefined) throw new TypeError("Sesh: `token` is required");
    this.url = options.url.replace(/\/+$/, "");
    this.tokenSource = options.token;
    const f = options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    if (typeof f !== "function") throw new TypeError("Sesh: no global fetch; pass `fetch`");
    this.fetchFn = (input, init) => f(input, init);
    this.wsCtor = (options.WebSocket ??
      (globalThis as { WebSocket?: unknown }).WebSocket) as WebSocketConstructor | undefined;
    this.readYourWrites = options.readYourWrites ?? true;
    this.liveDefaults = options.live ?? {};
  }

  // --------------------------------------------------------------- live

  /**
   * Joins a session over a WebSocket. Returns at once; the connect happens
   * in the background (`status` then `welcome` events). It reconnects by
   * itself with a fresh token each time, resumes from {@link Live.lastSeq}
   * and resends unacked points until the session ends, this user is
   * removed, or {@link Live.close} is called.
   */
  join(sessionId: string, options: LiveOptions = {}): Live {
    if (typeof this.wsCtor !== "function") {
      throw new TypeError(
        "Sesh: no global WebSocket here (Node 20); pass one, e.g. `new Sesh({ url, token, WebSocket })` with `import WebSocket from \"ws\"`",
      );
    }
    return new Live(
      {
        sessionId,
        WebSocket: this.wsCtor,
        socketUrl: (token) => this.socketUrl(sessionId, token),
        token: () => this.token(),
        getSession: (id) => this.getSession(id),
        readPoints: async (id, afterSeq) => {
          const all: StoredPoint[] = [];
          for await (const p of this.points(id, { afterSeq, limit: 1000 })) all.push(p);
          return all;
        },
      },
      { ...this.liveDefaults, ...options, backoff: { ...this.liveDefaults.backoff, ...options.backoff } },
    );
  }

  /** The WebSocket URL of a session, with `?token=`. */
  socketUrl(sessionId: string, token: string): string {
    const base = this.url.replace(/^http(s?):\/\//i, (_m, s: string) => `ws${s}://`);
    return `${base}/v1/sessions/${seg(sessionId)}/ws?token=${encodeURIComponent(token)}`;
  }

  /** A token from the token source. */
  async token(): Promise<string> {
    const t = this.tokenSource;
    let token: unknown;
    try {
      token = typeof t === "function" ? await t() : t;
    } catch (e) {
      if (e instanceof SeshError) throw e;
      throw new SeshError({ code: "unauthorized", message: `the token function failed: ${String(e)}`, cause: e });
    }
    if (typeof token !== "string") {
      throw new SeshError({ code: "unauthorized", message: "the token function gave no string" });
    }
    return token;
  }

  // ------------------------------------------------------------ sessions

  /** `GET /health` (no token). */
  health(): Promise<Health> {
    return this.request("GET", "/health", { auth: false });
  }

  /** `POST /v1/sessions`: a new session owned by the caller. */
  createSession(body: CreateSession = {}): Promise<Session> {
    return this.request("POST", "/v1/sessions", { body });
  }

  /** `GET /v1/sessions/{id}`: the session with its live participants. */
  getSession(sessionId: string): Promise<Session> {
    return this.request("GET", `/v1/sessions/${seg(sessionId)}`);
  }

  /** `POST /v1/sessions/{id}/end` (owner only). */
  endSession(sessionId: string): Promise<Session> {
    return this.request("POST", `/v1/sessions/${seg(sessionId)}/end`);
  }

  /**
   * `POST /v1/sessions/{id}/points`: 1-100 points, stored all or none;
   * their seqs in order. Points that carry an `id` are stored once however
   * often they are sent, so a call that failed on the way can be repeated.
   */
  sendPoints(sessionId: string, points: NewPoint[]): Promise<PointsAccepted> {
    return this.request("POST", `/v1/sessions/${seg(sessionId)}/points`, { body: { points } });
  }

  /** `GET /v1/sessions/{id}/points?afterSeq=&limit=`: one page. */
  getPoints(sessionId: string, query: PointsQuery = {}): Promise<PointsPage> {
    return this.request("GET", `/v1/sessions/${seg(sessionId)}/points`, {
      query: { afterSeq: query.afterSeq, limit: query.limit },
    });
  }

  /** Every point of a session after `afterSeq`, in seq order, page by page. */
  async *points(sessionId: string, query: PointsQuery = {}): AsyncGenerator<StoredPoint, void, undefined> {
    let after = query.afterSeq ?? 0;
    for (;;) {
      const page = await this.getPoints(sessionId, { afterSeq: after, limit: query.limit });
      if (page.points.length === 0) return;
      yield* page.points;
      after = page.points[page.points.length - 1]!.seq;
      if (after >= page.lastSeq) return;
    }
  }

  /** `GET /v1/sessions?from=&to=&status=&limit=&cursor=`: one page. */
  listSessions(query: SessionQuery = {}): Promise<SessionList> {
    return this.request("GET", "/v1/sessions", {
      query: {
        from: time(query.from),
        to: time(query.to),
        status: query.status,
        limit: query.limit,
        cursor: query.cursor,
      },
    });
  }

  /** The caller's sessions matching `query`, newest first, following `nextCursor`. */
  async *sessions(query: SessionQuery = {}): AsyncGenerator<SessionSummary, void, undefined> {
    let cursor = query.cursor;
    do {
      const page = await this.listSessions({ ...query, cursor });
      yield* page.sessions;
      cursor = page.nextCursor;
    } while (cursor !== undefined);
  }

  /**
   * `PUT /v1/sessions/{id}/members/{userId}` (owner only; contract section
   * 10): adds the user as a writer or a viewer, or changes their role.
   */
  setMember(sessionId: string, userId: string, role: MemberRole = "writer"): Promise<Session> {
    return this.request("PUT", `/v1/sessions/${seg(sessionId)}/members/${seg(userId)}`, { body: { role } });
  }

  /**
   * `DELETE /v1/sessions/{id}/members/{userId}` (the owner, or the member
   * themself to leave; contract section 10).
   */
  removeMember(sessionId: string, userId: string): Promise<Session> {
    return this.request("DELETE", `/v1/sessions/${seg(sessionId)}/members/${seg(userId)}`);
  }

  // ------------------------------------------------------------ presence

  /** `POST /v1/presence/heartbeat`: the caller's own presence. */
  heartbeat(body: Heartbeat = {}): Promise<Presence> {
    return this.request("POST", "/v1/presence/heartbeat", { body });
  }

  /** `GET /v1/presence/{userId}`, or `GET /v1/presence?users=` for a list (at most 100, in the order asked). */
  presence(userId: string): Promise<Presence>;
  presence(userIds: readonly string[]): Promise<Presence[]>;
  async presence(who: string | readonly string[]): Promise<Presence | Presence[]> {
    if (typeof who === "string") return this.request("GET", `/v1/presence/${seg(who)}`);
    const batch = await this.request<PresenceBatch>("GET", "/v1/presence", { query: { users: who.join(",") } });
    return batch.users;
  }

  // --------------------------------------------------------------- quota

  /** `GET /v1/quota`: the caller's plan and usage. */
  quota(): Promise<QuotaOverview> {
    return this.request("GET", "/v1/quota");
  }

  /**
   * `POST /v1/quota/check` (service tokens): the decision, allowed or not.
   * A refusal (429) is an answer here, not an error: `allowed` is false and
   * `retryAfterMs` says when to try again.
   */
  async quotaCheck(body: QuotaCheck): Promise<QuotaDecision> {
    const a = await this.raw("POST", "/v1/quota/check", { body });
    if (a.status === 200 || a.status === 429) {
      const d = parseJson(a.text) as QuotaDecision | undefined;
      if (d && typeof d.allowed === "boolean") return d;
    }
    throw answerError(a);
  }

  /** `POST /v1/quota/refund` (service tokens): gives units back. */
  quotaRefund(body: QuotaRefund): Promise<QuotaDecision> {
    return this.request("POST", "/v1/quota/refund", { body });
  }

  // ----------------------------------------------------------- analytics

  /** `GET /v1/users/{userId}/metrics` (the user themself or a service token). */
  metrics(userId: string, query: MetricsQuery = {}): Promise<MetricsAnswer> {
    return this.request("GET", `/v1/users/${seg(userId)}/metrics`, {
      query: {
        granularity: query.granularity,
        from: time(query.from),
        to: time(query.to),
        kind: query.kind,
      },
    });
  }

  /** `POST /v1/users/{userId}/exports`: starts an export (or answers the one under way). */
  startExport(userId: string): Promise<ExportStatus> {
    return this.request("POST", `/v1/users/${seg(userId)}/exports`);
  }

  /** `GET /v1/users/{userId}/exports/{exportId}`. */
  exportStatus(userId: string, exportId: string): Promise<ExportStatus> {
    return this.request("GET", `/v1/users/${seg(userId)}/exports/${seg(exportId)}`);
  }

  /**
   * `GET .../exports/{exportId}/download`: the gzip'd NDJSON file (409
   * `export_not_ready` before it is done).
   */
  async downloadExport(userId: string, exportId: string): Promise<Uint8Array> {
    const resp = await this.downloadResponse(userId, exportId);
    return new Uint8Array(await resp.arrayBuffer());
  }

  /** The same as {@link Sesh.downloadExport}, as a stream of bytes. */
  async downloadExportStream(userId: string, exportId: string): Promise<ReadableStream<Uint8Array>> {
    const resp = await this.downloadResponse(userId, exportId);
    if (resp.body === null) throw new SeshError({ status: resp.status, code: "decode", message: "an empty download" });
    return resp.body;
  }

  // ------------------------------------------------ webhooks (section 11)

  /** `POST /v1/webhooks` (service tokens): the answer holds the signing `secret`, only here. */
  createWebhook(body: CreateWebhook): Promise<Webhook> {
    return this.request("POST", "/v1/webhooks", { body });
  }

  /** `GET /v1/webhooks`. */
  async listWebhooks(): Promise<Webhook[]> {
    return (await this.request<WebhookList>("GET", "/v1/webhooks")).webhooks;
  }

  /** `GET /v1/webhooks/{id}`. */
  getWebhook(id: string): Promise<Webhook> {
    return this.request("GET", `/v1/webhooks/${seg(id)}`);
  }

  /** `DELETE /v1/webhooks/{id}`. */
  deleteWebhook(id: string): Promise<WebhookDeleted> {
    return this.request("DELETE", `/v1/webhooks/${seg(id)}`);
  }

  /** `GET /v1/webhooks/{id}/deliveries?limit=`, newest first. */
  webhookDeliveries(id: string, limit?: number): Promise<WebhookDeliveries> {
    return this.request("GET", `/v1/webhooks/${seg(id)}/deliveries`, { query: { limit } });
  }

  // ------------------------------------------------------------ plumbing

  /**
   * Any route: its JSON answer, or a {@link SeshError} for an error answer
   * (with `status`, `code`, `message`, `retryAfterMs`) or a failed request.
   */
  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const a = await this.raw(method, path, options);
    if (a.status < 200 || a.status > 299) throw answerError(a);
    if (a.text === "") return undefined as T;
    const v = parseJson(a.text);
    if (v === undefined) {
      throw new SeshError({
        status: a.status,
        code: "decode",
        message: `${method} ${path}: the answer is not JSON: ${a.text.slice(0, 200)}`,
        requestId: a.headers.get("x-request-id") ?? undefined,
      });
    }
    return v as T;
  }

  /** Any route: the status, headers and body text, whatever the status. */
  async raw(method: string, path: string, options: RequestOptions = {}): Promise<RawAnswer> {
    const resp = await this.fetchAnswer(method, path, options);
    let text: string;
    try {
      text = await resp.text();
    } catch (e) {
      throw new SeshError({ code: "transport", message: `${method} ${path}: reading the answer: ${String(e)}`, cause: e });
    }
    return { status: resp.status, headers: resp.headers, text };
  }

  private async downloadResponse(userId: string, exportId: string): Promise<Response> {
    const path = `/v1/users/${seg(userId)}/exports/${seg(exportId)}/download`;
    const resp = await this.fetchAnswer("GET", path, {});
    if (resp.ok) return resp;
    const text = await resp.text().catch(() => "");
    throw answerError({ status: resp.status, headers: resp.headers, text });
  }

  private async fetchAnswer(method: string, path: string, options: RequestOptions): Promise<Response> {
    const headers: Record<string, string> = { accept: "application/json", ...options.headers };
    if (options.auth ?? true) headers["authorization"] = `Bearer ${await this.token()}`;
    let body: string | undefined;
    if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers["content-type"] = "application/json";
    }
    if (this.readYourWrites && this.bookmark !== undefined && path.startsWith("/v1/")) {
      headers["sesh-bookmark"] = this.bookmark;
    }
    let url = this.url + path;
    if (options.query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(options.query)) if (v !== undefined) q.append(k, String(v));
      const s = q.toString();
      if (s !== "") url += (url.includes("?") ? "&" : "?") + s;
    }
    let resp: Response;
    try {
      resp = await this.fetchFn(url, { method, headers, body, signal: options.signal });
    } catch (e) {
      throw new SeshError({ code: "transport", message: `${method} ${path}: ${errorText(e)}`, cause: e });
    }
    const mark = resp.headers.get("sesh-bookmark");
    if (mark !== null && mark !== "") this.bookmark = mark;
    return resp;
  }
}

function answerError(a: RawAnswer): SeshError {
  return SeshError.fromAnswer(
    a.status,
    a.text,
    parseRetryAfter(a.headers.get("retry-after")),
    a.headers.get("x-request-id") ?? undefined,
  );
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function errorText(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    return cause instanceof Error ? `${e.message} (${cause.message})` : e.message;
  }
  return String(e);
}

/** A path segment, percent-encoded. */
function seg(s: string): string {
  return encodeURIComponent(s);
}

function time(t: string | Date | undefined): string | undefined {
  return t instanceof Date ? t.toISOString() : t;
}
