import { KubeConfig } from "@kubernetes/client-node";
import { mkdtemp, readFile } from "node:fs/promises";
import type { RequestListener } from "node:http";
import https from "node:https";
import net, { type AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { makePki, type Pki } from "../localcluster/pki.ts";
import { KubeClient, RequestTimeoutError } from "./client.ts";

function clientFor(port: number, caFile: string, requestTimeoutMs?: number): KubeClient {
  const config = new KubeConfig();
  config.loadFromOptions({
    clusters: [{ name: "local", server: `https://127.0.0.1:${port}`, caFile, skipTLSVerify: false }],
    users: [{ name: "user", token: "secret-token" }],
    contexts: [{ name: "local", cluster: "local", user: "user" }],
    currentContext: "local",
  });
  return new KubeClient(config, { requestTimeoutMs });
}

describe("KubeClient", () => {
  let pki: Pki;
  const cleanups: (() => void)[] = [];
  beforeAll(async () => {
    pki = await makePki(await mkdtemp(path.join(os.tmpdir(), "kubetune-client-test-")));
  });
  afterEach(() => {
    for (const cleanup of cleanups.splice(0)) cleanup();
  });

  async function listen(server: net.Server): Promise<number> {
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => server.close());
    return (server.address() as AddressInfo).port;
  }

  async function httpsServer(handler: RequestListener): Promise<{ port: number; connections: () => number }> {
    const server = https.createServer({ cert: await readFile(pki.servingCert), key: await readFile(pki.servingKey) }, handler);
    let connections = 0;
    server.on("secureConnection", () => (connections += 1));
    cleanups.push(() => server.closeAllConnections());
    return { port: await listen(server), connections: () => connections };
  }

  it("sends many requests over one kept-alive TLS connection, with the kubeconfig's token", async () => {
    const seen: string[] = [];
    const server = await httpsServer((request, response) => {
      seen.push(request.headers.authorization ?? "");
      response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ path: request.url }));
    });
    const client = clientFor(server.port, pki.caCert);
    cleanups.push(() => client.close());
    for (let index = 0; index < 20; index += 1) expect(await client.get<{ path: string }>(`/api/v1/namespaces/n${index}`)).toEqual({ path: `/api/v1/namespaces/n${index}` });
    // The library's per-request agents made one TLS connection per request.
    expect(server.connections()).toBe(1);
    // Requests at once need connections at once; afterwards the pool keeps them for the next requests.
    await Promise.all(Array.from({ length: 10 }, () => client.get("/api/v1/pods")));
    const afterBurst = server.connections();
    expect(afterBurst).toBeLessThanOrEqual(10);
    for (let index = 0; index < 10; index += 1) await client.get("/api/v1/pods");
    expect(server.connections()).toBe(afterBurst);
    expect(seen).toEqual(Array(40).fill("Bearer secret-token"));
  });

  it("fails a request to a server that accepts the connection and never answers, after the request timeout", async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((socket) => sockets.push(socket));
    cleanups.push(() => sockets.forEach((socket) => socket.destroy()));
    const client = clientFor(await listen(silent), pki.caCert, 500);
    cleanups.push(() => client.close());
    const started = Date.now();
    const error = await client.get("/api/v1/pods").catch((failure: unknown) => failure);
    expect(error).toBeInstanceOf(RequestTimeoutError);
    expect((error as Error).message).toBe("GET /api/v1/pods: no response within 0.5s");
    expect(Date.now() - started).toBeGreaterThanOrEqual(450);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it("fails a request whose response starts and then stalls, and a per-request timeout overrides the client's", async () => {
    const server = await httpsServer((_request, response) => {
      response.writeHead(200, { "content-type": "application/json" });
      response.write('{"items": [');
    });
    const client = clientFor(server.port, pki.caCert, 60_000);
    cleanups.push(() => client.close());
    const error = await client.get("/api/v1/pods", undefined, { timeoutMs: 300 }).catch((failure: unknown) => failure);
    expect(error).toBeInstanceOf(RequestTimeoutError);
  });

  it("bounds a watch only until the server accepts it, then leaves the stream open", async () => {
    const server = await httpsServer((_request, response) => {
      response.writeHead(200, { "content-type": "application/json" });
      response.write(`${JSON.stringify({ type: "ADDED", object: { metadata: { name: "a" } } })}\n`);
      setTimeout(() => response.end(`${JSON.stringify({ type: "ADDED", object: { metadata: { name: "b" } } })}\n`), 600);
    });
    const client = clientFor(server.port, pki.caCert, 200);
    cleanups.push(() => client.close());
    const names: string[] = [];
    let opened = false;
    await client.watch<{ metadata: { name: string } }>("/api/v1/pods", {}, (_type, object) => names.push(object.metadata.name), undefined, () => (opened = true));
    expect(opened).toBe(true);
    expect(names).toEqual(["a", "b"]);
  });
});
