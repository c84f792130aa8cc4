/**
 * The client against a real gateway (`python -m gateway`) publishing to a real RabbitMQ: what
 * each call returns is checked against what landed in the queues.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { after, before, beforeEach, describe, it } from "node:test";
import { promisify } from "node:util";
import {
  InvalidTask,
  OutcomeUnknown,
  TaskGatewayClient,
  create,
  images,
} from "@task-gateway/client";
import { type RunningGateway, startGateway } from "./support/gateway.js";
import { PACKAGE_ROOT } from "./support/paths.js";
import { AnswerLosingProxy } from "./support/proxy.js";
import { type Landed, Topology, testVhost } from "./support/rabbitmq.js";

const vhost = await testVhost();

/** The task id of a task key, user_id:service_name:task_id. */
function taskId(taskKey: string): string {
  return taskKey.split(":")[2] ?? "";
}

function taskIds(landed: Landed[]): Set<unknown> {
  return new Set(landed.map((message) => message.body.task_id));
}

describe(
  "the client against a gateway and RabbitMQ",
  { skip: "skip" in vhost && vhost.skip },
  () => {
    let topology: Topology;
    let gateway: RunningGateway;
    let client: TaskGatewayClient;

    before(async () => {
      if ("skip" in vhost) return;
      topology = await Topology.declare(vhost.url);
      gateway = await startGateway(vhost.url);
      client = new TaskGatewayClient(gateway.target, { deadlineMs: 10_000 });
    });

    after(async () => {
      if ("skip" in vhost) return;
      client?.close();
      await gateway?.stop();
      await topology?.close();
      await vhost.remove();
    });

    beforeEach(() => topology.purge());

    it("submit() sends a typed request to its RPC; one message lands with its task id and payload", async () => {
      const request = create(images.GenerateRequestSchema, {
        userId: "12345",
        payload: { model: "m", prompt: "a lighthouse", imageName: "lighthouse", width: 512 },
      });

      const taskKey = await client.submit(request);

      assert.match(taskKey, /^12345:image-generation:[0-9a-f-]{36}$/);
      const landed = await topology.drain("images.queue");
      assert.deepEqual(
        landed.map((message) => message.body),
        [
          {
            task_id: taskId(taskKey),
            user_id: "12345",
            task_type: "images.generate",
            payload: { model: "m", prompt: "a lighthouse", image_name: "lighthouse", width: 512 },
          },
        ],
      );
    });

    it("publish() sends a generic task with a JSON payload; one message lands with its task id and payload", async () => {
      const payload = { model: "v", prompt: "waves", video_name: "waves", duration_seconds: 5 };

      const taskKey = await client.publish("videos.generate", "u-1", payload);

      assert.match(taskKey, /^u-1:video-generation:[0-9a-f-]{36}$/);
      const landed = await topology.drain("videos.queue");
      assert.deepEqual(
        landed.map((message) => message.body),
        [{ task_id: taskId(taskKey), user_id: "u-1", task_type: "videos.generate", payload }],
      );
    });

    it("a call whose answer was lost is retried under the same idempotency key: one task id in all that landed", async () => {
      const proxy = await AnswerLosingProxy.start(gateway.target);
      const viaProxy = new TaskGatewayClient(proxy.target, {
        deadlineMs: 10_000,
        retry: { initialBackoffMs: 10 },
      });
      try {
        const taskKey = await viaProxy.publish("images.generate", "u-2", {
          model: "m",
          prompt: "p",
          image_name: "retried",
        });

        const landed = await topology.drain("images.queue");
        assert.equal(proxy.answersLost, 1, "the first answer was cut off");
        assert.equal(landed.length, 2, "the first attempt and the retry both published");
        assert.deepEqual(taskIds(landed), new Set([taskId(taskKey)]));
      } finally {
        viaProxy.close();
        await proxy.close();
      }
    });

    for (const cut of ["reset", "close"] as const) {
      it(`a lost answer (connection ${cut}) with no retry left is OutcomeUnknown; retrying with its key gives the same task`, async () => {
        const proxy = await AnswerLosingProxy.start(gateway.target, cut);
        const once = new TaskGatewayClient(proxy.target, { retry: { maxAttempts: 1 } });
        const payload = { model: "m", prompt: "p", image_name: "unknown" };
        try {
          const error = await once.publish("images.generate", "u-3", payload).then(
            () => assert.fail("the answer was lost, yet the call resolved"),
            (reason: unknown) => reason,
          );
          assert.ok(error instanceof OutcomeUnknown, String(error));
          assert.equal(error.code, "UNAVAILABLE");

          const taskKey = await client.publish("images.generate", "u-3", payload, {
            idempotencyKey: error.idempotencyKey,
          });

          const landed = await topology.drain("images.queue");
          assert.equal(landed.length, 2, "the lost attempt and the retry both published");
          assert.deepEqual(taskIds(landed), new Set([taskId(taskKey)]));
        } finally {
          once.close();
          await proxy.close();
        }
      });
    }

    it("a request the gateway rejects is an InvalidTask naming the field, and nothing lands", async () => {
      const request = create(images.GenerateRequestSchema, {
        userId: "12345",
        payload: { model: "m", prompt: "no name" },
      });

      await assert.rejects(client.submit(request), (error: unknown) => {
        assert.ok(error instanceof InvalidTask);
        assert.equal(error.code, "INVALID_ARGUMENT");
        assert.deepEqual(
          error.violations.map((violation) => violation.field),
          ["payload.image_name"],
        );
        return true;
      });
      assert.deepEqual(await topology.drain("images.queue"), []);
    });

    it("examples/publish.mjs prints the task key of the message that landed", async () => {
      const { stdout } = await promisify(execFile)(process.execPath, [
        resolve(PACKAGE_ROOT, "examples/publish.mjs"),
        "--target",
        gateway.target,
        "--task-type",
        "images.generate",
        "--user-id",
        "12345",
        "--payload",
        JSON.stringify({ model: "m", prompt: "p", image_name: "example" }),
      ]);

      const landed = await topology.drain("images.queue");
      assert.equal(landed.length, 1);
      assert.equal(stdout, `12345:image-generation:${String(landed[0]?.body.task_id)}\n`);
    });
  },
);
