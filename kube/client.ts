import type { IncomingMessage } from "node:http";
import https from "node:https";
import { createInterface } from "node:readline";
import { Kubeconfig, type ClusterConfig, type LoadOptions } from "./config-loader.ts";

/** The fields every Kubernetes object has that kubetune reads. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    generation?: number;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    finalizers?: string[];
    deletionTimestamp?: Date | string;
    deletionGracePeriodSeconds?: number;
    creationTimestamp?: Date | string;
    ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean; blockOwnerDeletion?: boolean }[];
  };
}

export interface KubeList<T> {
  items: T[];
  metadata: { resourceVersion?: string; continue?: string };
}

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";

/** A failed API request: the HTTP status and the Status object's reason and message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** A request that got no complete answer within the client's timeout; the caller retries it as any failed request. */
export class RequestTimeoutError extends Error {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly timeoutMs: number,
  ) {
    super(`${method} ${path}: no response within ${timeoutMs / 1000}s`);
    this.name = "RequestTimeoutError";
  }
}

export type PatchType = "merge" | "json" | "strategic" | "apply";
const patchContentType: Record<PatchType, string> = {
  merge: "application/merge-patch+json",
  json: "application/json-patch+json",
  strategic: "application/strategic-merge-patch+json",
  apply: "application/apply-patch+yaml",
};

/** Where a resource lives in the REST API. */
export interface ResourceRef {
  /** "" for the core group. */
  group: string;
  version: string;
  plural: string;
  namespace?: string;
  name?: string;
  subresource?: string;
}

export function resourcePath(ref: ResourceRef): string {
  const base = ref.group === "" ? `/api/${ref.version}` : `/apis/${ref.group}/${ref.version}`;
  const namespace = ref.namespace ? `/namespaces/${encodeURIComponent(ref.namespace)}` : "";
  const name = ref.name ? `/${encodeURIComponent(ref.name)}` : "";
  const subresource = ref.subresource ? `/${ref.subresource}` : "";
  return `${base}${namespace}/${ref.plural}${name}${subresource}`;
}

type Query = Record<string, string | number | boolean | undefined>;

/** Per-request settings: a caller's own deadline (the lease renew uses the time left of its renew deadline). */
export interface RequestOptions {
  signal?: AbortSignal;
  /** Overrides the client's request timeout for this request. */
  timeoutMs?: number;
}

export interface KubeClientOptions {
  /**
   * A request that has not completed this long after it was sent fails with
   * RequestTimeoutError (for watches and streams: until the response headers arrive). The
   * API server ends its own non-long-running requests after 60 s; a stuck connection would
   * otherwise hold the caller (and its work-queue key) forever.
   */
  requestTimeoutMs?: number;
}

/** The TLS material and headers that the kubeconfig gives, re-read at most this often (rotated tokens and certificates). */
const CREDENTIALS_REFRESH_MS = 10_000;

/**
 * The kubeconfig's credentials and the one keep-alive agent built from them.
 * applyToHTTPSOptions reads the certificate and token files (and the library's also builds a new
 * agent, so: a new TCP and TLS connection) on every call; we call it now and then and keep one
 * agent until the TLS material changes, so that requests share a pool of open connections.
 */
interface Credentials {
  agent: https.Agent;
  headers: Record<string, string>;
  /** ca, cert, key, servername, rejectUnauthorized: what the agent was built from. */
  fingerprint: string;
  readAt: number;
}

/**
 * A small REST client over a kubeconfig. kubetune talks to the API server through this one
 * class so that every request is counted, every error is an ApiError, and watches are plain
 * streams whose lifetime we control (see informer.ts for why).
 */
export class KubeClient {
  /** Requests sent since start, by HTTP verb; the benchmark reads these. */
  readonly requestCounts: Record<string, number> = {};
  private readonly server: URL;
  private readonly requestTimeoutMs: number;
  private credentials?: Credentials;
  /** The credentials being read, shared by the requests that wait for them (so that they share one agent too). */
  private refreshing?: Promise<Credentials>;

  constructor(
    readonly config: ClusterConfig,
    options: KubeClientOptions = {},
  ) {
    const cluster = config.getCurrentCluster();
    if (!cluster) throw new Error("the kubeconfig has no current cluster; set its current-context");
    this.server = new URL(cluster.server);
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
  }

  /** Loads the given kubeconfig, else $KUBECONFIG or ~/.kube/config, else the in-cluster service account (config-loader.ts). */
  static load(kubeconfigPath?: string, options?: KubeClientOptions & LoadOptions): KubeClient {
    return new KubeClient(Kubeconfig.load(kubeconfigPath, options), options);
  }

  get<T>(path: string, query?: Query, options?: RequestOptions): Promise<T> {
    return this.request<T>("GET", path, { query, ...options });
  }

  list<T>(path: string, query?: Query): Promise<KubeList<T>> {
    return this.request<KubeList<T>>("GET", path, { query });
  }

  create<T>(path: string, body: unknown, query?: Query, options?: RequestOptions): Promise<T> {
    return this.request<T>("POST", path, { body, query, ...options });
  }

  replace<T>(path: string, body: unknown, query?: Query, options?: RequestOptions): Promise<T> {
    return this.request<T>("PUT", path, { body, query, ...options });
  }

  patch<T>(path: string, body: unknown, type: PatchType = "merge", query?: Query): Promise<T> {
    return this.request<T>("PATCH", path, { body, query, contentType: patchContentType[type] });
  }

  delete<T>(path: string, options?: { gracePeriodSeconds?: number; propagationPolicy?: string; preconditions?: { uid?: string } }): Promise<T> {
    return this.request<T>("DELETE", path, { body: options ? { apiVersion: "v1", kind: "DeleteOptions", ...options } : undefined });
  }

  /**
   * Streams watch events until the server ends the watch, the signal aborts, or the
   * connection fails (rejects). onOpen runs once the server has accepted the watch. The
   * caller decides what to resume from, and when a silent watch is dead (informer.ts).
   */
  async watch<T>(path: string, query: Query, onEvent: (type: WatchEventType, object: T) => void, signal?: AbortSignal, onOpen?: () => void): Promise<void> {
    const response = await this.open("GET", path, { query: { ...query, watch: true }, signal });
    onOpen?.();
    const lines = createInterface({ input: response, crlfDelay: Infinity });
    try {
      for await (const line of lines) {
        if (!line.trim()) continue;
        const event = JSON.parse(line) as { type: WatchEventType; object: T };
        onEvent(event.type, event.object);
      }
    } catch (error) {
      if (signal?.aborted) return;
      throw error;
    } finally {
      response.destroy();
    }
  }

  /** A GET whose body is read as it arrives, such as pods/log with follow=true. */
  stream(path: string, query?: Query, signal?: AbortSignal): Promise<IncomingMessage> {
    return this.open("GET", path, { query, signal });
  }

  async request<T>(method: string, path: string, options: { query?: Query; body?: unknown; contentType?: string } & RequestOptions = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs;
    // One deadline for the whole exchange, body included: a server that sends headers and then stalls is as stuck as one that never answers.
    const deadline = AbortSignal.timeout(timeoutMs);
    const signal = options.signal ? AbortSignal.any([options.signal, deadline]) : deadline;
    try {
      const response = await this.open(method, path, { ...options, signal, timeoutMs: Infinity });
      const chunks: Buffer[] = [];
      for await (const chunk of response) chunks.push(chunk as Buffer);
      const text = Buffer.concat(chunks).toString("utf8");
      return (text ? JSON.parse(text) : undefined) as T;
    } catch (error) {
      if (deadline.aborted && !options.signal?.aborted) throw new RequestTimeoutError(method, path, timeoutMs);
      throw error;
    }
  }

  /** Closes the pooled connections (idle ones at once, busy ones when their request ends). */
  close(): void {
    this.credentials?.agent.destroy();
    this.credentials = undefined;
  }

  private currentCredentials(): Credentials | Promise<Credentials> {
    if (this.credentials && Date.now() - this.credentials.readAt < CREDENTIALS_REFRESH_MS) return this.credentials;
    this.refreshing ??= this.readCredentials(this.credentials)
      .then((credentials) => (this.credentials = credentials))
      .finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  private async readCredentials(previous: Credentials | undefined): Promise<Credentials> {
    const options: https.RequestOptions = { headers: {} };
    await this.config.applyToHTTPSOptions(options);
    const text = (value: unknown) => (value === undefined ? "" : Buffer.isBuffer(value) ? value.toString("base64") : String(value));
    const fingerprint = [options.ca, options.cert, options.key, options.servername, options.rejectUnauthorized].map(text).join("|");
    const headers = Object.fromEntries(Object.entries(options.headers ?? {}).map(([name, value]) => [name, String(value)]));
    if (options.auth) headers.authorization = `Basic ${Buffer.from(options.auth).toString("base64")}`;
    if (previous?.fingerprint === fingerprint) return { ...previous, headers, readAt: Date.now() };
    // New TLS material (first use, or a rotated certificate): a new pool. The old one's open connections finish their requests.
    const agent = new https.Agent({
      keepAlive: true,
      // TCP keep-alive probes on idle pooled sockets, so that a peer that vanished is noticed by the kernel.
      keepAliveMsecs: 30_000,
      maxFreeSockets: 32,
      ca: options.ca,
      cert: options.cert,
      key: options.key,
      servername: options.servername,
      rejectUnauthorized: options.rejectUnauthorized,
    });
    return { agent, headers, fingerprint, readAt: Date.now() };
  }

  private async open(
    method: string,
    path: string,
    options: { query?: Query; body?: unknown; contentType?: string } & RequestOptions,
  ): Promise<IncomingMessage> {
    const url = new URL(path, this.server);
    for (const [key, value] of Object.entries(options.query ?? {})) if (value !== undefined) url.searchParams.set(key, String(value));
    const credentials = await this.currentCredentials();
    const headers: Record<string, string | number> = { ...credentials.headers, accept: "application/json" };
    let payload: string | undefined;
    if (options.body !== undefined) {
      payload = JSON.stringify(options.body);
      // An explicit length: Node sends a DELETE body unframed (and so ignored) without one.
      headers["content-type"] = options.contentType ?? "application/json";
      headers["content-length"] = Buffer.byteLength(payload);
    }
    this.requestCounts[method] = (this.requestCounts[method] ?? 0) + 1;
    // Until the response headers arrive; a watch or stream may then stay open as long as its reader wants.
    const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs;
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const request = https.request(url, { method, headers, agent: credentials.agent, signal: options.signal }, (answer) => {
        clearTimeout(timer);
        resolve(answer);
      });
      const timer = Number.isFinite(timeoutMs) ? setTimeout(() => request.destroy(new RequestTimeoutError(method, path, timeoutMs)), timeoutMs) : undefined;
      request.once("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
      request.end(payload);
    });
    const status = response.statusCode ?? 0;
    if (status >= 200 && status < 300) return response;
    const chunks: Buffer[] = [];
    for await (const chunk of response) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    let parsed: { reason?: string; message?: string; details?: unknown } = {};
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      parsed = { message: text };
    }
    throw new ApiError(status, parsed.reason ?? String(status), `${method} ${path}: ${status} ${parsed.message ?? ""}`.trim(), parsed.details);
  }
}

export function isNotFound(error: unknown): boolean {
  return error instanceof ApiError && error.status === 404;
}

export function isConflict(error: unknown): boolean {
  return error instanceof ApiError && error.status === 409;
}

export function isAlreadyExists(error: unknown): boolean {
  return error instanceof ApiError && error.status === 409 && error.reason === "AlreadyExists";
}
