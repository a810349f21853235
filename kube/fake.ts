import { randomUUID } from "node:crypto";
import { ApiError, type KubeClient, type KubeList, type KubeObject, type PatchType, type WatchEventType } from "./client.ts";

/**
 * An in-memory stand-in for the API server, for unit tests of controllers: list, watch (with
 * resourceVersions, so an informer resumes without gaps), create, get, merge and JSON patches
 * with resourceVersion preconditions, the status subresource, and delete with finalizers.
 * holdWatch() delays one resource's watch events, as a lagging informer cache would see them.
 */
export class FakeKube {
  readonly requestCounts: Record<string, number> = {};
  /** Every request, in order: what a test asserts on. */
  readonly calls: { method: string; path: string; body?: unknown }[] = [];
  private readonly objects = new Map<string, KubeObject & Record<string, unknown>>();
  private readonly history: { rv: number; collection: string; type: WatchEventType; object: KubeObject }[] = [];
  private readonly watchers = new Set<Watcher>();
  private readonly held = new Set<string>();
  private revision = 0;

  /** This fake, typed as the client the code under test takes. */
  asClient(): KubeClient {
    return this as unknown as KubeClient;
  }

  /** Buffers watch events of one plural (e.g. "pods") until releaseWatch(). */
  holdWatch(plural: string): void {
    this.held.add(plural);
  }

  releaseWatch(plural: string): void {
    this.held.delete(plural);
    for (const watcher of this.watchers) if (watcher.plural === plural) this.flush(watcher);
  }

  /** The stored object at a path, as the server has it now. */
  stored<T>(path: string): T | undefined {
    const object = this.objects.get(parse(path).key);
    return object ? (structuredClone(object) as T) : undefined;
  }

  /** Everything stored under a collection path. */
  storedIn<T>(collectionPath: string): T[] {
    const ref = parse(collectionPath);
    return [...this.objects.entries()].filter(([key]) => inCollection(key, ref)).map(([, object]) => structuredClone(object) as T);
  }

  async get<T>(path: string): Promise<T> {
    await this.count("GET", path);
    const object = this.objects.get(parse(path).key);
    if (!object) throw notFound(path);
    return structuredClone(object) as T;
  }

  async list<T>(path: string, query: { labelSelector?: string } = {}): Promise<KubeList<T>> {
    await this.count("GET", path);
    const ref = parse(path);
    const items = [...this.objects.entries()].filter(([key, object]) => inCollection(key, ref) && matches(object, query.labelSelector)).map(([, object]) => structuredClone(object));
    return { items: items as T[], metadata: { resourceVersion: String(this.revision) } };
  }

  async create<T>(path: string, body: KubeObject): Promise<T> {
    await this.count("POST", path, body);
    const ref = parse(path);
    const name = body.metadata?.name ?? "";
    const key = `${ref.key}/${name}`;
    if (this.objects.has(key)) throw new ApiError(409, "AlreadyExists", `${path}: "${name}" already exists`);
    const object = structuredClone(body) as KubeObject & Record<string, unknown>;
    object.metadata = { ...object.metadata, namespace: ref.namespace, uid: randomUUID(), creationTimestamp: new Date().toISOString(), generation: 1 };
    this.store(key, ref.collection, "ADDED", object);
    return structuredClone(object) as T;
  }

  async patch<T>(path: string, body: unknown, type: PatchType = "merge"): Promise<T> {
    await this.count("PATCH", path, body);
    const ref = parse(path);
    const current = this.objects.get(ref.key);
    if (!current) throw notFound(path);
    let next = structuredClone(current);
    if (type === "merge") {
      const patch = structuredClone(body) as Record<string, unknown> & KubeObject;
      const precondition = patch.metadata?.resourceVersion;
      if (precondition !== undefined && precondition !== current.metadata?.resourceVersion) throw conflict(path);
      if (ref.subresource === "status") next = { ...next, status: mergePatch(next.status, patch.status) };
      else next = mergePatch(next, patch) as typeof next;
    } else if (type === "json") {
      for (const operation of body as { op: string; path: string; value?: unknown }[]) next = applyJsonOperation(next, operation, path);
    } else {
      throw new Error(`FakeKube: ${type} patches are not supported`);
    }
    next.metadata = { ...next.metadata, resourceVersion: current.metadata?.resourceVersion };
    if (next.metadata.deletionTimestamp && (next.metadata.finalizers ?? []).length === 0) {
      this.remove(ref.key, ref.collection);
      return structuredClone(next) as T;
    }
    this.store(ref.key, ref.collection, "MODIFIED", next);
    return structuredClone(next) as T;
  }

  async replace<T>(path: string, body: KubeObject): Promise<T> {
    await this.count("PUT", path, body);
    const ref = parse(path);
    const current = this.objects.get(ref.key);
    if (!current) throw notFound(path);
    if (body.metadata?.resourceVersion !== current.metadata?.resourceVersion) throw conflict(path);
    const next = structuredClone(body) as KubeObject & Record<string, unknown>;
    this.store(ref.key, ref.collection, "MODIFIED", next);
    return structuredClone(next) as T;
  }

  async delete<T>(path: string, options?: { preconditions?: { uid?: string } }): Promise<T> {
    await this.count("DELETE", path, options);
    const ref = parse(path);
    const current = this.objects.get(ref.key);
    if (!current) throw notFound(path);
    if (options?.preconditions?.uid !== undefined && options.preconditions.uid !== current.metadata?.uid) throw conflict(path);
    if ((current.metadata?.finalizers ?? []).length > 0) {
      const next = structuredClone(current);
      next.metadata = { ...next.metadata, deletionTimestamp: next.metadata?.deletionTimestamp ?? new Date().toISOString() };
      this.store(ref.key, ref.collection, "MODIFIED", next);
      return structuredClone(next) as T;
    }
    this.remove(ref.key, ref.collection);
    return structuredClone(current) as T;
  }

  /** Changes a stored object as another client would (a kubelet, a user). */
  async update(path: string, change: (object: KubeObject & Record<string, unknown>) => void): Promise<void> {
    const ref = parse(path);
    const current = this.objects.get(ref.key);
    if (!current) throw notFound(path);
    const next = structuredClone(current);
    change(next);
    this.store(ref.key, ref.collection, "MODIFIED", next);
  }

  watch<T>(path: string, query: { resourceVersion?: string; labelSelector?: string }, onEvent: (type: WatchEventType, object: T) => void, signal?: AbortSignal): Promise<void> {
    void this.count("GET", path);
    const ref = parse(path);
    return new Promise<void>((resolve) => {
      const watcher: Watcher = {
        collection: ref.collection,
        namespace: ref.namespace,
        plural: ref.plural,
        labelSelector: query.labelSelector,
        sentRevision: Number(query.resourceVersion || 0),
        onEvent: onEvent as Watcher["onEvent"],
      };
      this.watchers.add(watcher);
      this.flush(watcher);
      signal?.addEventListener("abort", () => {
        this.watchers.delete(watcher);
        resolve();
      });
    });
  }

  /** Counts a request and yields to the event loop, as a network round trip would (else a busy controller starves timers). */
  private async count(method: string, path: string, body?: unknown): Promise<void> {
    this.requestCounts[method] = (this.requestCounts[method] ?? 0) + 1;
    this.calls.push({ method, path, body: body === undefined ? undefined : structuredClone(body) });
    await new Promise((resolve) => setImmediate(resolve));
  }

  private store(key: string, collection: string, type: WatchEventType, object: KubeObject & Record<string, unknown>): void {
    this.revision += 1;
    object.metadata = { ...object.metadata, resourceVersion: String(this.revision) };
    this.objects.set(key, object);
    this.publish(collection, type, object);
  }

  private remove(key: string, collection: string): void {
    const object = this.objects.get(key)!;
    this.objects.delete(key);
    this.revision += 1;
    this.publish(collection, "DELETED", { ...object, metadata: { ...object.metadata, resourceVersion: String(this.revision) } });
  }

  private publish(collection: string, type: WatchEventType, object: KubeObject): void {
    this.history.push({ rv: Number(object.metadata?.resourceVersion), collection, type, object: structuredClone(object) });
    for (const watcher of this.watchers) this.flush(watcher);
  }

  private flush(watcher: Watcher): void {
    if (this.held.has(watcher.plural)) return;
    for (const event of this.history) {
      if (event.rv <= watcher.sentRevision) continue;
      watcher.sentRevision = event.rv;
      if (event.collection !== watcher.collection) continue;
      if (watcher.namespace && event.object.metadata?.namespace !== watcher.namespace) continue;
      if (!matches(event.object, watcher.labelSelector)) continue;
      watcher.onEvent(event.type, structuredClone(event.object));
    }
  }
}

interface Watcher {
  collection: string;
  namespace?: string;
  plural: string;
  labelSelector?: string;
  sentRevision: number;
  onEvent: (type: WatchEventType, object: KubeObject) => void;
}

interface ParsedPath {
  /** API prefix and plural, e.g. /api/v1/pods: what a watch of any namespace listens to. */
  collection: string;
  plural: string;
  namespace?: string;
  /** The collection in the namespace (and the name, for an object path). */
  key: string;
  subresource?: string;
}

function parse(path: string): ParsedPath {
  const match = /^(\/api\/v1|\/apis\/[^/]+\/[^/]+)(?:\/namespaces\/([^/]+))?\/([^/]+)(?:\/([^/]+))?(?:\/([^/]+))?$/.exec(path.split("?")[0]!);
  if (!match) throw new Error(`FakeKube: cannot parse ${path}`);
  const [, prefix, namespace, plural, name, subresource] = match as unknown as [string, string, string | undefined, string, string | undefined, string | undefined];
  const collection = `${prefix}/${plural}`;
  const inNamespace = `${collection}@${namespace ? decodeURIComponent(namespace) : ""}`;
  return { collection, plural, namespace: namespace ? decodeURIComponent(namespace) : undefined, key: name ? `${inNamespace}/${decodeURIComponent(name)}` : inNamespace, subresource };
}

function inCollection(key: string, ref: ParsedPath): boolean {
  return ref.namespace ? key.startsWith(`${ref.key}/`) : key.startsWith(`${ref.collection}@`);
}

function matches(object: KubeObject, labelSelector: string | undefined): boolean {
  if (!labelSelector) return true;
  return labelSelector.split(",").every((term) => {
    const [label, value] = term.split("=") as [string, string | undefined];
    const actual = object.metadata?.labels?.[label];
    return value === undefined ? actual !== undefined : actual === value;
  });
}

/** RFC 7386 JSON merge patch. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (typeof patch !== "object" || patch === null || Array.isArray(patch)) return patch;
  const result: Record<string, unknown> = typeof target === "object" && target !== null && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [field, value] of Object.entries(patch)) {
    if (value === null) delete result[field];
    else result[field] = mergePatch(result[field], value);
  }
  return result;
}

function applyJsonOperation<T>(object: T, operation: { op: string; path: string; value?: unknown }, requestPath: string): T {
  const segments = operation.path.split("/").slice(1).map((segment) => segment.replace(/~1/g, "/").replace(/~0/g, "~"));
  const last = segments.pop()!;
  let parent = object as Record<string, unknown>;
  for (const segment of segments) {
    const child = parent?.[segment];
    if (typeof child !== "object" || child === null) throw new ApiError(422, "Invalid", `${requestPath}: ${operation.path}: no such path`);
    parent = child as Record<string, unknown>;
  }
  if (operation.op === "test") {
    if (JSON.stringify(parent?.[last]) !== JSON.stringify(operation.value)) throw new ApiError(422, "Invalid", `${requestPath}: the test of ${operation.path} failed`);
  } else if (operation.op === "add" || operation.op === "replace") {
    parent[last] = structuredClone(operation.value);
  } else if (operation.op === "remove") {
    delete parent[last];
  } else {
    throw new Error(`FakeKube: JSON patch op ${operation.op} is not supported`);
  }
  return object;
}

function notFound(path: string): ApiError {
  return new ApiError(404, "NotFound", `${path}: not found`);
}

function conflict(path: string): ApiError {
  return new ApiError(409, "Conflict", `${path}: the object has been modified; please apply your changes to the latest version and try again`);
}
