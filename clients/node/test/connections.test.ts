/** A client of several connections sends its calls over each in turn. */
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { TaskGatewayClient, create, images } from "@task-gateway/client";
import { FakeGateway } from "./support/fake-gateway.js";

describe("connections", () => {
  let fake: FakeGateway | undefined;
  let client: TaskGatewayClient | undefined;

  afterEach(async () => {
    client?.close();
    await fake?.close();
    client = fake = undefined;
  });

  for (const connections of [1, 3]) {
    it(`six calls on a client of ${connections} connection(s) go ${6 / connections} on each`, async () => {
      fake = await FakeGateway.start(["u:s:t"]);
      client = new TaskGatewayClient(fake.target, { connections });
      const request = create(images.GenerateRequestSchema, { userId: "u" });
      for (let i = 0; i < 6; i++) {
        assert.equal(await client.submit(request), "u:s:t");
      }
      assert.deepEqual(fake.callsPerConnection, Array(connections).fill(6 / connections));
    });
  }
});
