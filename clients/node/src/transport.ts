/**
 * The connections to a gateway: gRPC over HTTP/2 (connect-node's gRPC transport, on Node's own
 * `http2`), plaintext or TLS with an optional client certificate, and the bearer token sent
 * with every call.
 */
import type { Interceptor, Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

/** TLS to the gateway; an empty object trusts the system's CAs. PEM text or buffers. */
export interface TlsOptions {
  /** The CA certificates that sign the gateway's certificate, instead of the system's. */
  ca?: string | Buffer;
  /** The client's certificate, for mutual TLS (with `key`). */
  cert?: string | Buffer;
  /** The client certificate's private key. */
  key?: string | Buffer;
}

export interface Connection {
  /** The transport of the next call: the connections take the calls in turn. */
  next(): Transport;
  /** Close the HTTP/2 connections, cancelling the calls still on them. */
  close(): void;
}

/**
 * `connections` HTTP/2 connections to `target` ("host:port"), each opened on its first call.
 *
 * The gateway's worker processes share its port, and the kernel spreads connections over
 * them, not calls: one connection keeps a client on one worker.
 */
export function connect(
  target: string,
  tls: TlsOptions | undefined,
  token: string | undefined,
  connections = 1,
): Connection {
  if (typeof target !== "string" || !/^(\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+):\d+$/.test(target)) {
    throw new TypeError(
      `target must be "host:port" (e.g. "localhost:50051"), got ${JSON.stringify(target)}`,
    );
  }
  if (tls !== undefined && (tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("tls.cert and tls.key go together: both set for mutual TLS, or neither");
  }
  // What an HTTP/2 header value can carry after "Bearer ": visible ASCII. Anything else would
  // fail every call later, or go out mangled. The message does not show the token.
  if (token !== undefined && (typeof token !== "string" || !/^[\x21-\x7e]+$/.test(token))) {
    throw new TypeError(
      "token must be a non-empty string of visible ASCII characters (0x21-0x7e: no spaces, " +
        "control characters or non-ASCII)",
    );
  }
  if (!Number.isInteger(connections) || connections < 1) {
    throw new TypeError(`connections must be an integer >= 1, got ${String(connections)}`);
  }
  const baseUrl = `${tls === undefined ? "http" : "https"}://${target}`;
  const interceptors: Interceptor[] = token === undefined ? [] : [bearer(token)];
  const sessions = Array.from(
    { length: connections },
    () => new Http2SessionManager(baseUrl, {}, tls === undefined ? {} : { ...tls }),
  );
  const transports = sessions.map((sessionManager) =>
    createGrpcTransport({ baseUrl, sessionManager, interceptors }),
  );
  let turn = 0;
  return {
    next: () => transports[turn++ % transports.length] as Transport,
    close: () => {
      for (const session of sessions) session.abort();
    },
  };
}

/** Sends `authorization: Bearer <token>` metadata with every call. */
function bearer(token: string): Interceptor {
  const value = `Bearer ${token}`;
  return (next) => (request) => {
    request.header.set("authorization", value);
    return next(request);
  };
}
