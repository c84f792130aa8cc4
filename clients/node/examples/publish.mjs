#!/usr/bin/env node
// Publish one task through the gateway's generic Publish RPC and print its task key.
//
//   node clients/node/examples/publish.mjs --target localhost:50051 --task-type images.generate \
//     --user-id 12345 --payload '{"model": "m", "prompt": "a lighthouse", "image_name": "lh"}' \
//     [--idempotency-key KEY] [--token TOKEN]
//
// Prints the task key on stdout and exits 0, or the error's code and message on stderr and
// exits 1. Build the package first (cd clients/node && npm ci && npm run build).
import { parseArgs } from "node:util";
import { OutcomeUnknown, TaskGatewayClient, TaskGatewayError } from "@task-gateway/client";

const USAGE =
  "usage: publish.mjs --target HOST:PORT --task-type T --user-id U --payload JSON " +
  "[--idempotency-key K] [--token T]";

function options() {
  const { values } = parseArgs({
    options: {
      target: { type: "string" },
      "task-type": { type: "string" },
      "user-id": { type: "string" },
      payload: { type: "string" },
      "idempotency-key": { type: "string" },
      token: { type: "string" },
    },
  });
  for (const name of ["target", "task-type", "user-id", "payload"]) {
    if (values[name] === undefined) {
      throw new Error(`--${name} is required\n${USAGE}`);
    }
  }
  let payload;
  try {
    payload = JSON.parse(values.payload);
  } catch (error) {
    throw new Error(`--payload is not JSON: ${error.message}`);
  }
  return { ...values, payload };
}

async function main() {
  let args;
  try {
    args = options();
  } catch (error) {
    console.error(error.message);
    return 2;
  }
  const client = new TaskGatewayClient(args.target, { token: args.token });
  try {
    const taskKey = await client.publish(args["task-type"], args["user-id"], args.payload, {
      idempotencyKey: args["idempotency-key"],
    });
    console.log(taskKey);
    return 0;
  } catch (error) {
    if (!(error instanceof TaskGatewayError)) throw error;
    console.error(`${error.code}: ${error.message}`);
    for (const { field, description } of error.violations) {
      console.error(`  ${field}: ${description}`);
    }
    if (error instanceof OutcomeUnknown) {
      console.error(`retry with --idempotency-key ${error.idempotencyKey}`);
    }
    return 1;
  } finally {
    client.close();
  }
}

process.exitCode = await main();
