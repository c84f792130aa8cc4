/** Throwaway certificates for the TLS tests, made with the openssl command. */
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const openssl = (...args: string[]) => promisify(execFile)("openssl", args);

export interface Certificates {
  /** The CA that signed the others. */
  ca: string;
  /** The server's, for IP 127.0.0.1. */
  serverKey: string;
  serverCert: string;
  /** The client's, CN=node-client. */
  clientKey: string;
  clientCert: string;
}

/** A CA, and a server and a client certificate it signed, valid for a day. */
export async function makeCertificates(): Promise<Certificates> {
  const dir = await mkdtemp(join(tmpdir(), "task-gateway-node-tls-"));
  const file = (name: string) => join(dir, name);
  const key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  try {
    await openssl(
      "req",
      "-x509",
      ...key,
      "-keyout",
      file("ca.key"),
      "-out",
      file("ca.crt"),
      "-days",
      "1",
      "-subj",
      "/CN=task-gateway-test-ca",
    );
    await writeFile(file("server.ext"), "subjectAltName=IP:127.0.0.1\n");
    for (const [name, subject, ext] of [
      ["server", "/CN=127.0.0.1", ["-extfile", file("server.ext")]],
      ["client", "/CN=node-client", []],
    ] as const) {
      await openssl(
        "req",
        "-new",
        ...key,
        "-keyout",
        file(`${name}.key`),
        "-out",
        file(`${name}.csr`),
        "-subj",
        subject,
      );
      await openssl(
        "x509",
        "-req",
        "-in",
        file(`${name}.csr`),
        "-CA",
        file("ca.crt"),
        "-CAkey",
        file("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        file(`${name}.crt`),
        ...ext,
      );
    }
    const read = (name: string) => readFile(file(name), "utf8");
    return {
      ca: await read("ca.crt"),
      serverKey: await read("server.key"),
      serverCert: await read("server.crt"),
      clientKey: await read("client.key"),
      clientCert: await read("client.crt"),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
