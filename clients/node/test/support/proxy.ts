/**
 * A TCP proxy in front of a gateway that loses the first answer: on its first connection it
 * reads the gateway's HTTP/2 frames and cuts the connection when the first frame of a
 * response (HEADERS or DATA on a stream) arrives, without passing it on. The gateway answers
 * only once RabbitMQ confirmed the task, so by then the task was published, and the client
 * never hears of it. Later connections pass through untouched. The cut is a TCP reset, or an
 * orderly close (as a proxy or a dying process closes).
 */
import { once } from "node:events";
import { type AddressInfo, type Server, type Socket, connect, createServer } from "node:net";

const FRAME_HEADER_BYTES = 9;
const DATA = 0x0;
const HEADERS = 0x1;

export type Cut = "reset" | "close";

export class AnswerLosingProxy {
  /** How many answers were cut off (1 once the first call went through it). */
  answersLost = 0;

  private readonly sockets = new Set<Socket>();

  private constructor(private readonly server: Server) {}

  static async start(upstream: string, cut: Cut = "reset"): Promise<AnswerLosingProxy> {
    const [host, port] = splitTarget(upstream);
    let connections = 0;
    const server = createServer((client) => {
      const gateway = connect({ host, port });
      const first = connections++ === 0;
      for (const socket of [client, gateway]) {
        proxy.sockets.add(socket);
        socket.once("close", () => proxy.sockets.delete(socket));
      }
      client.on("error", () => gateway.destroy());
      gateway.on("error", () => client.destroy());
      client.pipe(gateway);
      if (first) {
        proxy.cutAtFirstAnswer(gateway, client, cut);
      } else {
        gateway.pipe(client);
      }
    });
    const proxy = new AnswerLosingProxy(server);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    return proxy;
  }

  /** The proxy's address, "127.0.0.1:PORT". */
  get target(): string {
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    this.server.close();
    for (const socket of this.sockets) {
      socket.destroy();
    }
  }

  /** Pass the gateway's frames on, whole, until the first one that answers a call. */
  private cutAtFirstAnswer(gateway: Socket, client: Socket, cut: Cut): void {
    let pending = Buffer.alloc(0);
    gateway.on("data", (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= FRAME_HEADER_BYTES) {
        const length = pending.readUIntBE(0, 3);
        const type = pending[3];
        const streamId = pending.readUInt32BE(5) & 0x7fffffff;
        if (streamId !== 0 && (type === HEADERS || type === DATA)) {
          this.answersLost++;
          gateway.destroy();
          if (cut === "reset") {
            client.resetAndDestroy();
          } else {
            client.destroy();
          }
          return;
        }
        if (pending.length < FRAME_HEADER_BYTES + length) {
          return; // wait for the rest of the frame
        }
        client.write(pending.subarray(0, FRAME_HEADER_BYTES + length));
        pending = pending.subarray(FRAME_HEADER_BYTES + length);
      }
    });
  }
}

function splitTarget(target: string): [string, number] {
  const colon = target.lastIndexOf(":");
  return [target.slice(0, colon), Number(target.slice(colon + 1))];
}
