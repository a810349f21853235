import { ApiError, type KubeClient, type KubeObject, type WatchEventType } from "./client.ts";

export interface InformerHandlers<T> {
  add?(object: T): void;
  update?(object: T, old: T): void;
  delete?(object: T): void;
}

export interface InformerOptions {
  /** The collection path, e.g. /api/v1/pods or /apis/kubetune.io/v1alpha1/namespaces/ns/finetunejobs. */
  path: string;
  labelSelector?: string;
  fieldSelector?: string;
  /**
   * The server ends each watch after this long and we re-watch from the last resourceVersion.
   * Bounding every watch is the cure for watches that silently stop delivering events.
   */
  watchTimeoutSeconds?: number;
  /** Every this often, every cached object is delivered again as an update (0: never). */
  resyncMs?: number;
  log?: (message: string) => void;
}

/** Exponential backoff from 250 ms to 30 s with full jitter, so that informers that failed together do not retry together. */
function backoffMs(failures: number): number {
  const ceiling = Math.min(30_000, 250 * 2 ** Math.min(failures, 7));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

function key(object: KubeObject): string {
  return `${object.metadata?.namespace ?? ""}/${object.metadata?.name ?? ""}`;
}

/**
 * A list+watch cache of one kind: lists once, then watches from the list's resourceVersion,
 * asks for bookmarks, re-watches from the last resourceVersion when a watch ends, relists on
 * 410 Gone, and backs off between failed attempts. isWatching() feeds the readiness probe.
 */
export class Informer<T extends KubeObject> {
  private readonly cache = new Map<string, T>();
  private readonly handlers: InformerHandlers<T>[] = [];
  private resourceVersion = "";
  private abort = new AbortController();
  private watching = false;
  private synced = false;
  private stopped = false;
  private loop?: Promise<void>;
  private resyncTimer?: NodeJS.Timeout;

  constructor(
    private readonly client: KubeClient,
    private readonly options: InformerOptions,
  ) {}

  on(handlers: InformerHandlers<T>): this {
    this.handlers.push(handlers);
    return this;
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

  /** True while a watch is open or being re-opened after a normal end. */
  isWatching(): boolean {
    return this.watching;
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
      for (const object of page.items) {
        seen.add(key(object));
        this.upsert(object);
      }
      continueToken = page.metadata.continue || undefined;
      resourceVersion = page.metadata.resourceVersion ?? "";
    } while (continueToken);
    for (const [cachedKey, object] of [...this.cache]) {
      if (!seen.has(cachedKey)) {
        this.cache.delete(cachedKey);
        this.emit("delete", object);
      }
    }
    this.resourceVersion = resourceVersion;
  }

  private async watchLoop(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        this.watching = true;
        let gone = false;
        let failed = false;
        await this.client.watch<T & { code?: number; message?: string }>(
          this.options.path,
          {
            resourceVersion: this.resourceVersion,
            allowWatchBookmarks: true,
            timeoutSeconds: this.options.watchTimeoutSeconds ?? 300,
            labelSelector: this.options.labelSelector,
            fieldSelector: this.options.fieldSelector,
          },
          (type, object) => {
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
          this.abort.signal,
        );
        if (gone) await this.relist();
        if (failed) {
          // An error event other than 410 ends the watch at once; re-watching at once would hammer the API server.
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
        } else {
          this.options.log?.(`watch ${this.options.path} failed (${(error as Error).message}); retrying`);
        }
        await this.sleep(backoffMs(failures));
        if (failures > 1) await this.relist().catch(() => undefined);
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

  private handleEvent(type: WatchEventType, object: T): void {
    if (object.metadata?.resourceVersion) this.resourceVersion = object.metadata.resourceVersion;
    if (type === "BOOKMARK") return;
    if (type === "DELETED") {
      const old = this.cache.get(key(object));
      this.cache.delete(key(object));
      if (old) this.emit("delete", object);
      return;
    }
    this.upsert(object);
  }

  private upsert(object: T): void {
    const old = this.cache.get(key(object));
    this.cache.set(key(object), object);
    if (!old) this.emit("add", object);
    else if (old.metadata?.resourceVersion !== object.metadata?.resourceVersion) this.emit("update", object, old);
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
