/**
 * A joined session: a thin driver that runs the {@link Machine} with a real
 * WebSocket, a real clock and one timer, and hands its events to listeners.
 *
 * @module
 */

import { SeshError } from "./error.js";
import {
  Machine,
  type LiveEventName,
  type LiveEvents,
  type LiveOptions,
  type LiveStatus,
  type Output,
} from "./machine.js";
import type { JsonObject, NewPoint, Participant, Session, StoredPoint } from "./wire.js";

/** A point the server has stored. */
export interface Ack {
  /** The point's idempotency id (given or generated). */
  id: string;
  /** Its seq in the session. */
  seq: number;
}

interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  terminate?: () => void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** What a {@link Live} needs from its {@link Sesh}. */
export interface LiveDeps {
  sessionId: string;
  WebSocket: new (url: string) => unknown;
  socketUrl: (token: string) => string;
  token: () => Promise<string>;
  getSession: (id: string) => Promise<Session>;
  readPoints: (id: string, afterSeq: number) => Promise<StoredPoint[]>;
}

type Listener<K extends LiveEventName> = (data: LiveEvents[K]) => void;

interface Waiter {
  resolve: (ack: Ack) => void;
  reject: (err: SeshError) => void;
}

const OPEN = 1;
const CLOSED = 3;

function now(): number {
  const p = (globalThis as { performance?: { now?: () => number } }).performance;
  return typeof p?.now === "function" ? p.now() : Date.now();
}

/** A random (version 4) UUID, from `crypto.randomUUID` or `getRandomValues`. */
export function randomId(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (typeof c?.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * A live session (from {@link Sesh.join}). Send points with
 * {@link Live.send}; listen with {@link Live.on}. It reconnects by itself
 * until the session ends, this user is removed, or {@link Live.close}.
 */
export class Live {
  /** The session's id. */
  readonly sessionId: string;
  private readonly deps: LiveDeps;
  private readonly m: Machine;
  private readonly listeners = new Map<LiveEventName, Set<(data: never) => void>>();
  private readonly waiters = new Map<string, Waiter[]>();
  private socket: SocketLike | undefined;
  /** Bumped for every socket, so that a stale socket's callbacks are ignored. */
  private generation = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private timerAt: number | undefined;
  private pumping = false;
  private closing: Promise<void> | undefined;
  private stoppedReason: SeshError | undefined;
  private readonly stoppedPromise: Promise<SeshError>;
  private resolveStopped!: (reason: SeshError) => void;

  /** @internal Use {@link Sesh.join}. */
  constructor(deps: LiveDeps, options: LiveOptions) {
    this.sessionId = deps.sessionId;
    this.deps = deps;
    this.m = new Machine(options, { random: Math.random, newId: randomId });
    this.stoppedPromise = new Promise((resolve) => (this.resolveStopped = resolve));
    // Listeners added right after join() see every event: the first connect
    // starts on the next turn.
    queueMicrotask(() => {
      this.m.start(now());
      this.pump();
    });
  }

  /** The highest seq delivered (or known to be ours); `undefined` before the first welcome. */
  get lastSeq(): number | undefined {
    return this.m.lastSeq;
  }

  /** `connecting`, `open`, `reconnecting` or `closed`. */
  get status(): LiveStatus {
    return this.m.status;
  }

  /** The user id the server authenticated (after the first welcome). */
  get userId(): string | undefined {
    return this.m.userId;
  }

  /** This connection's id (while open). */
  get connId(): string | undefined {
    return this.m.connId;
  }

  /** Who is connected, as last told (this connection included). */
  get participants(): Participant[] {
    return this.m.participants;
  }

  /** How many sent points wait for their ack. */
  get unacked(): number {
    return this.m.unacked;
  }

  /** Why the live session stopped (`undefined` while it runs). */
  get reason(): SeshError | undefined {
    return this.stoppedReason;
  }

  /** Resolves with the reason once the live session has stopped for good. */
  get stopped(): Promise<SeshError> {
    return this.stoppedPromise;
  }

  /** Listens to an event; returns the function that stops listening. */
  on<K extends LiveEventName>(name: K, fn: Listener<K>): () => void {
    let set = this.listeners.get(name);
    if (!set) {
      set = new Set();
      this.listeners.set(name, set);
    }
    const f = fn as (data: never) => void;
    set.add(f);
    return () => {
      this.listeners.get(name)?.delete(f);
    };
  }

  /** Listens to the next event of this name only. */
  once<K extends LiveEventName>(name: K, fn: Listener<K>): () => void {
    const off = this.on(name, (data) => {
      off();
      fn(data);
    });
    return off;
  }

  /**
   * Sends a point; resolves with its id and seq once the server has stored
   * it, across reconnects. A point without an `id` gets a random one, so a
   * resend after a drop is never stored twice. Rejects with a
   * {@link SeshError} when the server refuses it (`validation_failed`,
   * `quota_exceeded`, `forbidden`), or when the live session stops first
   * (`closed`, `session_ended`, `removed`).
   */
  send(point: NewPoint): Promise<Ack> {
    return new Promise<Ack>((resolve, reject) => {
      const id = this.m.send(now(), point);
      const list = this.waiters.get(id);
      if (list) list.push({ resolve, reject });
      else this.waiters.set(id, [{ resolve, reject }]);
      this.pump();
    });
  }

  /**
   * Sends a signal (cursors, typing: contract section 10) to the others, or
   * only to connection `to`; returns false when not connected (signals are
   * not queued).
   */
  signal(data: JsonObject, to?: string): boolean {
    const sent = this.m.signal(data, to);
    this.pump();
    return sent;
  }

  /** Sets this connection's live state (contract section 10); sent again after every reconnect. */
  setState(data: JsonObject): void {
    this.m.setState(data);
    this.pump();
  }

  /** Asks the server to end the session (owner only); an `ended` event follows. Returns false when not connected. */
  end(): boolean {
    const sent = this.m.endSession();
    this.pump();
    return sent;
  }

  /** Drops the current socket and reconnects at once (e.g. after a network change). */
  reconnect(): void {
    this.m.reconnect(now());
    this.pump();
  }

  /** Leaves the session: points not yet acked reject with `closed`; resolves once the socket is closed. */
  async close(): Promise<void> {
    this.m.close();
    this.pump();
    await this.closing;
  }

  // ------------------------------------------------------------- driver

  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      for (let o = this.m.pollOutput(); o !== undefined; o = this.m.pollOutput()) this.carryOut(o);
    } finally {
      this.pumping = false;
    }
    this.arm();
  }

  private carryOut(o: Output): void {
    switch (o.type) {
      case "connect":
        this.dropSocket();
        void this.open();
        return;
      case "send":
        if (this.socket && this.socket.readyState === OPEN) {
          try {
            this.socket.send(o.text);
          } catch {
            this.dropSocket();
            this.m.disconnected(now());
          }
        }
        return;
      case "closeSocket":
        this.dropSocket();
        return;
      case "event":
        this.dispatch(o.name, o.data);
        return;
      case "acked":
        this.settle(o.id, (w) => w.resolve({ id: o.id, seq: o.seq }));
        return;
      case "refused":
        this.settle(o.id, (w) => w.reject(o.error));
        return;
      case "catchUp":
        void this.catchUp(o.afterSeq);
        return;
      case "stopped":
        this.stoppedReason = o.reason;
        for (const [, list] of this.waiters) for (const w of list) w.reject(o.reason);
        this.waiters.clear();
        this.resolveStopped(o.reason);
        return;
    }
  }

  private settle(id: string, f: (w: Waiter) => void): void {
    const list = this.waiters.get(id);
    if (!list) return;
    this.waiters.delete(id);
    for (const w of list) f(w);
  }

  private dispatch(name: LiveEventName, data: unknown): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as (d: unknown) => void)(data);
      } catch (e) {
        // A listener's error is the listener's: report it, keep running.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  private arm(): void {
    const at = this.m.pollTimeout();
    if (at === this.timerAt && (at === undefined || this.timer !== undefined)) return;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = at;
    if (at === undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.timerAt = undefined;
      this.m.handleTimeout(now());
      this.pump();
    }, Math.max(0, Math.ceil(at - now())));
  }

  private async open(): Promise<void> {
    const gen = ++this.generation;
    let token: string;
    try {
      token = await this.deps.token();
    } catch (e) {
      if (gen !== this.generation) return;
      this.m.connectFailed(now(), toSeshError(e));
      this.pump();
      return;
    }
    if (gen !== this.generation || this.m.stopped) return;
    let ws: SocketLike;
    try {
      ws = new this.deps.WebSocket(this.deps.socketUrl(token)) as SocketLike;
    } catch (e) {
      this.m.connectFailed(now(), new SeshError({ code: "transport", message: `connect: ${String(e)}`, cause: e }));
      this.pump();
      return;
    }
    this.socket = ws;
    let opened = false;
    let errorText: string | undefined;
    ws.onopen = () => {
      if (gen !== this.generation) return;
      opened = true;
      this.m.connected(now());
      this.pump();
    };
    ws.onmessage = (ev) => {
      if (gen !== this.generation) return;
      if (typeof ev.data === "string") this.m.received(now(), ev.data);
      this.pump();
    };
    ws.onerror = (ev) => {
      const msg = (ev as { message?: unknown; error?: { message?: unknown } } | null)?.message;
      if (typeof msg === "string") errorText = msg;
    };
    ws.onclose = (ev) => {
      if (gen !== this.generation) return;
      this.socket = undefined;
      if (opened) {
        this.m.disconnected(now());
        this.pump();
        return;
      }
      const why = errorText ?? `closed with ${ev?.code ?? "no code"} before it opened`;
      void this.refusal(gen, why);
    };
  }

  /**
   * Why a connect failed. A browser hides a refused upgrade's answer, so a
   * read of the session tells a final refusal (not a member, unknown,
   * ended) from a passing failure (the server is down, the session is
   * full), everywhere alike.
   */
  private async refusal(gen: number, why: string): Promise<void> {
    let error: SeshError;
    let lastSeq: number | undefined;
    try {
      const s = await this.deps.getSession(this.sessionId);
      if (s.status === "ended") {
        error = new SeshError({ status: 409, code: "session_ended", message: "the session has ended" });
        lastSeq = s.lastSeq;
      } else {
        error = new SeshError({ code: "transport", message: `connect: ${why}` });
      }
    } catch (e) {
      const err = toSeshError(e);
      error =
        err.status === 401 || err.status === 403 || err.status === 404
          ? err
          : new SeshError({ code: "transport", message: `connect: ${why}` });
    }
    if (gen !== this.generation) return;
    this.m.connectFailed(now(), error, lastSeq);
    this.pump();
  }

  private async catchUp(afterSeq: number): Promise<void> {
    let points: StoredPoint[] = [];
    try {
      points = await this.deps.readPoints(this.sessionId, afterSeq);
    } catch (e) {
      this.dispatch("error", toSeshError(e));
    }
    this.m.caughtUp(now(), points);
    this.pump();
  }

  /** Forgets the current socket and closes it (politely when open). */
  private dropSocket(): void {
    const ws = this.socket;
    this.generation++;
    this.socket = undefined;
    if (!ws) return;
    const noop = (): void => {};
    ws.onopen = noop;
    ws.onmessage = noop;
    ws.onerror = noop;
    ws.onclose = noop;
    if (ws.readyState === CLOSED) return;
    this.closing = new Promise<void>((resolve) => {
      // A dead link may never answer the close: give up on it after 2 s.
      const t = setTimeout(() => {
        ws.terminate?.();
        resolve();
      }, 2000);
      ws.onclose = () => {
        clearTimeout(t);
        resolve();
      };
      try {
        ws.close(1000);
      } catch {
        ws.terminate?.();
      }
    });
  }
}

function toSeshError(e: unknown): SeshError {
  if (e instanceof SeshError) return e;
  return new SeshError({ code: "transport", message: String(e), cause: e });
}
