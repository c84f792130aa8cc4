/**
 * `TaskGatewayClient`: typed task RPCs and the generic Publish, each resolving to the task key
 * once RabbitMQ has confirmed the task, retried safely under one idempotency key.
 */
import { randomUUID } from "node:crypto";
import type {
  DescMessage,
  DescMethodUnary,
  JsonObject,
  MessageInitShape,
} from "@bufbuild/protobuf";
import { TaskGatewayError } from "./errors.js";
import { TaskGatewayService } from "./gen/taskgateway/v1/gateway_pb.js";
import { type RetryPolicy, retryPolicy, withRetries } from "./retry.js";
import { type TaskRequest, taskMethod } from "./tasks.js";
import { type Connection, type TlsOptions, connect } from "./transport.js";

export interface ClientOptions {
  /** Sent as `authorization: Bearer <token>` with every call. */
  token?: string;
  /** TLS (and, with cert and key, mutual TLS); plaintext when absent. */
  tls?: TlsOptions;
  /** The time a call may take in all, retries included, in milliseconds (default 30 s). */
  deadlineMs?: number;
  /** Overrides of the retry policy (see DEFAULT_RETRY). */
  retry?: Partial<RetryPolicy>;
  /**
   * How many HTTP/2 connections the client opens (default 1); its calls take them in turn. The
   * gateway's workers share its port and the kernel spreads connections over them, not calls:
   * a client that should keep several workers busy opens at least as many connections.
   */
  connections?: number;
}

export interface CallOptions {
  /** This call's deadline in milliseconds, retries included, instead of the client's. */
  deadlineMs?: number;
  /**
   * Stops the call when aborted, during an attempt or a backoff: it rejects at once with a
   * CANCELLED "the call was aborted", an OutcomeUnknown if an attempt may have published it.
   */
  signal?: AbortSignal;
}

export interface PublishOptions extends CallOptions {
  /** The task's idempotency key; a new UUID when absent. Reused by every retry. */
  idempotencyKey?: string;
}

export const DEFAULT_DEADLINE_MS = 30_000;

export class TaskGatewayClient {
  readonly #connection: Connection;
  readonly #retry: RetryPolicy;
  readonly #deadlineMs: number;
  #closed = false;
  /** The calls under way, each stopped by its controller: close() aborts them. */
  readonly #calls = new Set<AbortController>();

  /** A client of the gateway at `target` ("host:port"); it connects on the first call. */
  constructor(target: string, options: ClientOptions = {}) {
    this.#retry = retryPolicy(options.retry);
    this.#deadlineMs = checkDeadline(options.deadlineMs ?? DEFAULT_DEADLINE_MS, "deadlineMs");
    this.#connection = connect(target, options.tls, options.token, options.connections);
  }

  /**
   * Publish a typed task, e.g. an `images.v1.GenerateRequest` made with `create()`, through
   * its typed RPC. Resolves to the task key. Without an idempotency key on the request, one
   * is generated for it (the request itself is not changed).
   */
  async submit(request: TaskRequest, options: CallOptions = {}): Promise<string> {
    const method = taskMethod(request);
    const idempotencyKey = request.idempotencyKey || randomUUID();
    const keyed = { ...request, idempotencyKey };
    return this.#call(method, keyed, idempotencyKey, options);
  }

  /**
   * Publish a task through the generic `taskgateway.v1.TaskGatewayService/Publish`, its
   * payload a JSON object (checked by the gateway against the task type's payload message,
   * when it has one). Resolves to the task key.
   */
  async publish(
    taskType: string,
    userId: string,
    payload: JsonObject,
    options: PublishOptions = {},
  ): Promise<string> {
    if (typeof payload !== "object" || payload === null || Array.isArray(payload)) {
      throw new TypeError(`payload must be a JSON object, got ${JSON.stringify(payload)}`);
    }
    const idempotencyKey = options.idempotencyKey || randomUUID();
    const request = { taskType, userId, payload, idempotencyKey };
    return this.#call(TaskGatewayService.method.publish, request, idempotencyKey, options);
  }

  /**
   * Close the connections. Calls under way reject at once, in an attempt or a backoff, with a
   * CANCELLED "the client was closed" (an OutcomeUnknown if an attempt may have published the
   * task); later calls are refused with it.
   */
  close(): void {
    this.#closed = true;
    for (const call of this.#calls) {
      call.abort(closedError());
    }
    this.#connection.close();
  }

  /** Call the task RPC `method` with `request`, retried under its idempotency key; its task key. */
  async #call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    idempotencyKey: string,
    options: CallOptions,
  ): Promise<string> {
    const deadlineMs = checkDeadline(options.deadlineMs ?? this.#deadlineMs, "deadlineMs");
    // Stopped by close() or by the caller's signal, whichever comes first.
    const stop = new AbortController();
    const callerSignal = options.signal;
    const abortedByCaller = () => stop.abort(callerSignal?.reason);
    if (this.#closed) {
      stop.abort(closedError());
    } else if (callerSignal?.aborted) {
      abortedByCaller();
    }
    callerSignal?.addEventListener("abort", abortedByCaller, { once: true });
    this.#calls.add(stop);
    try {
      return await withRetries(
        async (timeoutMs, signal) => {
          const response = await this.#connection
            .next()
            .unary(method, signal, timeoutMs, undefined, request);
          // Every task RPC's response has a task_key: Publish's, and those tasks.ts keeps.
          return (response.message as unknown as { taskKey: string }).taskKey;
        },
        this.#retry,
        deadlineMs,
        idempotencyKey,
        stop.signal,
      );
    } finally {
      this.#calls.delete(stop);
      callerSignal?.removeEventListener("abort", abortedByCaller);
    }
  }
}

function closedError(): TaskGatewayError {
  return new TaskGatewayError("CANCELLED", "the client was closed");
}

function checkDeadline(value: number, name: string): number {
  if (typeof value !== "number" || !(value > 0) || !Number.isFinite(value)) {
    throw new TypeError(`${name} must be a number of milliseconds > 0, got ${String(value)}`);
  }
  return value;
}
