/**
 * Retries of one task: every attempt carries the task's one idempotency key (the caller sets
 * it on the request), so a retry can only ever yield the same task id, never a second task.
 */
import { setTimeout as sleep } from "node:timers/promises";
import {
  OutcomeUnknown,
  QuotaExceeded,
  TaskGatewayError,
  Unavailable,
  toTaskGatewayError,
} from "./errors.js";

/** When and how often a call is retried. */
export interface RetryPolicy {
  /** The first backoff's upper bound, in milliseconds. */
  initialBackoffMs: number;
  /** No backoff is longer than this, in milliseconds. */
  maxBackoffMs: number;
  /** Each backoff's upper bound is the previous one's times this. */
  multiplier: number;
  /** Attempts in all, the first one included; 1 turns retries off. */
  maxAttempts: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  initialBackoffMs: 100,
  maxBackoffMs: 5_000,
  multiplier: 2,
  maxAttempts: 5,
});

/** The policy with the caller's overrides, or a TypeError naming the bad setting. */
export function retryPolicy(overrides: Partial<RetryPolicy> = {}): RetryPolicy {
  const policy = { ...DEFAULT_RETRY, ...overrides };
  const rules: [keyof RetryPolicy, (value: number) => boolean, string][] = [
    ["initialBackoffMs", (v) => v >= 0, "a number of milliseconds >= 0"],
    ["maxBackoffMs", (v) => v >= policy.initialBackoffMs, "a number >= initialBackoffMs"],
    ["multiplier", (v) => v >= 1, "a number >= 1"],
    ["maxAttempts", (v) => Number.isInteger(v) && v >= 1, "an integer >= 1"],
  ];
  for (const [name, valid, expected] of rules) {
    const value = policy[name];
    if (typeof value !== "number" || Number.isNaN(value) || !valid(value)) {
      throw new TypeError(`retry.${name} must be ${expected}, got ${String(value)}`);
    }
  }
  return policy;
}

/**
 * One attempt of the call, given the milliseconds left of the caller's deadline, and the signal
 * that stops the call (to cut the attempt off).
 */
export type Attempt<T> = (timeoutMs: number, signal: AbortSignal) => Promise<T>;

/**
 * Run `attempt` until it succeeds, fails for good, runs out of attempts, or the deadline
 * passes; each attempt gets what remains of `deadlineMs`. What an attempt threw is taken as
 * a typed error (`toTaskGatewayError`).
 *
 * Retried: UNAVAILABLE and unknown outcomes (DEADLINE_EXCEEDED, a lost confirm or connection)
 * after a full-jitter exponential backoff; RESOURCE_EXHAUSTED only when the server sent a
 * RetryInfo, after its delay. When any attempt may have published the task, the call ends
 * with an OutcomeUnknown, whatever the last attempt said: the task may exist.
 *
 * `signal` stops the call at once, during an attempt (which it cuts off) or a backoff: the
 * call ends with the signal's reason when that is a TaskGatewayError (the client's close()),
 * else with a CANCELLED "the call was aborted"; an OutcomeUnknown when some attempt may have
 * published the task.
 */
export async function withRetries<T>(
  attempt: Attempt<T>,
  policy: RetryPolicy,
  deadlineMs: number,
  idempotencyKey: string,
  signal: AbortSignal,
): Promise<T> {
  const deadline = performance.now() + deadlineMs;
  let mayHavePublished = false;
  for (let attempts = 1; !signal.aborted; attempts++) {
    let error: TaskGatewayError;
    try {
      // Whole milliseconds: grpc-timeout is an integer, and grpcio refuses "1234.5m".
      return await attempt(Math.max(1, Math.floor(deadline - performance.now())), signal);
    } catch (reason) {
      error = toTaskGatewayError(reason, idempotencyKey);
    }
    mayHavePublished ||= error instanceof OutcomeUnknown;
    if (signal.aborted) {
      break; // the attempt failed because the call was stopped: say that, not how it failed
    }
    const delay = retryDelay(error, attempts, policy);
    const remaining = deadline - performance.now();
    if (delay === undefined || attempts >= policy.maxAttempts || delay >= remaining) {
      throw mayHavePublished ? outcomeUnknown(error, idempotencyKey) : error;
    }
    // Only an abort rejects the wait, and ends it early; the loop's condition then stops.
    await sleep(delay, undefined, { signal }).catch(() => undefined);
  }
  const stopped = stoppedBy(signal.reason);
  throw mayHavePublished ? outcomeUnknown(stopped, idempotencyKey) : stopped;
}

/** The error of a call stopped by its signal, from the signal's reason. */
function stoppedBy(reason: unknown): TaskGatewayError {
  if (reason instanceof TaskGatewayError) {
    return reason;
  }
  const why = reason instanceof Error ? reason.message : String(reason);
  return new TaskGatewayError("CANCELLED", `the call was aborted (${why})`, { cause: reason });
}

/** How long to wait before the next attempt, or undefined when the error is not retried. */
function retryDelay(
  error: TaskGatewayError,
  attempts: number,
  policy: RetryPolicy,
): number | undefined {
  if (error instanceof QuotaExceeded) {
    return error.retryDelayMs; // only when the server said when
  }
  if (!isTransient(error)) {
    return undefined;
  }
  if (error.retryDelayMs !== undefined) {
    return error.retryDelayMs;
  }
  const ceiling = Math.min(
    policy.maxBackoffMs,
    policy.initialBackoffMs * policy.multiplier ** (attempts - 1),
  );
  return Math.random() * ceiling; // "full jitter": spreads the retries of many clients
}

/** Errors that a later attempt may not meet: the gateway or broker away, or a lost answer. */
function isTransient(error: TaskGatewayError): boolean {
  return error instanceof Unavailable || error instanceof OutcomeUnknown;
}

function outcomeUnknown(last: TaskGatewayError, idempotencyKey: string): OutcomeUnknown {
  if (last instanceof OutcomeUnknown) {
    return last;
  }
  const message = `${last.message} (an attempt's outcome is unknown: the task may exist)`;
  return new OutcomeUnknown(last.code, message, idempotencyKey, {
    violations: last.violations,
    retryDelayMs: last.retryDelayMs,
    cause: last,
  });
}
