/**
 * The errors a call can end with: one root, `TaskGatewayError`, and a subclass per thing a
 * caller handles differently. They are built from the gRPC status the gateway answered with,
 * including its `grpc-status-details-bin` details (`google.rpc.BadRequest`, `RetryInfo`).
 */
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

// The canonical gRPC status codes, indexed by the numeric code, which connect's `Code` shares
// with gRPC.
const STATUS_CODES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;

/** The canonical gRPC status codes, by the names grpcurl and the gateway's docs use. */
export type StatusCode = (typeof STATUS_CODES)[number];

/** One field the gateway rejected, from a `google.rpc.BadRequest` detail. */
export interface FieldViolation {
  /** The field's path in the request, e.g. `payload.image_name`. */
  readonly field: string;
  /** What is wrong with it. */
  readonly description: string;
}

export interface TaskGatewayErrorOptions {
  violations?: readonly FieldViolation[];
  retryDelayMs?: number | undefined;
  cause?: unknown;
}

/** Any error a call of the client ends with. */
export class TaskGatewayError extends Error {
  /** The gRPC status code, e.g. `"INVALID_ARGUMENT"`. */
  readonly code: StatusCode;
  /** The fields the gateway rejected (empty unless it sent a `google.rpc.BadRequest`). */
  readonly violations: readonly FieldViolation[];
  /** How long the server asked the client to wait before retrying (`google.rpc.RetryInfo`). */
  readonly retryDelayMs: number | undefined;

  constructor(code: StatusCode, message: string, options: TaskGatewayErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.violations = options.violations ?? [];
    this.retryDelayMs = options.retryDelayMs;
  }
}

/** The task was rejected as it is (INVALID_ARGUMENT, FAILED_PRECONDITION): fix it, don't retry. */
export class InvalidTask extends TaskGatewayError {}

/** The caller's credentials may not publish this task (PERMISSION_DENIED). */
export class PermissionDenied extends TaskGatewayError {}

/** Credentials are missing or wrong (UNAUTHENTICATED). */
export class Unauthenticated extends TaskGatewayError {}

/** A limit was reached (RESOURCE_EXHAUSTED): retried only when the server said when. */
export class QuotaExceeded extends TaskGatewayError {}

/** The gateway or its broker is away, and the task was not published (UNAVAILABLE). */
export class Unavailable extends TaskGatewayError {}

/**
 * The task may or may not have been published (DEADLINE_EXCEEDED, a lost confirm or a lost
 * connection). Retry with `idempotencyKey`: the same key gives the same task id, so downstream
 * de-duplicates whatever landed twice.
 */
export class OutcomeUnknown extends TaskGatewayError {
  /** The key every attempt was sent with: pass it again to retry this same task. */
  readonly idempotencyKey: string;

  constructor(
    code: StatusCode,
    message: string,
    idempotencyKey: string,
    options: TaskGatewayErrorOptions = {},
  ) {
    super(code, message, options);
    this.idempotencyKey = idempotencyKey;
  }
}

// How the gateway words an UNAVAILABLE after which the task may have been stored: a lost
// confirm or channel (broker/rabbit.py), a publish cut off at shutdown (core/ingest.py).
const OUTCOME_UNKNOWN_WORDING = "the outcome is unknown";

/**
 * The typed error for what a call ended with. `idempotencyKey` is the key the call was sent
 * with, kept by an OutcomeUnknown.
 */
export function toTaskGatewayError(reason: unknown, idempotencyKey: string): TaskGatewayError {
  if (reason instanceof TaskGatewayError) {
    return reason;
  }
  const error = ConnectError.from(reason);
  const code = STATUS_CODES[error.code] ?? "UNKNOWN";
  const options: TaskGatewayErrorOptions = {
    violations: error
      .findDetails(BadRequestSchema)
      .flatMap((bad) => bad.fieldViolations)
      .map(({ field, description }) => ({ field, description })),
    retryDelayMs: retryDelayMs(error),
    cause: reason,
  };
  if (lostInFlight(error)) {
    const message =
      `the connection to the gateway was lost during the call (${error.rawMessage}): ` +
      `${OUTCOME_UNKNOWN_WORDING}; retry with the same idempotency key`;
    return new OutcomeUnknown("UNAVAILABLE", message, idempotencyKey, options);
  }
  const message = error.rawMessage;
  switch (error.code) {
    case Code.InvalidArgument:
    case Code.FailedPrecondition:
      return new InvalidTask(code, message, options);
    case Code.PermissionDenied:
      return new PermissionDenied(code, message, options);
    case Code.Unauthenticated:
      return new Unauthenticated(code, message, options);
    case Code.ResourceExhausted:
      return new QuotaExceeded(code, message, options);
    case Code.DeadlineExceeded:
      return new OutcomeUnknown(code, message, idempotencyKey, options);
    case Code.Unavailable:
      return message.includes(OUTCOME_UNKNOWN_WORDING)
        ? new OutcomeUnknown(code, message, idempotencyKey, options)
        : new Unavailable(code, message, options);
    default:
      return new TaskGatewayError(code, message, options);
  }
}

function retryDelayMs(error: ConnectError): number | undefined {
  const [info] = error.findDetails(RetryInfoSchema);
  return info?.retryDelay === undefined ? undefined : Math.max(0, durationMs(info.retryDelay));
}

// Node's codes for a connection that was never opened (refused, unresolvable, no route) or
// whose TLS handshake failed: nothing was sent, so nothing can have been published.
const NOT_CONNECTED = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);
const TLS_FAILED = /^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|CERT_|DEPTH_ZERO_|SELF_SIGNED_)/;

/**
 * Whether the call broke in the transport after it may have reached the gateway. No gRPC
 * status came back (the gateway's answers all carry `grpc-status`), and the connection or
 * the stream broke: a Node error on the socket (ECONNRESET, EPIPE, ...), or the HTTP/2 stream
 * closed under the call (connect-node's "http/2 stream closed with error code ..."; the
 * client cancels no call of its own, so CANCELLED is one of these). gRPC's own clients call
 * all of this UNAVAILABLE; connect-node says ABORTED, CANCELLED, INTERNAL or UNAVAILABLE.
 */
function lostInFlight(error: ConnectError): boolean {
  if (error.metadata.has("grpc-status")) {
    return false;
  }
  const codes = nodeErrorCodes(error);
  if (codes.some((code) => NOT_CONNECTED.has(code) || TLS_FAILED.test(code))) {
    return false;
  }
  return (
    codes.length > 0 ||
    error.code === Code.Canceled ||
    error.rawMessage.startsWith("http/2 stream closed")
  );
}

function nodeErrorCodes(error: unknown): string[] {
  const codes: string[] = [];
  for (let reason = error; reason instanceof Error; reason = reason.cause) {
    if ("code" in reason && typeof reason.code === "string") {
      codes.push(reason.code);
    }
    if (codes.length > 10) break; // a cycle of causes
  }
  return codes;
}
