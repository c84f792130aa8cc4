/**
 * A real RabbitMQ for the broker tests: a vhost of their own on the RabbitMQ at
 * TASK_GATEWAY_TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/), created with
 * rabbitmqctl, with the topology of deploy/rabbitmq/definitions.json declared into it (the
 * gateway never declares any), and a way to read back what landed in a queue.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { connect as connectTcp } from "node:net";
import { resolve } from "node:path";
import { promisify } from "node:util";
import * as amqp from "amqplib";
import { REPO_ROOT } from "./paths.js";

const BASE_URL = new URL(
  process.env.TASK_GATEWAY_TEST_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/",
);
const DEFINITIONS = resolve(REPO_ROOT, "deploy/rabbitmq/definitions.json");

const run = promisify(execFile);

async function rabbitmqctl(...args: string[]): Promise<void> {
  await run("rabbitmqctl", ["-q", ...args], { timeout: 60_000 });
}

/** A vhost of the tests' own, deleted by `remove()`. */
export interface TestVhost {
  /** The AMQP URL of the vhost. */
  readonly url: string;
  remove(): Promise<void>;
}

/**
 * A fresh vhost, or why there can be none. Without a broker the tests skip on a laptop, and
 * fail in CI (CI=true), so that a green CI always means they ran.
 */
export async function testVhost(): Promise<TestVhost | { skip: string }> {
  const host = BASE_URL.hostname || "127.0.0.1";
  const port = Number(BASE_URL.port || 5672);
  const unreachable = await reachable(host, port);
  if (unreachable !== undefined) {
    return unavailable(`cannot reach RabbitMQ at ${host}:${port}: ${unreachable}`);
  }
  const vhost = `task-gateway-node-test-${randomBytes(4).toString("hex")}`;
  const user = decodeURIComponent(BASE_URL.username || "guest");
  try {
    await rabbitmqctl("add_vhost", vhost);
    await rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*");
  } catch (error) {
    const reason =
      (error as NodeJS.ErrnoException).code === "ENOENT"
        ? "rabbitmqctl is not on PATH (it creates the test vhost)"
        : `rabbitmqctl could not create vhost ${vhost}: ${String(error)}`;
    return unavailable(reason);
  }
  const url = new URL(BASE_URL);
  url.pathname = `/${encodeURIComponent(vhost)}`;
  return {
    url: url.toString(),
    remove: () => rabbitmqctl("delete_vhost", vhost),
  };
}

function unavailable(reason: string): { skip: string } {
  if (["1", "true", "yes"].includes((process.env.CI ?? "").toLowerCase())) {
    throw new Error(`RabbitMQ tests cannot run in CI: ${reason}`);
  }
  return { skip: `no RabbitMQ for the broker tests: ${reason}` };
}

function reachable(host: string, port: number): Promise<string | undefined> {
  return new Promise((done) => {
    const socket = connectTcp({ host, port, timeout: 2_000 });
    socket.once("connect", () => {
      socket.destroy();
      done(undefined);
    });
    socket.once("timeout", () => {
      socket.destroy();
      done("timed out");
    });
    socket.once("error", (error) => done(error.message));
  });
}

/** A message as it landed in a queue. */
export interface Landed {
  readonly body: Record<string, unknown>;
  readonly messageId: string | undefined;
}

interface Definitions {
  exchanges: { name: string; type: string; durable: boolean; auto_delete: boolean }[];
  queues: { name: string; durable: boolean; arguments: Record<string, unknown> }[];
  bindings: { source: string; destination: string; routing_key: string }[];
}

/** The definitions' exchanges, queues and bindings in a vhost, and what landed in its queues. */
export class Topology {
  private constructor(
    private readonly connection: amqp.ChannelModel,
    private readonly channel: amqp.Channel,
    private readonly definitions: Definitions,
  ) {}

  static async declare(url: string): Promise<Topology> {
    const connection = await amqp.connect(url);
    const channel = await connection.createChannel();
    const topology = new Topology(
      connection,
      channel,
      JSON.parse(readFileSync(DEFINITIONS, "utf8")) as Definitions,
    );
    for (const ex of topology.definitions.exchanges) {
      await channel.assertExchange(ex.name, ex.type, {
        durable: ex.durable,
        autoDelete: ex.auto_delete,
      });
    }
    for (const q of topology.definitions.queues) {
      await channel.assertQueue(q.name, { durable: q.durable, arguments: q.arguments });
    }
    for (const b of topology.definitions.bindings) {
      await channel.bindQueue(b.destination, b.source, b.routing_key);
    }
    return topology;
  }

  /** Empty every queue, so that a test sees only what it made land. */
  async purge(): Promise<void> {
    for (const q of this.definitions.queues) {
      await this.channel.purgeQueue(q.name);
    }
  }

  /** Consume (and ack) everything in a queue right now. */
  async drain(queue: string): Promise<Landed[]> {
    const landed: Landed[] = [];
    for (;;) {
      const message = await this.channel.get(queue, { noAck: true });
      if (message === false) {
        return landed;
      }
      landed.push({
        body: JSON.parse(message.content.toString("utf8")) as Record<string, unknown>,
        messageId: message.properties.messageId as string | undefined,
      });
    }
  }

  async close(): Promise<void> {
    await this.connection.close();
  }
}
