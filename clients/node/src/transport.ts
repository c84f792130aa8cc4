/**
 * The connection to a gateway: gRPC over HTTP/2 (connect-node's gRPC transport, on Node's own
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
  readonly transport: Transport;
  /** Close the HTTP/2 connection, cancelling the calls still on it. */
  close(): void;
}

/** A connection to `target` ("host:port"), opened on the first call. */
export function connect(
  target: string,
  tls: TlsOptions | undefined,
  token: string | undefined,
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
  const baseUrl = `${tls === undefined ? "http" : "https"}://${target}`;
  const sessions = new Http2SessionManager(baseUrl, {}, tls === undefined ? {} : { ...tls });
  const interceptors: Interceptor[] = token === undefined ? [] : [bearer(token)];
  return {
    transport: createGrpcTransport({ baseUrl, sessionManager: sessions, interceptors }),
    close: () => sessions.abort(),
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
