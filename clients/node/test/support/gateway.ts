/**
 * A real gateway, `python -m gateway --workers 1`, publishing to a test vhost: the Python is
 * TASK_GATEWAY_PYTHON, or the repository's .venv (which `make` creates).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { resolve } from "node:path";
import { createInterface } from "node:readline";
import { REPO_ROOT } from "./paths.js";

const PYTHON = process.env.TASK_GATEWAY_PYTHON ?? resolve(REPO_ROOT, ".venv/bin/python");
const START_TIMEOUT_MS = 30_000;

export interface RunningGateway {
  /** Its gRPC address, "127.0.0.1:PORT". */
  readonly target: string;
  /** Stop it with SIGTERM (a graceful shutdown) and wait until it exited. */
  stop(): Promise<void>;
}

/** A free TCP port on the loopback interface. */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  if (address === null || typeof address === "string") {
    throw new Error(`unexpected server address ${String(address)}`);
  }
  return address.port;
}

/**
 * Start a gateway publishing to `amqpUrl`, and resolve once it listens, is connected to
 * RabbitMQ (both logged as events), and answers GET /readyz with 200.
 */
export async function startGateway(amqpUrl: string): Promise<RunningGateway> {
  if (!existsSync(PYTHON)) {
    throw new Error(
      `no Python for the gateway at ${PYTHON}: run 'make test-unit' in the repository ` +
        "(it creates .venv), or set TASK_GATEWAY_PYTHON",
    );
  }
  const grpcPort = await freePort();
  const httpPort = await freePort();
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith("TASK_GATEWAY__")),
  );
  const gateway = spawn(PYTHON, ["-m", "gateway", "--workers", "1"], {
    cwd: REPO_ROOT,
    env: {
      ...env,
      TASK_GATEWAY__BROKER__ADDRESS: amqpUrl,
      TASK_GATEWAY__GRPC__ADDRESS: `127.0.0.1:${grpcPort}`,
      TASK_GATEWAY__SERVER__ADDRESS: `127.0.0.1:${httpPort}`,
      TASK_GATEWAY__LOG__FORMAT: "json",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const log: string[] = [];
  try {
    await untilLogged(gateway, log, ["task gateway listening", "connected to RabbitMQ"]);
    const ready = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
    if (ready.status !== 200) {
      throw new Error(`GET /readyz answered ${ready.status}: ${await ready.text()}`);
    }
  } catch (error) {
    gateway.kill("SIGKILL");
    throw new Error(`the gateway did not start: ${String(error)}\n${log.join("\n")}`);
  }
  return {
    target: `127.0.0.1:${grpcPort}`,
    stop: async () => {
      if (gateway.exitCode === null && gateway.signalCode === null) {
        const exited = once(gateway, "exit");
        gateway.kill("SIGTERM");
        await exited;
      }
    },
  };
}

/** Resolve once every one of `events` was logged (JSON lines, in any order). */
function untilLogged(gateway: ChildProcess, log: string[], events: string[]): Promise<void> {
  const waiting = new Set(events);
  return new Promise((done, fail) => {
    const timer = setTimeout(
      () => fail(new Error(`no ${[...waiting].join(", ")} within ${START_TIMEOUT_MS} ms`)),
      START_TIMEOUT_MS,
    );
    for (const stream of [gateway.stdout, gateway.stderr]) {
      if (stream === null) continue;
      createInterface({ input: stream }).on("line", (line) => {
        log.push(line);
        const event = eventOf(line);
        if (event !== undefined && waiting.delete(event) && waiting.size === 0) {
          clearTimeout(timer);
          done();
        }
      });
    }
    gateway.once("exit", (code, signal) => {
      clearTimeout(timer);
      fail(new Error(`the gateway exited (code ${code}, signal ${signal})`));
    });
    gateway.once("error", (error) => {
      clearTimeout(timer);
      fail(error);
    });
  });
}

function eventOf(line: string): string | undefined {
  try {
    const event = (JSON.parse(line) as { event?: unknown }).event;
    return typeof event === "string" ? event : undefined;
  } catch {
    return undefined; // not a log event (e.g. a traceback line)
  }
}
