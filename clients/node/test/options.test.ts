/** Mistakes in the client's options or a request are TypeErrors naming what is wrong. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { TaskGatewayClient, create, images } from "@task-gateway/client";

describe("bad options and requests", () => {
  it("a target with a scheme or without a port is refused, naming target", () => {
    for (const target of ["http://localhost:50051", "localhost", ""]) {
      assert.throws(() => new TaskGatewayClient(target), /^TypeError: target must be "host:port"/);
    }
  });

  it("a client certificate without its key is refused, naming tls.cert and tls.key", () => {
    assert.throws(
      () => new TaskGatewayClient("localhost:1", { tls: { cert: "PEM" } }),
      /tls\.cert and tls\.key go together/,
    );
  });

  it("a retry setting out of range is refused, naming it", () => {
    assert.throws(
      () => new TaskGatewayClient("localhost:1", { retry: { maxAttempts: 0 } }),
      /retry\.maxAttempts must be an integer >= 1, got 0/,
    );
    assert.throws(
      () =>
        new TaskGatewayClient("localhost:1", { retry: { initialBackoffMs: 10, maxBackoffMs: 5 } }),
      /retry\.maxBackoffMs must be a number >= initialBackoffMs, got 5/,
    );
    assert.throws(
      () => new TaskGatewayClient("localhost:1", { deadlineMs: 0 }),
      /deadlineMs must be/,
    );
  });

  it("a connection count that is no integer from 1 is refused, naming connections", () => {
    for (const connections of [0, -1, 1.5, Number.NaN]) {
      assert.throws(
        () => new TaskGatewayClient("localhost:1", { connections }),
        new RegExp(`^TypeError: connections must be an integer >= 1, got ${String(connections)}`),
      );
    }
  });

  it("a token that is not visible ASCII is refused, naming token and not showing it", () => {
    for (const token of ["", "tök€n", "abc ", "a b", "a\u0000b", "a\tb", "a\r\nb"]) {
      assert.throws(
        () => new TaskGatewayClient("localhost:1", { token }),
        (error: unknown) => {
          assert.ok(error instanceof TypeError, `${JSON.stringify(token)}: ${String(error)}`);
          assert.match(error.message, /^token must be/);
          assert.ok(token === "" || !error.message.includes(token), "the token is not shown");
          return true;
        },
      );
    }
    new TaskGatewayClient("localhost:1", { token: "eyJhbGciOi.J9-_~+/=" }).close();
  });

  it("submit() of a message that is no task request is refused, listing the request types", async () => {
    const client = new TaskGatewayClient("localhost:1");
    const payload = create(images.GeneratePayloadSchema, { model: "m" });

    await assert.rejects(
      // @ts-expect-error: a payload is not a request, as the compiler says too
      client.submit(payload),
      /images\.v1\.GeneratePayload is not a task request; .*images\.v1\.EditRequest, images\.v1\.GenerateRequest, videos\.v1\.AnimateRequest, videos\.v1\.GenerateRequest/,
    );
    client.close();
  });

  it("publish() of a payload that is not a JSON object is refused, naming payload", async () => {
    const client = new TaskGatewayClient("localhost:1");
    await assert.rejects(
      // @ts-expect-error: the compiler refuses it too
      client.publish("images.generate", "u", ["a"]),
      /payload must be a JSON object/,
    );
    client.close();
  });
});
