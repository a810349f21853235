import { existsSync } from "node:fs";
import { open, readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";

/**
 * The kubelet's log endpoint for the local pod runner, so that `kubectl logs` and
 * `kubetune logs` work: the API server proxies pods/log to
 * GET https://<node InternalIP>:<kubeletEndpoint port>/containerLogs/<namespace>/<pod>/<container>
 * with its kubelet client certificate, which this server requires (signed by the cluster CA).
 *
 * It serves the container's output as written (stdout and stderr interleaved), with
 * follow, tailLines and limitBytes. It keeps no per-line times, so timestamps, sinceSeconds
 * and sinceTime are ignored; containers are never restarted, so previous=true finds nothing.
 */

export interface KubeletTls {
  certFile: string;
  keyFile: string;
  /** CA that signed the API server's kubelet client certificate. */
  clientCaFile: string;
}

/** Where a container's log is, and whether it may still grow; or why there is none (HTTP status and message). */
export type LogLocation = { file: string; running(): boolean } | { status: number; message: string };

export class KubeletServer {
  private server?: https.Server;
  private readonly follows = new Set<() => void>();

  constructor(
    private readonly tls: KubeletTls,
    private readonly locate: (namespace: string, pod: string, container: string) => LogLocation,
  ) {}

  async listen(): Promise<number> {
    const [cert, key, ca] = await Promise.all([readFile(this.tls.certFile), readFile(this.tls.keyFile), readFile(this.tls.clientCaFile)]);
    this.server = https.createServer({ cert, key, ca, requestCert: true, rejectUnauthorized: true }, (request, response) => {
      void this.handle(request, response).catch((error: unknown) => {
        if (!response.headersSent) response.writeHead(500, { "content-type": "text/plain" });
        response.end(`${(error as Error).message}\n`);
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const stop of this.follows) stop();
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server!.close(() => resolve()));
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? "/", "https://kubelet");
    const match = /^\/containerLogs\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(url.pathname);
    if (request.method !== "GET" || !match) {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    const [namespace, pod, container] = match.slice(1).map(decodeURIComponent) as [string, string, string];
    if (url.searchParams.get("previous") === "true") {
      response.writeHead(400, { "content-type": "text/plain" }).end(`previous terminated container "${container}" in pod "${pod}" not found\n`);
      return;
    }
    const location = this.locate(namespace, pod, container);
    if ("status" in location) {
      response.writeHead(location.status, { "content-type": "text/plain" }).end(`${location.message}\n`);
      return;
    }
    const tailLines = url.searchParams.has("tailLines") ? Number(url.searchParams.get("tailLines")) : undefined;
    let budget = url.searchParams.has("limitBytes") ? Number(url.searchParams.get("limitBytes")) : Infinity;
    const write = (chunk: Buffer) => {
      const part = chunk.subarray(0, Math.max(0, Math.min(chunk.length, budget)));
      budget -= part.length;
      if (part.length) response.write(part);
    };
    response.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
    const content = existsSync(location.file) ? await readFile(location.file) : Buffer.alloc(0);
    write(tailLines === undefined ? content : lastLines(content, tailLines));
    let position = content.length;
    if (url.searchParams.get("follow") !== "true" || budget <= 0) {
      response.end();
      return;
    }
    await new Promise<void>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      let stopped = false;
      const stop = () => {
        if (stopped) return;
        stopped = true;
        clearTimeout(timer);
        this.follows.delete(stop);
        response.end();
        resolve();
      };
      this.follows.add(stop);
      response.once("close", stop);
      const poll = async () => {
        const running = location.running();
        const grown = await readFrom(location.file, position);
        position += grown.length;
        write(grown);
        if (budget <= 0 || (!running && grown.length === 0)) return stop();
        if (!stopped) timer = setTimeout(() => void poll(), 200);
      };
      void poll();
    });
  }
}

function lastLines(content: Buffer, count: number): Buffer {
  if (count <= 0) return Buffer.alloc(0);
  let end = content.length;
  if (end > 0 && content[end - 1] === 0x0a) end -= 1;
  let start = end;
  for (let found = 0; start > 0; start--) {
    if (content[start - 1] === 0x0a && ++found === count) break;
  }
  return content.subarray(start);
}

async function readFrom(file: string, position: number): Promise<Buffer> {
  const handle = await open(file, "r").catch(() => undefined);
  if (!handle) return Buffer.alloc(0);
  try {
    const { size } = await handle.stat();
    if (size <= position) return Buffer.alloc(0);
    const buffer = Buffer.alloc(size - position);
    await handle.read(buffer, 0, buffer.length, position);
    return buffer;
  } finally {
    await handle.close();
  }
}
