import { KubeConfig } from "@kubernetes/client-node";
import type { IncomingMessage } from "node:http";
import https from "node:https";
import { createInterface } from "node:readline";

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

/**
 * A small REST client over a kubeconfig. kubetune talks to the API server through this one
 * class so that every request is counted, every error is an ApiError, and watches are plain
 * streams whose lifetime we control (see informer.ts for why).
 */
export class KubeClient {
  /** Requests sent since start, by HTTP verb; the benchmark reads these. */
  readonly requestCounts: Record<string, number> = {};
  private readonly server: URL;

  constructor(readonly config: KubeConfig) {
    const cluster = config.getCurrentCluster();
    if (!cluster) throw new Error("the kubeconfig has no current cluster; set its current-context");
    this.server = new URL(cluster.server);
  }

  /** Loads $KUBECONFIG or ~/.kube/config, or the in-cluster service account when in a pod. */
  static load(kubeconfigPath?: string): KubeClient {
    const config = new KubeConfig();
    if (kubeconfigPath) config.loadFromFile(kubeconfigPath);
    else config.loadFromDefault();
    return new KubeClient(config);
  }

  get<T>(path: string, query?: Query): Promise<T> {
    return this.request<T>("GET", path, { query });
  }

  list<T>(path: string, query?: Query): Promise<KubeList<T>> {
    return this.request<KubeList<T>>("GET", path, { query });
  }

  create<T>(path: string, body: unknown, query?: Query): Promise<T> {
    return this.request<T>("POST", path, { body, query });
  }

  replace<T>(path: string, body: unknown, query?: Query): Promise<T> {
    return this.request<T>("PUT", path, { body, query });
  }

  patch<T>(path: string, body: unknown, type: PatchType = "merge", query?: Query): Promise<T> {
    return this.request<T>("PATCH", path, { body, query, contentType: patchContentType[type] });
  }

  delete<T>(path: string, options?: { gracePeriodSeconds?: number; propagationPolicy?: string; preconditions?: { uid?: string } }): Promise<T> {
    return this.request<T>("DELETE", path, { body: options ? { apiVersion: "v1", kind: "DeleteOptions", ...options } : undefined });
  }

  /**
   * Streams watch events until the server ends the watch, the signal aborts, or the
   * connection fails (rejects). The caller decides what to resume from.
   */
  async watch<T>(path: string, query: Query, onEvent: (type: WatchEventType, object: T) => void, signal?: AbortSignal): Promise<void> {
    const response = await this.open("GET", path, { query: { ...query, watch: true }, signal });
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

  async request<T>(method: string, path: string, options: { query?: Query; body?: unknown; contentType?: string } = {}): Promise<T> {
    const response = await this.open(method, path, options);
    const chunks: Buffer[] = [];
    for await (const chunk of response) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    return (text ? JSON.parse(text) : undefined) as T;
  }

  private async open(
    method: string,
    path: string,
    options: { query?: Query; body?: unknown; contentType?: string; signal?: AbortSignal },
  ): Promise<IncomingMessage> {
    const url = new URL(path, this.server);
    for (const [key, value] of Object.entries(options.query ?? {})) if (value !== undefined) url.searchParams.set(key, String(value));
    const requestOptions: https.RequestOptions = { method, headers: { accept: "application/json" } };
    await this.config.applyToHTTPSOptions(requestOptions);
    let payload: string | undefined;
    if (options.body !== undefined) {
      payload = JSON.stringify(options.body);
      // An explicit length: Node sends a DELETE body unframed (and so ignored) without one.
      requestOptions.headers = {
        ...requestOptions.headers,
        "content-type": options.contentType ?? "application/json",
        "content-length": Buffer.byteLength(payload),
      };
    }
    this.requestCounts[method] = (this.requestCounts[method] ?? 0) + 1;
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const request = https.request(url, { ...requestOptions, signal: options.signal }, resolve);
      request.once("error", reject);
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
