/** TLS and mutual TLS to a server that requires a client certificate. */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { OutcomeUnknown, TaskGatewayClient, TaskGatewayError } from "@task-gateway/client";
import { type Certificates, makeCertificates } from "./support/certs.js";
import { FakeGateway } from "./support/fake-gateway.js";

const PAYLOAD = { model: "m", prompt: "p", image_name: "i" };

describe("TLS", () => {
  let certs: Certificates;
  let fake: FakeGateway;

  before(async () => {
    certs = await makeCertificates();
    fake = await FakeGateway.start(["u:s:t"], {
      tls: { key: certs.serverKey, cert: certs.serverCert, ca: certs.ca },
    });
  });

  after(() => fake.close());

  it("with the CA and a client certificate the call goes over mutual TLS", async () => {
    const client = new TaskGatewayClient(fake.target, {
      tls: { ca: certs.ca, cert: certs.clientCert, key: certs.clientKey },
    });
    try {
      assert.equal(await client.publish("images.generate", "u", PAYLOAD), "u:s:t");
    } finally {
      client.close();
    }
    assert.deepEqual(fake.clientNames, ["node-client"]);
  });

  it("a server certificate no trusted CA signed fails the call, which reached no server", async () => {
    const calls = fake.calls.length;
    const client = new TaskGatewayClient(fake.target, { tls: {} }); // the system's CAs only
    try {
      await assert.rejects(client.publish("images.generate", "u", PAYLOAD), (error: unknown) => {
        assert.ok(
          error instanceof TaskGatewayError && !(error instanceof OutcomeUnknown),
          String(error),
        );
        assert.match(error.message, /certificate/);
        return true;
      });
    } finally {
      client.close();
    }
    assert.equal(fake.calls.length, calls);
  });
});
