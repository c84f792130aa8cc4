/**
 * Retries, deadlines, errors and metadata, against a fake gateway that answers as each test
 * scripts it (no broker needed).
 */
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { create as createMessage } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  OutcomeUnknown,
  QuotaExceeded,
  TaskGatewayClient,
  TaskGatewayError,
  Unavailable,
  create,
  images,
} from "@task-gateway/client";
import { RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { type Answer, FakeGateway } from "./support/fake-gateway.js";

const PAYLOAD = { model: "m", prompt: "p", image_name: "i" };

function retryInfo(delayMs: number) {
  return {
    desc: RetryInfoSchema,
    value: createMessage(RetryInfoSchema, {
      retryDelay: createMessage(DurationSchema, {
        seconds: BigInt(Math.floor(delayMs / 1000)),
        nanos: (delayMs % 1000) * 1_000_000,
      }),
    }),
  };
}

const QUOTA_WITH_RETRY_INFO = (delayMs: number) =>
  new ConnectError("quota of client 'a' reached", Code.ResourceExhausted, undefined, [
    retryInfo(delayMs),
  ]);

// The gateway's words for a publish whose confirm was lost (broker/rabbit.py).
const CONFIRM_LOST = new ConnectError(
  "lost the channel to RabbitMQ before the confirm (ChannelInvalidStateError): the outcome " +
    "is unknown; retry with the same idempotency_key to avoid a duplicate",
  Code.Unavailable,
);
const BROKER_AWAY = new ConnectError(
  "not connected to RabbitMQ; reconnecting, retry shortly",
  Code.Unavailable,
);

describe("retries and errors against a scripted server", () => {
  let fake: FakeGateway | undefined;
  let client: TaskGatewayClient | undefined;

  async function serve(
    answers: Answer[],
    options: ConstructorParameters<typeof TaskGatewayClient>[1] = {},
  ) {
    fake = await FakeGateway.start(answers);
    client = new TaskGatewayClient(fake.target, options);
    return { fake, client };
  }

  afterEach(async () => {
    client?.close();
    await fake?.close();
    client = fake = undefined;
  });

  it("RESOURCE_EXHAUSTED with a RetryInfo is retried once its retry_delay has passed", async () => {
    const { fake, client } = await serve([QUOTA_WITH_RETRY_INFO(300), "u:s:t"], {
      retry: { initialBackoffMs: 1, maxBackoffMs: 1 },
    });

    assert.equal(await client.publish("images.generate", "u", PAYLOAD), "u:s:t");

    const [first, second] = fake.calls;
    assert.equal(fake.calls.length, 2);
    // Far past the 1 ms backoff it would otherwise have used; timers are ms-granular.
    assert.ok(second!.arrivedAt - first!.arrivedAt >= 290, "waited the server's retry_delay");
  });

  it("RESOURCE_EXHAUSTED without a RetryInfo is not retried: QuotaExceeded", async () => {
    const { fake, client } = await serve([
      new ConnectError("2 publishes are already waiting", Code.ResourceExhausted),
    ]);

    await assert.rejects(client.publish("images.generate", "u", PAYLOAD), (error: unknown) => {
      assert.ok(error instanceof QuotaExceeded);
      assert.equal(error.code, "RESOURCE_EXHAUSTED");
      return true;
    });
    assert.equal(fake.calls.length, 1);
  });

  it("a RetryInfo delay past the deadline is not waited for: QuotaExceeded with the delay", async () => {
    const { fake, client } = await serve([QUOTA_WITH_RETRY_INFO(60_000)], { deadlineMs: 5_000 });

    await assert.rejects(client.publish("images.generate", "u", PAYLOAD), (error: unknown) => {
      assert.ok(error instanceof QuotaExceeded);
      assert.equal(error.retryDelayMs, 60_000);
      return true;
    });
    assert.equal(fake.calls.length, 1);
  });

  it("UNAVAILABLE is retried under the one idempotency key, each attempt with what remains of the deadline", async (t) => {
    // Backoffs of 10 then 20 ms (full jitter pinned at half the ceiling): each attempt starts
    // well over a millisecond after the one before, so its whole-ms timeout is smaller.
    t.mock.method(Math, "random", () => 0.5);
    const { fake, client } = await serve([BROKER_AWAY, BROKER_AWAY, "u:s:t"], {
      deadlineMs: 20_000,
      retry: { initialBackoffMs: 20 },
    });

    const request = create(images.GenerateRequestSchema, { userId: "u", payload: { model: "m" } });
    assert.equal(await client.submit(request), "u:s:t");

    const keys = new Set(fake.calls.map((call) => call.idempotencyKey));
    assert.equal(fake.calls.length, 3);
    assert.equal(keys.size, 1);
    assert.match([...keys][0]!, /^[0-9a-f-]{36}$/, "a generated UUID");
    assert.equal(request.idempotencyKey, "", "the caller's request is left as it was");
    const timeouts = fake.calls.map((call) => call.timeoutMs ?? Infinity);
    assert.ok(timeouts[0]! <= 20_000);
    assert.ok(timeouts[1]! < timeouts[0]! && timeouts[2]! < timeouts[1]!, String(timeouts));
  });

  it("UNAVAILABLE on every attempt ends as Unavailable after maxAttempts", async () => {
    const { fake, client } = await serve([BROKER_AWAY], {
      retry: { initialBackoffMs: 1, maxAttempts: 3 },
    });

    await assert.rejects(client.publish("images.generate", "u", PAYLOAD), Unavailable);
    assert.equal(fake.calls.length, 3);
  });

  it("a lost confirm on every attempt ends as OutcomeUnknown carrying the caller's idempotency key", async () => {
    const { fake, client } = await serve([CONFIRM_LOST], {
      retry: { initialBackoffMs: 1, maxAttempts: 3 },
    });

    await assert.rejects(
      client.publish("images.generate", "u", PAYLOAD, { idempotencyKey: "order-7" }),
      (error: unknown) => {
        assert.ok(error instanceof OutcomeUnknown);
        assert.equal(error.code, "UNAVAILABLE");
        assert.equal(error.idempotencyKey, "order-7");
        return true;
      },
    );
    assert.deepEqual(
      fake.calls.map((call) => call.idempotencyKey),
      ["order-7", "order-7", "order-7"],
    );
  });

  it("an attempt whose outcome was unknown makes the call OutcomeUnknown even when later attempts were refused", async () => {
    const { fake, client } = await serve([CONFIRM_LOST, BROKER_AWAY], {
      retry: { initialBackoffMs: 1, maxAttempts: 2 },
    });

    await assert.rejects(client.publish("images.generate", "u", PAYLOAD), (error: unknown) => {
      assert.ok(error instanceof OutcomeUnknown);
      assert.ok(error.cause instanceof Unavailable, "the last attempt's refusal is the cause");
      return true;
    });
    assert.equal(fake.calls.length, 2, "the refused attempt was made");
  });

  it("no answer within the deadline is OutcomeUnknown with DEADLINE_EXCEEDED", async () => {
    const { fake, client } = await serve(["no answer"], { deadlineMs: 300 });

    await assert.rejects(client.publish("images.generate", "u", PAYLOAD), (error: unknown) => {
      assert.ok(error instanceof OutcomeUnknown);
      assert.equal(error.code, "DEADLINE_EXCEEDED");
      return true;
    });
    assert.equal(fake.calls.length, 1);
    assert.ok(fake.calls[0]!.timeoutMs! <= 300, "the server was told the deadline");
  });

  it("the token goes with every attempt as authorization: Bearer metadata", async () => {
    const { fake, client } = await serve([BROKER_AWAY, "u:s:t"], {
      token: "s3cret",
      retry: { initialBackoffMs: 1 },
    });

    await client.publish("images.generate", "u", PAYLOAD);

    assert.deepEqual(
      fake.calls.map((call) => call.authorization),
      ["Bearer s3cret", "Bearer s3cret"],
    );
  });

  // A backoff, or an attempt, far longer than the test's timeout: the call ends in time only
  // when close() or the signal cuts it short. (The timeout only keeps a failure from hanging.)
  const LONG_MS = 120_000;

  it(
    "close() during a retry's backoff rejects the call at once with the client's closed error",
    { timeout: 30_000 },
    async (t) => {
      let backingOff!: () => void;
      const backoffStarted = new Promise<void>((resolve) => (backingOff = resolve));
      // Math.random draws the backoff's jitter: the client is about to sleep.
      t.mock.method(Math, "random", () => {
        backingOff();
        return 0.5;
      });
      const { fake, client } = await serve([BROKER_AWAY, "u:s:t"], {
        deadlineMs: 2 * LONG_MS,
        retry: { initialBackoffMs: LONG_MS, maxBackoffMs: LONG_MS },
      });

      const call = client.publish("images.generate", "u", PAYLOAD);
      await backoffStarted;
      client.close();

      await assert.rejects(call, (error: unknown) => {
        assert.ok(error instanceof TaskGatewayError);
        assert.ok(!(error instanceof OutcomeUnknown), "the one attempt was refused: not published");
        assert.equal(error.code, "CANCELLED");
        assert.match(error.message, /the client was closed/);
        return true;
      });
      assert.equal(fake.calls.length, 1);
    },
  );

  it(
    "a signal aborted during an attempt rejects the call at once: OutcomeUnknown with the key",
    { timeout: 30_000 },
    async () => {
      const { fake, client } = await serve(["no answer"], { deadlineMs: LONG_MS });
      const controller = new AbortController();

      const call = client.publish("images.generate", "u", PAYLOAD, {
        idempotencyKey: "order-9",
        signal: controller.signal,
      });
      while (fake.calls.length === 0) await new Promise((resolve) => setImmediate(resolve));
      controller.abort();

      await assert.rejects(call, (error: unknown) => {
        assert.ok(error instanceof OutcomeUnknown, String(error));
        assert.equal(error.code, "CANCELLED");
        assert.match(error.message, /the call was aborted/);
        assert.equal(error.idempotencyKey, "order-9");
        return true;
      });
      assert.equal(fake.calls.length, 1, "not retried");
    },
  );

  it("a call whose signal is already aborted is not sent: a CANCELLED naming the abort", async () => {
    const { fake, client } = await serve(["u:s:t"]);

    const call = client.publish("images.generate", "u", PAYLOAD, {
      signal: AbortSignal.abort(new Error("the user left")),
    });

    await assert.rejects(call, (error: unknown) => {
      assert.ok(error instanceof TaskGatewayError);
      assert.ok(!(error instanceof OutcomeUnknown), "nothing was sent");
      assert.equal(error.code, "CANCELLED");
      assert.match(error.message, /the call was aborted \(the user left\)/);
      return true;
    });
    assert.equal(fake.calls.length, 0);
  });
});
