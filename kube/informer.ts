import { ApiError, type KubeClient, type KubeObject, type WatchEventType } from "./client.ts";

export interface InformerHandlers<T> {
  add?(object: T): void;
  update?(object: T, old: T): void;
  delete?(object: T): void;
}

export interface InformerOptions<T extends KubeObject = KubeObject> {
  /** The collection path, e.g. /api/v1/pods or /apis/kubetune.io/v1alpha1/namespaces/ns/finetunejobs. */
  path: string;
  labelSelector?: string;
  fieldSelector?: string;
  /**
   * The server ends each watch after this long and we re-watch from the last resourceVersion.
   * Bounding every watch is the cure for watches that silently stop delivering events. By
   * default 60-120 s, spread (as client-go's reflector spreads its 5-10 minutes) so that
   * informers started together do not re-watch together.
   */
  watchTimeoutSeconds?: number;
  /** Every this often, every cached object is delivered again as an update (0: never). */
  resyncMs?: number;
  /**
   * A watch that brings no event and no bookmark for this long is taken for dead and opened
   * again; meanwhile isWatching() is false, which fails readiness. A live watch that sees no
   * change still ends at its timeout (and the API server bookmarks a quiet one about every
   * two minutes), so by default this is the watch timeout plus 30 s: what only a dead
   * connection (a half-open TCP socket, a stuck proxy) exceeds, which would otherwise freeze
   * the cache with no error at all.
   */
  watchIdleTimeoutSeconds?: number;
  /**
   * Applied to every object before it is cached and handed to handlers, as client-go's
   * SetTransform: drop what the informer's readers never use so that large caches stay small.
   * Runs after stripServerBookkeeping, which every informer applies. Must not mutate shared
   * state; it receives a freshly parsed object and may return it changed.
   */
  transform?: (object: T) => T;
  log?: (message: string) => void;
}

/** The last-applied copy that `kubectl apply` (client-side) keeps: a second copy of the whole object. */
const LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration";

/**
 * Removes what only the API server reads: managedFields (server-side apply's field owners,
 * often larger than the object) and kubectl's last-applied annotation. A cached object is
 * never written back whole, and a PUT without managedFields keeps the stored ones anyway.
 *
 * The metadata (and annotations) are copied without those fields rather than `delete`d from:
 * deleting a property that is not the last one added turns a V8 object into a hash table
 * ("dictionary mode"), and custom resources' metadata comes with sorted keys, managedFields
 * in the middle. That cost about 380 bytes per cached FineTuneJob, some 15% of it.
 */
export function stripServerBookkeeping<T extends KubeObject>(object: T): T {
  const metadata = object.metadata as (KubeObject["metadata"] & { managedFields?: unknown }) | undefined;
  if (!metadata) return object;
  const hasLastApplied = metadata.annotations !== undefined && LAST_APPLIED in metadata.annotations;
  if (!("managedFields" in metadata) && !hasLastApplied) return object;
  const { managedFields: _managedFields, annotations, ...rest } = metadata;
  const kept: NonNullable<KubeObject["metadata"]> = rest;
  let keptAnnotations = annotations;
  if (hasLastApplied) {
    const { [LAST_APPLIED]: _lastApplied, ...others } = annotations!;
    keptAnnotations = Object.keys(others).length ? others : undefined;
  }
  // Added back rather than deleted when empty, for the same reason.
  if (keptAnnotations) kept.annotations = keptAnnotations;
  object.metadata = kept;
  return object;
}

/** Strings up to this long are interned: names, namespaces, kinds, reasons, messages and times; not large free text. */
const INTERN_MAX_LENGTH = 128;
/**
 * Distinct strings the interner holds before it starts afresh: its table and the strings only it still holds take a
 * few hundred KiB (under 3 MiB were every one of them 128 characters long).
 */
const INTERN_MAX_ENTRIES = 16_384;

/**
 * Makes equal strings in cached objects one string. JSON.parse gives every string value its
 * own copy: each cached FineTuneJob and pod repeats its namespace, apiVersion, kind, labels,
 * finalizer, its conditions' types, reasons and messages and their times, and the job's
 * defaulted spec values, some 40-byte string each: over a quarter of a cached job's size. Canonical
 * copies are kept in a table that is emptied once it holds INTERN_MAX_ENTRIES strings (unique
 * values such as uids and resourceVersions fill it), so it never grows with the cache; a
 * string seen again after that is just canonicalised afresh. Strings are immutable values, so
 * sharing them changes nothing a reader can see.
 */
export class StringInterner {
  private readonly table = new Map<string, string>();

  constructor(
    private readonly maxEntries = INTERN_MAX_ENTRIES,
    private readonly maxLength = INTERN_MAX_LENGTH,
  ) {}

  intern(value: string): string {
    if (value.length > this.maxLength) return value;
    const canonical = this.table.get(value);
    if (canonical !== undefined) return canonical;
    if (this.table.size >= this.maxEntries) this.table.clear();
    this.table.set(value, value);
    return value;
  }

  /** Replaces, in place, every string value in a JSON-shaped object (plain objects and arrays) by its canonical copy. */
  internAll<T>(object: T): T {
    if (Array.isArray(object)) {
      for (let index = 0; index < object.length; index += 1) {
        const value: unknown = object[index];
        if (typeof value === "string") object[index] = this.intern(value);
        else if (value !== null && typeof value === "object") this.internAll(value);
      }
    } else if (object !== null && typeof object === "object" && isPlainObject(object)) {
      const record = object as Record<string, unknown>;
      for (const field in record) {
        const value = record[field];
        if (typeof value === "string") record[field] = this.intern(value);
        else if (value !== null && typeof value === "object") this.internAll(value);
      }
    }
    return object;
  }

  get size(): number {
    return this.table.size;
  }
}

function isPlainObject(value: object): boolean {
  const prototype: unknown = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/** One table for every informer of the process: a namespace or a kind cached by two informers is then one string too. */
const sharedInterner = new StringInterner();

/**
 * A transform that keeps only the named top-level fields and dotted paths (e.g. "status",
 * "spec.nodeName") besides apiVersion, kind and metadata; for caches whose readers need a
 * small part of a large object (a pod's status, not its containers and environment).
 */
export function keepOnlyFields<T extends KubeObject>(paths: string[]): (object: T) => T {
  const wanted = paths.map((entry) => entry.split("."));
  return (object) => {
    const source = object as unknown as Record<string, unknown>;
    const kept: Record<string, unknown> = { apiVersion: source.apiVersion, kind: source.kind, metadata: source.metadata };
    for (const segments of wanted) {
      let from: unknown = source;
      for (const segment of segments) from = from !== null && typeof from === "object" ? (from as Record<string, unknown>)[segment] : undefined;
      if (from === undefined) continue;
      let to = kept;
      for (const segment of segments.slice(0, -1)) {
        to[segment] ??= {};
        to = to[segment] as Record<string, unknown>;
      }
      to[segments.at(-1)!] = from;
    }
    return kept as unknown as T;
  };
}

/** Exponential backoff from 250 ms to 30 s with full jitter, so that informers that failed together do not retry together. */
function backoffMs(failures: number): number {
  const ceiling = Math.min(30_000, 250 * 2 ** Math.min(failures, 7));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

function key(object: KubeObject): string {
  return `${object.metadata?.namespace ?? ""}/${object.metadata?.name ?? ""}`;
}

/** A secondary index: objects by the values a function computes from them (e.g. pods by owner). */
interface Index<T> {
  valuesOf: (object: T) => string[];
  /**
   * Index value -> the one object with that value, or (from the second) object key -> object. Most values have one
   * object (a job's pods: one per attempt), and a Map for one entry costs some 200 bytes: 2 MiB with 10,000 pods.
   */
  entries: Map<string, T | Map<string, T>>;
}

/**
 * A list+watch cache of one kind: lists once, then watches from the list's resourceVersion,
 * asks for bookmarks, re-watches from the last resourceVersion when a watch ends or goes
 * idle, relists on 410 Gone, and backs off between failed attempts. isWatching() feeds the
 * readiness probe. Named indexes (addIndex/byIndex) answer "which objects have this value"
 * without scanning the cache, as client-go's Indexer does.
 */
export class Informer<T extends KubeObject> {
  private readonly cache = new Map<string, T>();
  private readonly handlers: InformerHandlers<T>[] = [];
  private readonly indexes = new Map<string, Index<T>>();
  private resourceVersion = "";
  private abort = new AbortController();
  private watching = false;
  /** When the current watch last showed life (opened, event, bookmark), by Date.now(). */
  private lastHeardAt = 0;
  /** The current watch's idle timeout (it follows the watch's own timeout). */
  private idleMs = 0;
  private synced = false;
  private stopped = false;
  private loop?: Promise<void>;
  private resyncTimer?: NodeJS.Timeout;

  constructor(
    private readonly client: KubeClient,
    private readonly options: InformerOptions<T>,
  ) {}

  on(handlers: InformerHandlers<T>): this {
    this.handlers.push(handlers);
    return this;
  }

  /**
   * Adds a named index: byIndex(name, value) then returns the cached objects for which
   * valuesOf returns value. May be added before or after start().
   */
  addIndex(name: string, valuesOf: (object: T) => string[]): this {
    if (this.indexes.has(name)) throw new Error(`informer ${this.options.path}: an index named ${name} exists already`);
    const index: Index<T> = { valuesOf, entries: new Map() };
    this.indexes.set(name, index);
    for (const [objectKey, object] of this.cache) this.indexObject(index, objectKey, object);
    return this;
  }

  /** The cached objects whose index `name` holds `value`; throws for an index never added. */
  byIndex(name: string, value: string): T[] {
    const index = this.indexes.get(name);
    if (!index) throw new Error(`informer ${this.options.path}: no index named ${name}; call addIndex first`);
    const entry = index.entries.get(value);
    if (entry === undefined) return [];
    return entry instanceof Map ? [...entry.values()] : [entry];
  }

  /** Starts the list+watch loop; resolves once the first list is in the cache. */
  async start(): Promise<void> {
    await this.relist();
    this.synced = true;
    this.loop = this.watchLoop();
    if (this.options.resyncMs) {
      this.resyncTimer = setInterval(() => {
        for (const object of this.cache.values()) this.emit("update", object, object);
      }, this.options.resyncMs);
      this.resyncTimer.unref();
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.resyncTimer);
    this.abort.abort();
    await this.loop;
  }

  list(): T[] {
    return [...this.cache.values()];
  }

  get(namespace: string | undefined, name: string): T | undefined {
    return this.cache.get(`${namespace ?? ""}/${name}`);
  }

  hasSynced(): boolean {
    return this.synced;
  }

  /**
   * True while a watch is open (or being re-opened after a normal end) and has shown life
   * within the idle timeout: false on a cache that may be frozen.
   */
  isWatching(): boolean {
    return this.watching && Date.now() - this.lastHeardAt <= this.idleMs;
  }

  private async relist(): Promise<void> {
    const seen = new Set<string>();
    let continueToken: string | undefined;
    let resourceVersion = "";
    do {
      const page = await this.client.list<T>(this.options.path, {
        labelSelector: this.options.labelSelector,
        fieldSelector: this.options.fieldSelector,
        limit: 500,
        continue: continueToken,
      });
      for (const item of page.items) {
        const object = this.transform(item);
        seen.add(key(object));
        this.upsert(object);
      }
      continueToken = page.metadata.continue || undefined;
      resourceVersion = page.metadata.resourceVersion ?? "";
    } while (continueToken);
    for (const [cachedKey, object] of [...this.cache]) {
      if (!seen.has(cachedKey)) {
        this.remove(cachedKey);
        this.emit("delete", object);
      }
    }
    this.resourceVersion = resourceVersion;
    this.lastHeardAt = Date.now();
  }

  private async watchLoop(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      // Aborts only this watch, when it has gone idle.
      const watchAbort = new AbortController();
      const startedAt = Date.now();
      const timeoutSeconds = this.options.watchTimeoutSeconds ?? Math.round(60 * (1 + Math.random()));
      this.idleMs = (this.options.watchIdleTimeoutSeconds ?? timeoutSeconds + 30) * 1000;
      const idleMs = this.idleMs;
      let idle = false;
      // The watchdog: a watch that has not shown life for the idle timeout is cut, and re-opened below.
      const watchdog = setInterval(
        () => {
          if (Date.now() - Math.max(this.lastHeardAt, startedAt) <= idleMs) return;
          idle = true;
          watchAbort.abort();
        },
        Math.min(5000, idleMs / 4),
      );
      watchdog.unref();
      try {
        this.watching = true;
        let gone = false;
        let failed = false;
        await this.client.watch<T & { code?: number; message?: string }>(
          this.options.path,
          {
            resourceVersion: this.resourceVersion,
            allowWatchBookmarks: true,
            timeoutSeconds,
            labelSelector: this.options.labelSelector,
            fieldSelector: this.options.fieldSelector,
          },
          (type, object) => {
            this.lastHeardAt = Date.now();
            if (type === "ERROR") {
              if (object.code === 410) gone = true;
              else {
                failed = true;
                this.options.log?.(`watch ${this.options.path}: ${object.message ?? "error"}`);
              }
              return;
            }
            this.handleEvent(type, object);
          },
          AbortSignal.any([this.abort.signal, watchAbort.signal]),
          () => (this.lastHeardAt = Date.now()),
        );
        if (this.stopped) break;
        if (gone) await this.relist();
        if (idle) this.options.log?.(`watch ${this.options.path}: no event or bookmark for ${idleMs / 1000}s; re-opening it`);
        if (failed || idle) {
          // An error event other than 410 ends the watch at once, and an idle one may be a sign of a sick server:
          // re-watching at once would hammer the API server.
          failures += 1;
          await this.sleep(backoffMs(failures));
        } else {
          failures = 0;
        }
      } catch (error) {
        if (this.stopped) break;
        this.watching = false;
        failures += 1;
        if (error instanceof ApiError && error.status === 410) {
          await this.relist().catch(() => undefined);
        } else if (idle) {
          this.options.log?.(`watch ${this.options.path}: not open after ${idleMs / 1000}s; retrying`);
        } else {
          this.options.log?.(`watch ${this.options.path} failed (${(error as Error).message}); retrying`);
        }
        await this.sleep(backoffMs(failures));
        if (failures > 1) await this.relist().catch(() => undefined);
      } finally {
        clearInterval(watchdog);
      }
    }
    this.watching = false;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.abort.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  private handleEvent(type: WatchEventType, received: T): void {
    if (received.metadata?.resourceVersion) this.resourceVersion = received.metadata.resourceVersion;
    if (type === "BOOKMARK") return;
    const object = this.transform(received);
    if (type === "DELETED") {
      if (this.remove(key(object))) this.emit("delete", object);
      return;
    }
    this.upsert(object);
  }

  private transform(object: T): T {
    const stripped = stripServerBookkeeping(object);
    // Interned after the informer's own transform: what it drops is not walked.
    return sharedInterner.internAll(this.options.transform ? this.options.transform(stripped) : stripped);
  }

  private upsert(object: T): void {
    const objectKey = key(object);
    const old = this.cache.get(objectKey);
    if (old) for (const index of this.indexes.values()) this.unindexObject(index, objectKey, old);
    this.cache.set(objectKey, object);
    for (const index of this.indexes.values()) this.indexObject(index, objectKey, object);
    if (!old) this.emit("add", object);
    else if (old.metadata?.resourceVersion !== object.metadata?.resourceVersion) this.emit("update", object, old);
  }

  /** Drops an object from the cache and the indexes; returns whether it was cached. */
  private remove(objectKey: string): boolean {
    const old = this.cache.get(objectKey);
    if (!old) return false;
    this.cache.delete(objectKey);
    for (const index of this.indexes.values()) this.unindexObject(index, objectKey, old);
    return true;
  }

  private indexObject(index: Index<T>, objectKey: string, object: T): void {
    for (const value of index.valuesOf(object)) {
      const entry = index.entries.get(value);
      if (entry === undefined || (!(entry instanceof Map) && key(entry) === objectKey)) index.entries.set(value, object);
      else if (entry instanceof Map) entry.set(objectKey, object);
      else index.entries.set(value, new Map([[key(entry), entry], [objectKey, object]]));
    }
  }

  private unindexObject(index: Index<T>, objectKey: string, object: T): void {
    for (const value of index.valuesOf(object)) {
      const entry = index.entries.get(value);
      if (entry instanceof Map) {
        entry.delete(objectKey);
        // Back to the single object once one is left.
        if (entry.size <= 1) {
          const [last] = entry.values();
          if (last === undefined) index.entries.delete(value);
          else index.entries.set(value, last);
        }
      } else if (entry !== undefined && key(entry) === objectKey) {
        index.entries.delete(value);
      }
    }
  }

  private emit(event: "add" | "update" | "delete", object: T, old?: T): void {
    for (const handler of this.handlers) {
      try {
        if (event === "add") handler.add?.(object);
        else if (event === "update") handler.update?.(object, old ?? object);
        else handler.delete?.(object);
      } catch (error) {
        this.options.log?.(`informer handler for ${this.options.path} threw: ${(error as Error).stack ?? error}`);
      }
    }
  }
}
