/**
 * The logic of a live session connection as a pure state machine: no
 * sockets, no timers, no clock, no randomness of its own. Whoever drives it
 * (the {@link Live} handle, or a test with a fake server and a virtual
 * clock) feeds it what happened with the time in milliseconds, carries out
 * its {@link Output}s (connect, send a frame, close, tell the user) and
 * wakes it at {@link Machine.pollTimeout}.
 *
 * What it guarantees, whatever the drops: every point given to
 * {@link Machine.send} is sent with its idempotency id until it is acked (or
 * refused), so the server stores it exactly once; and every stored point of
 * another participant is emitted exactly once and in `seq` order, because
 * points are released only when every lower `seq` is known (replayed,
 * received, or acked as one of ours), and a reconnect resumes from the
 * highest `seq` released, following `more`.
 *
 * The same design as the Rust client's `machine.rs`.
 *
 * @module
 */

import { SeshError } from "./error.js";
import type {
  ClientFrame,
  JsonObject,
  NewPoint,
  Participant,
  ServerFrame,
  StoredPoint,
} from "./wire.js";

/**
 * Delays between reconnect attempts: exponential growth with full jitter
 * (each delay is uniform in `[0, min(maxMs, initialMs * factor^attempt)]`).
 */
export interface Backoff {
  /** The ceiling of the first delay (default 500 ms). */
  initialMs: number;
  /** The largest ceiling (default 10 s). */
  maxMs: number;
  /** Growth of the ceiling per failed attempt (default 2). */
  factor: number;
}

/** The default {@link Backoff}: 500 ms growing x2 up to 10 s. */
export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 10_000, factor: 2 };

/** The ceiling of the delay before retry number `attempt` (0 first). */
export function backoffCeiling(b: Backoff, attempt: number): number {
  const grown = b.initialMs * Math.pow(Math.max(1, b.factor), Math.min(attempt, 64));
  return Math.max(0, Math.min(b.maxMs, grown));
}

/** A delay for `attempt`, uniform in `[0, ceiling]`, from `random()` in [0, 1). */
export function backoffDelay(b: Backoff, attempt: number, random: () => number): number {
  return Math.floor(random() * (backoffCeiling(b, attempt) + 1));
}

/** Tuning of a live connection. */
export interface LiveOptions {
  /** Delays between reconnect attempts. */
  backoff?: Partial<Backoff>;
  /** How long a connect (until the `welcome` frame) may take (default 10 s). */
  connectTimeoutMs?: number;
  /** A `ping` goes out after this long without one (default 20 s). */
  pingIntervalMs?: number;
  /** No frame this long after a `ping`: the link is dead (default 10 s). */
  pongTimeoutMs?: number;
  /** A point held back this long for a missing lower `seq` asks for a replay of the gap (default 2 s). */
  gapTimeoutMs?: number;
  /**
   * Replay from just after this `seq` on the first join (`0`: the whole
   * session); by default only the points after the join are delivered.
   */
  afterSeq?: number;
}

/** The state of a live session as the user sees it. */
export type LiveStatus = "connecting" | "open" | "reconnecting" | "closed";

/** What a `status` event carries. */
export interface StatusChange {
  status: LiveStatus;
  /** `reconnecting`: the wait before the next attempt. */
  retryInMs?: number;
  /** `reconnecting`: failed attempts in a row so far. */
  attempt?: number;
  /** `closed`: why (code `closed` after {@link Machine.close}). */
  reason?: SeshError;
}

/** Every event of a live session and what it carries. */
export interface LiveEvents {
  /** A point of another participant, once each and in `seq` order. */
  point: StoredPoint;
  /** The socket is (again) in the session: after every connect. */
  welcome: {
    sessionId: string;
    connId: string;
    userId: string;
    lastSeq: number;
    participants: Participant[];
  };
  /** Another connection joined. */
  joined: Participant;
  /** Another connection left. */
  left: { connId: string; userId: string };
  /** The membership changed (contract section 10). */
  members: { members: string[]; viewers: string[] };
  /** This user was removed; the live session is closed. */
  removed: SeshError;
  /** The session ended; the live session is closed. */
  ended: { lastSeq: number };
  /** A signal of another connection (contract section 10). */
  signal: { from: string; userId: string; data: JsonObject };
  /** Another connection's live state (contract section 10). */
  state: { connId: string; userId: string; data: JsonObject };
  /** The connection's state changed. */
  status: StatusChange;
  /** An `error` frame not about one of our points, or a failed connect. */
  error: SeshError;
}

/** An event name. */
export type LiveEventName = keyof LiveEvents;

/** One event as an output. */
export type EventOutput = {
  [K in LiveEventName]: { type: "event"; name: K; data: LiveEvents[K] };
}[LiveEventName];

/** What the driver must do. */
export type Output =
  /** Open a socket (with a fresh token); report `connected` or `connectFailed`. */
  | { type: "connect" }
  /** Send this text frame on the open socket. */
  | { type: "send"; text: string }
  /** Close the socket, if one is open or opening. */
  | { type: "closeSocket" }
  /** Tell the user. */
  | EventOutput
  /** The point with this id is stored with this `seq`. */
  | { type: "acked"; id: string; seq: number }
  /** The point with this id will never be stored. */
  | { type: "refused"; id: string; error: SeshError }
  /**
   * Read the stored points after `afterSeq` over HTTP and hand them to
   * {@link Machine.caughtUp} (the session ended while some were missing).
   */
  | { type: "catchUp"; afterSeq: number }
  /** Done: nothing more will come out. */
  | { type: "stopped"; reason: SeshError };

type Link =
  | { s: "idle" }
  | { s: "connecting"; since: number }
  | { s: "open"; since: number; welcomed: boolean }
  | { s: "waiting"; until: number }
  | { s: "finishing"; reason: SeshError; lastSeq: number | undefined }
  | { s: "stopped" };

interface Pending {
  id: string;
  frame: string;
  sent: boolean;
}

/** What the machine needs from outside: jitter and fresh ids. */
export interface MachineDeps {
  /** Uniform in [0, 1). */
  random: () => number;
  /** A fresh idempotency id (1-64 characters). */
  newId: () => string;
}

const MAX_FRAME_BYTES = 64 * 1024;
const MAX_ID_CHARS = 64;
const MAX_KIND_CHARS = 64;

const utf8 = new TextEncoder();

function chars(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/** The live connection logic; see the module docs. */
export class Machine {
  private readonly backoff: Backoff;
  private readonly connectTimeoutMs: number;
  private readonly pingIntervalMs: number;
  private readonly pongTimeoutMs: number;
  private readonly gapTimeoutMs: number;
  private readonly startAfter: number | undefined;
  private readonly deps: MachineDeps;

  private link: Link = { s: "idle" };
  private attempt = 0;
  private everWelcomed = false;
  private userIdValue: string | undefined;
  private connIdValue: string | undefined;
  /** Every seq up to this one is released (or ours); undefined before the first welcome. */
  private watermark: number | undefined;
  /** Points above a gap, waiting for it to fill. */
  private readonly held = new Map<number, StoredPoint>();
  /** Our own acked seqs above the watermark. */
  private readonly own = new Set<number>();
  /** Unacked points in send order. */
  private readonly pending: Pending[] = [];
  private resuming = false;
  /** Replay caught up since the last welcome: points may flow. */
  private ready = false;
  private holdUntil: number | undefined;
  private lastPing = 0;
  private pingSent: number | undefined;
  private gapSince: number | undefined;
  private liveState: JsonObject | undefined;
  private stopReason: SeshError | undefined;
  private readonly participantsByConn = new Map<string, Participant>();
  private readonly out: Output[] = [];

  constructor(options: LiveOptions = {}, deps: MachineDeps) {
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.pingIntervalMs = options.pingIntervalMs ?? 20_000;
    this.pongTimeoutMs = options.pongTimeoutMs ?? 10_000;
    this.gapTimeoutMs = options.gapTimeoutMs ?? 2_000;
    this.startAfter = options.afterSeq;
    this.deps = deps;
  }

  // ------------------------------------------------------------ reading

  /** The highest seq released so far (the `afterSeq` of the next resume). */
  get lastSeq(): number | undefined {
    return this.watermark;
  }

  /** How many points wait for their ack. */
  get unacked(): number {
    return this.pending.length;
  }

  /** Whether the machine has stopped for good. */
  get stopped(): boolean {
    return this.link.s === "stopped";
  }

  /** Why it stopped (`undefined` while it runs). */
  get reason(): SeshError | undefined {
    return this.stopReason;
  }

  /** The user id the server authenticated (after the first welcome). */
  get userId(): string | undefined {
    return this.userIdValue;
  }

  /** This connection's id (after a welcome). */
  get connId(): string | undefined {
    return this.connIdValue;
  }

  /** Who is connected, as last told (this connection included). */
  get participants(): Participant[] {
    return [...this.participantsByConn.values()];
  }

  /** The user-visible state. */
  get status(): LiveStatus {
    switch (this.link.s) {
      case "idle":
        return "connecting";
      case "open":
        if (this.link.welcomed) return "open";
        return this.everWelcomed ? "reconnecting" : "connecting";
      case "connecting":
        return this.everWelcomed || this.attempt > 0 ? "reconnecting" : "connecting";
      case "waiting":
        return "reconnecting";
      case "finishing":
      case "stopped":
        return "closed";
    }
  }

  // ------------------------------------------------------------ commands

  /** Asks for the first connect. */
  start(now: number): void {
    if (this.link.s !== "idle") return;
    this.link = { s: "connecting", since: now };
    this.emit("status", { status: "connecting" });
    this.out.push({ type: "connect" });
  }

  /**
   * Queues a point; returns its idempotency id (its own, or a new one). It
   * goes out now if the connection is ready, else once it is. A point that
   * can never be stored (an id or kind of the wrong length, a frame over
   * 64 KiB) is refused at once.
   */
  send(now: number, point: NewPoint): string {
    const id = point.id ?? this.deps.newId();
    const refuse = (error: SeshError): string => {
      this.out.push({ type: "refused", id, error });
      return id;
    };
    if (this.link.s === "stopped" || this.link.s === "finishing") {
      const reason = this.link.s === "finishing" ? this.link.reason : this.stopReason;
      return refuse(reason ?? closedError("the live session is closed"));
    }
    if (typeof id !== "string" || chars(id) < 1 || chars(id) > MAX_ID_CHARS) {
      return refuse(invalid("id must be 1-64 characters", id));
    }
    if (typeof point.kind !== "string" || chars(point.kind) < 1 || chars(point.kind) > MAX_KIND_CHARS) {
      return refuse(invalid("kind must be 1-64 characters", id));
    }
    if (this.pending.some((p) => p.id === id)) {
      // The same id again while the first is in flight: one ack answers both.
      return id;
    }
    const frame = toJson({ ...point, id, type: "point" });
    if (utf8.encode(frame).length > MAX_FRAME_BYTES) {
      return refuse(
        new SeshError({
          code: "payload_too_large",
          message: "a point frame must be at most 64 KiB",
          ref: id,
        }),
      );
    }
    this.pending.push({ id, frame, sent: false });
    this.flush(now);
    return id;
  }

  /**
   * Sends a signal to the other participants (or only to connection `to`)
   * if the connection is open; returns whether it went out. Signals are
   * never queued: they are about now.
   */
  signal(data: JsonObject, to?: string): boolean {
    if (!this.isWelcomed()) return false;
    const frame: ClientFrame = to === undefined ? { type: "signal", data } : { type: "signal", data, to };
    this.out.push({ type: "send", text: toJson(frame) });
    return true;
  }

  /** Sets this connection's live state; it is sent again after every reconnect. */
  setState(data: JsonObject): void {
    this.liveState = data;
    if (this.isWelcomed()) this.out.push({ type: "send", text: toJson({ type: "state", data }) });
  }

  /** Asks the server to end the session (owner only); returns whether it went out. */
  endSession(): boolean {
    if (!this.isWelcomed()) return false;
    this.out.push({ type: "send", text: toJson({ type: "end" }) });
    return true;
  }

  /** Closes for good: unacked points are refused with `closed`. */
  close(): void {
    this.stop(closedError("the live session was closed"));
  }

  /** Drops the current socket and reconnects at once (a network change). */
  reconnect(now: number): void {
    if (this.link.s === "open" || this.link.s === "connecting") {
      this.out.push({ type: "closeSocket" });
      this.lost(now, 0);
    } else if (this.link.s === "waiting") {
      this.link = { s: "waiting", until: now };
    }
  }

  // -------------------------------------------------------------- events

  /** The socket opened (the `welcome` frame comes next). */
  connected(now: number): void {
    if (this.link.s === "connecting") {
      this.link = { s: "open", since: now, welcomed: false };
    }
  }

  /**
   * The connect failed, with the HTTP status of a refused upgrade when
   * known. 403 (not a member), 404 (no such session) and 409 (ended) are
   * final; anything else is retried. `lastSeq` is the session's final seq
   * when known (409).
   */
  connectFailed(now: number, error: SeshError, lastSeq?: number): void {
    if (this.link.s !== "connecting" && this.link.s !== "open") return;
    this.emit("error", error);
    if (error.status === 409) {
      this.finish(error, lastSeq);
      return;
    }
    if (error.status === 403 || error.status === 404) {
      this.stop(error);
      return;
    }
    this.lost(now, error.retryAfterMs);
  }

  /** The open socket closed or failed. */
  disconnected(now: number): void {
    if (this.link.s === "open" || this.link.s === "connecting") this.lost(now, undefined);
  }

  /** A text frame arrived. */
  received(now: number, text: string): void {
    if (this.link.s !== "open") return;
    this.pingSent = undefined;
    let frame: ServerFrame;
    try {
      frame = JSON.parse(text) as ServerFrame;
    } catch (e) {
      this.emit("error", new SeshError({ code: "decode", message: `server frame: ${String(e)}` }));
      return;
    }
    if (typeof frame !== "object" || frame === null || typeof frame.type !== "string") {
      this.emit("error", new SeshError({ code: "decode", message: "server frame without a type" }));
      return;
    }
    this.frame(now, frame);
  }

  /** The points read after {@link Output} `catchUp` (empty when the read failed). */
  caughtUp(now: number, points: StoredPoint[]): void {
    if (this.link.s !== "finishing") return;
    const { reason, lastSeq } = this.link;
    for (const p of [...points].sort((a, b) => a.seq - b.seq)) this.point(now, p, true);
    // Whatever is still held is everything that is left: release it in order.
    for (const seq of [...this.held.keys()].sort((a, b) => a - b)) {
      const p = this.held.get(seq);
      this.held.delete(seq);
      if (p && (this.watermark === undefined || seq > this.watermark)) {
        this.watermark = seq;
        this.emit("point", p);
      }
    }
    this.emitEnded(reason, lastSeq);
    this.stop(reason);
  }

  /** When {@link Machine.handleTimeout} is due next, if ever. */
  pollTimeout(): number | undefined {
    let at: number | undefined;
    const atLeast = (t: number): void => {
      at = at === undefined ? t : Math.min(at, t);
    };
    const l = this.link;
    switch (l.s) {
      case "idle":
      case "stopped":
      case "finishing":
        return undefined;
      case "waiting":
        atLeast(l.until);
        break;
      case "connecting":
        atLeast(l.since + this.connectTimeoutMs);
        break;
      case "open":
        if (!l.welcomed) {
          atLeast(l.since + this.connectTimeoutMs);
          break;
        }
        atLeast(
          this.pingSent !== undefined
            ? this.pingSent + this.pongTimeoutMs
            : this.lastPing + this.pingIntervalMs,
        );
        if (this.holdUntil !== undefined) atLeast(this.holdUntil);
        if (this.gapSince !== undefined && !this.resuming) atLeast(this.gapSince + this.gapTimeoutMs);
        break;
    }
    return at;
  }

  /** Time has come (see {@link Machine.pollTimeout}). */
  handleTimeout(now: number): void {
    const l = this.link;
    switch (l.s) {
      case "waiting":
        if (now >= l.until) {
          this.link = { s: "connecting", since: now };
          this.out.push({ type: "connect" });
        }
        return;
      case "connecting":
        if (now >= l.since + this.connectTimeoutMs) this.timedOut(now);
        return;
      case "open":
        if (!l.welcomed) {
          if (now >= l.since + this.connectTimeoutMs) this.timedOut(now);
          return;
        }
        if (this.pingSent !== undefined) {
          if (now >= this.pingSent + this.pongTimeoutMs) {
            this.out.push({ type: "closeSocket" });
            this.lost(now, undefined);
            return;
          }
        } else if (now >= this.lastPing + this.pingIntervalMs) {
          this.out.push({ type: "send", text: '{"type":"ping"}' });
          this.lastPing = now;
          this.pingSent = now;
        }
        if (this.holdUntil !== undefined && now >= this.holdUntil) {
          this.holdUntil = undefined;
          this.flush(now);
        }
        if (this.gapSince !== undefined && !this.resuming && now >= this.gapSince + this.gapTimeoutMs) {
          this.gapSince = now;
          this.resumeFrom(this.watermark ?? 0);
        }
        return;
      default:
        return;
    }
  }

  /** The next thing to do, in order. */
  pollOutput(): Output | undefined {
    return this.out.shift();
  }

  // ------------------------------------------------------------ internals

  private emit<K extends LiveEventName>(name: K, data: LiveEvents[K]): void {
    this.out.push({ type: "event", name, data } as EventOutput);
  }

  private isWelcomed(): boolean {
    return this.link.s === "open" && this.link.welcomed;
  }

  private timedOut(now: number): void {
    this.out.push({ type: "closeSocket" });
    this.emit("error", new SeshError({ code: "transport", message: "connect timed out" }));
    this.lost(now, undefined);
  }

  private frame(now: number, f: ServerFrame): void {
    switch (f.type) {
      case "welcome": {
        this.link = { s: "open", since: now, welcomed: true };
        this.attempt = 0;
        this.everWelcomed = true;
        this.lastPing = now;
        this.pingSent = undefined;
        this.userIdValue = f.userId;
        this.connIdValue = f.connId;
        this.participantsByConn.clear();
        for (const p of f.participants ?? []) this.participantsByConn.set(p.connId, p);
        if (this.watermark === undefined) {
          this.watermark = Math.min(this.startAfter ?? f.lastSeq, f.lastSeq);
        }
        const from = this.watermark;
        this.emit("status", { status: "open" });
        this.emit("welcome", {
          sessionId: f.sessionId,
          connId: f.connId,
          userId: f.userId,
          lastSeq: f.lastSeq,
          participants: f.participants ?? [],
        });
        if (this.liveState !== undefined) {
          this.out.push({ type: "send", text: toJson({ type: "state", data: this.liveState }) });
        }
        if (f.lastSeq > from) {
          this.ready = false;
          this.resumeFrom(from);
        } else {
          this.ready = true;
          this.flush(now);
        }
        return;
      }
      case "joined": {
        const p: Participant = { connId: f.connId, userId: f.userId, joinedAt: f.joinedAt };
        if (f.state !== undefined) p.state = f.state;
        this.participantsByConn.set(p.connId, p);
        this.emit("joined", p);
        return;
      }
      case "left":
        this.participantsByConn.delete(f.connId);
        this.emit("left", { connId: f.connId, userId: f.userId });
        return;
      case "point": {
        const { type: _type, ...p } = f;
        this.point(now, p, false);
        return;
      }
      case "ack": {
        if (f.id !== undefined) this.ackPending(f.id, f.seq);
        this.markOwn(now, f.seq);
        return;
      }
      case "resumed":
        if (f.more) {
          this.resumeFrom(Math.max(f.throughSeq, this.watermark ?? 0));
        } else {
          this.resuming = false;
          if (!this.ready) {
            this.ready = true;
            this.flush(now);
          }
          this.gapSince = this.held.size > 0 || this.own.size > 0 ? now : undefined;
        }
        return;
      case "pong":
        return;
      case "error":
        this.errorFrame(now, f.code, f.message, f.ref, f.retryAfterMs);
        return;
      case "ended":
        this.finish(
          new SeshError({ status: 409, code: "session_ended", message: "the session has ended" }),
          f.lastSeq,
        );
        return;
      case "members":
        this.emit("members", { members: f.members ?? [], viewers: f.viewers ?? [] });
        return;
      case "removed": {
        const reason = new SeshError({
          status: 403,
          code: "removed",
          message: "this user was removed from the session",
        });
        this.emit("removed", reason);
        this.stop(reason);
        return;
      }
      case "signal":
        this.emit("signal", { from: f.from, userId: f.userId, data: f.data });
        return;
      case "state": {
        const p = this.participantsByConn.get(f.connId);
        if (p) p.state = f.data;
        this.emit("state", { connId: f.connId, userId: f.userId, data: f.data });
        return;
      }
      default:
        // A frame type this client does not know (a newer server): ignored.
        return;
    }
  }

  private errorFrame(
    now: number,
    code: SeshError["code"],
    message: string,
    ref: string | undefined,
    retryAfterMs: number | undefined,
  ): void {
    const error = new SeshError({ code: code as SeshError["code"], message, ref, retryAfterMs });
    const i = ref === undefined ? -1 : this.pending.findIndex((p) => p.id === ref);
    const ours = i >= 0;
    if (code === "rate_limited" || (ours && code === "unavailable")) {
      // Unsent again, all of them, so that their order is kept when the
      // wait is over; the server stores each id once whatever it got.
      for (const p of this.pending) p.sent = false;
      this.holdUntil = now + (retryAfterMs ?? 1000);
      if (!ours) this.emit("error", error);
      return;
    }
    if (ours) {
      const [p] = this.pending.splice(i, 1);
      if (p) this.out.push({ type: "refused", id: p.id, error });
      return;
    }
    this.emit("error", error);
  }

  private ackPending(id: string, seq: number): void {
    const i = this.pending.findIndex((p) => p.id === id);
    if (i >= 0) {
      this.pending.splice(i, 1);
      this.out.push({ type: "acked", id, seq });
    }
  }

  private point(now: number, p: StoredPoint, catchingUp: boolean): void {
    const ours =
      this.userIdValue !== undefined &&
      p.userId === this.userIdValue &&
      p.id !== undefined &&
      this.pending.some((q) => q.id === p.id);
    if (ours && p.id !== undefined) {
      // A replay holds a point whose ack the drop swallowed: that is its
      // ack, and resending it is no longer needed.
      this.ackPending(p.id, p.seq);
      this.markOwn(now, p.seq, catchingUp);
      return;
    }
    const w = this.watermark;
    if (w === undefined) return;
    if (p.seq <= w || this.own.has(p.seq) || this.held.has(p.seq)) return;
    this.held.set(p.seq, p);
    this.release(now, catchingUp);
  }

  private markOwn(now: number, seq: number, catchingUp = false): void {
    if (this.watermark !== undefined && seq > this.watermark) {
      this.own.add(seq);
      this.release(now, catchingUp);
    }
  }

  /** Moves the watermark over every known seq and emits held points. */
  private release(now: number, catchingUp = false): void {
    if (this.watermark === undefined) return;
    let w = this.watermark;
    for (;;) {
      const next = w + 1;
      if (this.own.delete(next)) {
        w = next;
        continue;
      }
      const p = this.held.get(next);
      if (p === undefined) break;
      this.held.delete(next);
      w = next;
      this.emit("point", p);
    }
    this.watermark = w;
    if (catchingUp) return;
    if (this.held.size === 0 && this.own.size === 0) this.gapSince = undefined;
    else if (this.gapSince === undefined) this.gapSince = now;
  }

  private resumeFrom(afterSeq: number): void {
    this.resuming = true;
    this.out.push({ type: "send", text: toJson({ type: "resume", afterSeq }) });
  }

  private flush(now: number): void {
    if (!this.ready || !this.isWelcomed() || (this.holdUntil !== undefined && now < this.holdUntil)) return;
    for (const p of this.pending) {
      if (!p.sent) {
        p.sent = true;
        this.out.push({ type: "send", text: p.frame });
      }
    }
  }

  /** The socket is gone: wait (at least `floor` ms; 0 means now) and reconnect. */
  private lost(now: number, floor: number | undefined): void {
    let delay = backoffDelay(this.backoff, this.attempt, this.deps.random);
    if (floor !== undefined) delay = floor === 0 ? 0 : Math.max(delay, floor);
    this.attempt += 1;
    this.link = { s: "waiting", until: now + delay };
    this.ready = false;
    this.resuming = false;
    this.pingSent = undefined;
    this.holdUntil = undefined;
    this.connIdValue = undefined;
    for (const p of this.pending) p.sent = false;
    this.emit("status", { status: "reconnecting", retryInMs: delay, attempt: this.attempt });
  }

  /**
   * The session is over (ended): read what is missing over HTTP first when
   * anything may be (so that every point is still delivered, in order), then
   * stop.
   */
  private finish(reason: SeshError, lastSeq?: number): void {
    if (this.link.s === "stopped" || this.link.s === "finishing") return;
    this.out.push({ type: "closeSocket" });
    // A stored point of ours whose ack was lost leaves a gap the watermark
    // cannot pass, so nothing is missing when the watermark is at the end.
    if (this.watermark === undefined && this.startAfter !== undefined) {
      // Never joined, but asked for the points after `afterSeq`: read them.
      this.watermark = Math.min(this.startAfter, lastSeq ?? this.startAfter);
    }
    const w = this.watermark;
    if (w !== undefined && (lastSeq === undefined || lastSeq > w)) {
      this.link = { s: "finishing", reason, lastSeq };
      this.out.push({ type: "catchUp", afterSeq: w });
      return;
    }
    this.emitEnded(reason, lastSeq);
    this.stop(reason);
  }

  private emitEnded(reason: SeshError, lastSeq: number | undefined): void {
    if (reason.code === "session_ended") {
      this.emit("ended", { lastSeq: lastSeq ?? this.watermark ?? 0 });
    }
  }

  private stop(reason: SeshError): void {
    if (this.link.s === "stopped") return;
    this.link = { s: "stopped" };
    this.stopReason = reason;
    this.out.push({ type: "closeSocket" });
    for (const p of this.pending.splice(0)) {
      this.out.push({ type: "refused", id: p.id, error: reason });
    }
    this.held.clear();
    this.own.clear();
    this.emit("status", { status: "closed", reason });
    this.out.push({ type: "stopped", reason });
  }
}

function closedError(message: string): SeshError {
  return new SeshError({ code: "closed", message });
}

function invalid(message: string, ref: string): SeshError {
  return new SeshError({ code: "validation_failed", message, ref: typeof ref === "string" ? ref : undefined });
}

function toJson(frame: ClientFrame): string {
  // `type` first, as the server's own frames have it.
  const { type, ...rest } = frame as ClientFrame & Record<string, unknown>;
  return JSON.stringify({ type, ...rest });
}
