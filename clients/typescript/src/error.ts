import type { ErrorCode } from "./wire.js";

/**
 * A code of this client's own, beside the API's {@link ErrorCode}s:
 * `transport` (the request or the socket failed before an answer came),
 * `decode` (an answer that is not what the contract says), `closed` (the
 * live session was closed or stopped before an answer), `removed` (this
 * user was removed from the session).
 */
export type ClientErrorCode = "transport" | "decode" | "closed" | "removed";

/** What a {@link SeshError} is built from. */
export interface SeshErrorInit {
  status?: number;
  code: ErrorCode | ClientErrorCode;
  message: string;
  retryAfterMs?: number;
  ref?: string;
  requestId?: string;
  cause?: unknown;
}

/**
 * Every failure: an error answer of the API (HTTP status, or an `error`
 * frame of a live session), or one found on this side (`transport`,
 * `decode`, `closed`, `removed`).
 */
export class SeshError extends Error {
  /** The HTTP status; `undefined` for `error` frames and local failures. */
  readonly status: number | undefined;
  /** The contract's snake_case code, or one of {@link ClientErrorCode}. */
  readonly code: ErrorCode | ClientErrorCode;
  /** How long the server asks to wait (`Retry-After`, `retryAfterMs`). */
  readonly retryAfterMs: number | undefined;
  /** The point id an `error` frame is about. */
  readonly ref: string | undefined;
  /** The answer's `X-Request-Id` (quote it when reporting a problem). */
  readonly requestId: string | undefined;

  constructor(init: SeshErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "SeshError";
    this.status = init.status;
    this.code = init.code;
    this.retryAfterMs = init.retryAfterMs;
    this.ref = init.ref;
    this.requestId = init.requestId;
  }

  /** Whether the same call may succeed later. */
  get retryable(): boolean {
    return ["transport", "rate_limited", "unavailable", "internal"].includes(this.code);
  }

  /** An error answer: its status, body text and `Retry-After` (ms). */
  static fromAnswer(
    status: number,
    body: string,
    retryAfterMs?: number,
    requestId?: string,
  ): SeshError {
    let parsed: unknown;
    try {
      parsed = JSON.parse(body);
    } catch {
      parsed = undefined;
    }
    const err = (parsed as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    const fromBody = (parsed as { retryAfterMs?: unknown } | undefined)?.retryAfterMs;
    const retry = retryAfterMs ?? (typeof fromBody === "number" ? fromBody : undefined);
    if (err && typeof err.code === "string" && typeof err.message === "string") {
      return new SeshError({
        status,
        code: err.code as ErrorCode,
        message: err.message,
        retryAfterMs: retry,
        requestId,
      });
    }
    // Not the contract's shape (a proxy's page, say): keep the status and an
    // excerpt so that the cause stays visible.
    return new SeshError({
      status,
      code: "decode",
      message: `HTTP ${status}: ${body.slice(0, 200)}`,
      retryAfterMs: retry,
      requestId,
    });
  }
}

/** `Retry-After` in milliseconds (seconds, or an HTTP date). */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
