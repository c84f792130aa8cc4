/**
 * A small gRPC server that answers the gateway's Publish and typed RPCs as a test scripts it
 * (connect-node's server, so its errors carry `grpc-status-details-bin` as a gateway's do),
 * and records what each call brought: for the answers the real gateway cannot be made to
 * give on demand (RESOURCE_EXHAUSTED with RetryInfo, a confirm that never comes).
 */
import { once } from "node:events";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { ConnectError, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { ImagesService } from "../../src/gen/images/v1/images_pb.js";
import { TaskGatewayService } from "../../src/gen/taskgateway/v1/gateway_pb.js";

/** What the fake answers one call with: a task key, an error, or nothing until the deadline. */
export type Answer = string | ConnectError | "no answer";

/** What one call brought. */
export interface Call {
  readonly idempotencyKey: string;
  readonly authorization: string | null;
  /** The call's grpc-timeout header, in milliseconds. */
  readonly timeoutMs: number | undefined;
  /** When it arrived, by performance.now(). */
  readonly arrivedAt: number;
}

export interface FakeGatewayOptions {
  /** Serve TLS with this key and certificate; with `ca`, require a client certificate it signed. */
  tls?: { key: string; cert: string; ca?: string };
}

export class FakeGateway {
  readonly calls: Call[] = [];
  /** The subject CN of the client certificate of each TLS connection that presented one. */
  readonly clientNames: string[] = [];
  /** How many calls each client connection (HTTP/2 session) brought, in the order they came. */
  readonly callsPerConnection: number[] = [];

  private constructor(
    private readonly server: http2.Http2Server | http2.Http2SecureServer,
    private readonly answers: Answer[],
  ) {}

  /** Answer the calls in turn with `answers`; the last answer repeats. */
  static async start(answers: Answer[], options: FakeGatewayOptions = {}): Promise<FakeGateway> {
    let fake: FakeGateway | undefined;
    const answer = async (
      request: { idempotencyKey: string },
      context: HandlerContext,
    ): Promise<{ taskKey: string }> => {
      if (fake === undefined) throw new Error("not started");
      return fake.answer(request, context);
    };
    const handler = connectNodeAdapter({
      routes: (router) => {
        router.service(TaskGatewayService, { publish: answer });
        router.service(ImagesService, { generate: answer, edit: answer });
      },
    });
    const tls = options.tls;
    const server =
      tls === undefined
        ? http2.createServer(handler)
        : http2.createSecureServer(
            {
              key: tls.key,
              cert: tls.cert,
              ...(tls.ca === undefined ? {} : { ca: tls.ca, requestCert: true }),
            },
            handler,
          );
    fake = new FakeGateway(server, answers);
    const perConnection = fake.callsPerConnection;
    server.on("session", (session) => {
      const connection = perConnection.push(0) - 1;
      session.on("stream", () => {
        perConnection[connection] = (perConnection[connection] ?? 0) + 1;
      });
    });
    server.on("secureConnection", (socket) => {
      const subject = socket.getPeerCertificate().subject;
      if (subject?.CN !== undefined) fake?.clientNames.push(String(subject.CN));
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    return fake;
  }

  /** Its address, "127.0.0.1:PORT". */
  get target(): string {
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    const closed = once(this.server, "close");
    this.server.close();
    await closed;
  }

  private async answer(
    request: { idempotencyKey: string },
    context: HandlerContext,
  ): Promise<{ taskKey: string }> {
    this.calls.push({
      idempotencyKey: request.idempotencyKey,
      authorization: context.requestHeader.get("authorization"),
      timeoutMs: context.timeoutMs(),
      arrivedAt: performance.now(),
    });
    const answer = this.answers[Math.min(this.calls.length, this.answers.length) - 1];
    if (answer === "no answer") {
      await once(context.signal, "abort"); // the client's deadline
      throw context.signal.reason;
    }
    if (answer instanceof ConnectError || answer === undefined) {
      throw answer ?? new Error("no answer scripted");
    }
    return { taskKey: answer };
  }
}
