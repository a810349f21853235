import { randomBytes } from "node:crypto";
import { ApiError, resourcePath, type KubeClient, type KubeObject } from "../../kube/client.ts";

export type EventType = "Normal" | "Warning";

interface CoreEvent {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  count?: number;
  lastTimestamp?: string;
}

export interface EventRecorderOptions {
  /**
   * Event writes in flight at once (different objects; one object's Events are written one at a time, in order).
   * Default 1, as client-go's broadcaster writes them from one goroutine: Events then take the API server's spare
   * capacity rather than competing with the reconciles' writes in a burst of new jobs, and wait (or, past queueLimit,
   * are dropped) instead.
   */
  concurrency?: number;
  /** Events waiting to be written; more are dropped (counted and logged), as client-go's broadcaster drops past 1,000. Default 1000. */
  queueLimit?: number;
  /**
   * While this says true (the operator has a backlog of reconciles), Events wait, each at most maxYieldMs after it
   * was recorded: in a burst of new jobs the pods and status writes, which start training, go first and the Events,
   * which only tell of them, after, where both would otherwise share the API server's capacity. Default: never wait.
   */
  yieldWhile?: () => boolean;
  /** The longest an Event waits on yieldWhile (default 30 s): under load that never lets up, Events still go. */
  maxYieldMs?: number;
}

/** How often Events that yield look again whether the operator is still busy. */
const YIELD_POLL_MS = 200;

/** One recorded occurrence (or several identical ones recorded before it was written), with what it says of its object. */
interface Pending {
  key: string;
  namespace: string;
  involvedObject: Record<string, string | undefined>;
  objectName: string;
  type: EventType;
  reason: string;
  message: string;
  /** Occurrences this write stands for: identical Events recorded while it waited are folded into it. */
  occurrences: number;
  firstAt: Date;
  lastAt: Date;
}

/** How long a repeat of an Event bumps the existing one's count instead of making another (client-go: 10 minutes). */
const REPEAT_WINDOW_MS = 10 * 60_000;
/** Least time between two log lines about dropped Events. */
const DROP_LOG_INTERVAL_MS = 10_000;
/** Events the recorder remembers for count bumps. */
const RECENT_LIMIT = 4096;

/**
 * Records core/v1 Events on an object, as `kubectl describe` shows them. record() queues the
 * Event and returns at once: Events are best effort and never hold a reconcile or a trainer's
 * report behind an API write (client-go's recorder likewise hands them to a broadcaster that
 * writes them from its own goroutine). A background sender writes them (by default one at a
 * time), one object's Events in the order recorded; with yieldWhile, only while the operator's
 * reconciles leave the API server to them (or an Event has waited maxYieldMs). The queue is
 * bounded; when it is full a new Event is dropped and the drops are counted in the log and in
 * kubetune_events_dropped_total, as client-go's broadcaster drops them.
 *
 * A repeat of the same reason and message on the same object within ten minutes bumps the
 * count of the existing Event instead of creating another, as client-go's recorder does; repeats
 * recorded before the first is written are folded into that one write.
 */
export class EventRecorder {
  private readonly recent = new Map<string, { name: string; namespace: string; count: number; at: number }>();
  /** Waiting Events by object (uid), in the order their objects first had one waiting; each object's in recorded order. */
  private readonly waiting = new Map<string, Pending[]>();
  /** Objects with a write in flight: their next Event waits for it. */
  private readonly sending = new Set<string>();
  private queued = 0;
  private readonly concurrency: number;
  private readonly queueLimit: number;
  private readonly yieldWhile?: () => boolean;
  private readonly maxYieldMs: number;
  /** The timer that pumps again while Events yield. */
  private yieldTimer?: NodeJS.Timeout;
  private stopped = false;
  private idleWaiters: (() => void)[] = [];
  /** Events dropped because the queue was full (or recorded after stop()). */
  dropped = 0;
  /** When a drop was last logged, and the drop count it told. */
  private droppedLoggedAt = -Infinity;
  private droppedLogged = 0;

  constructor(
    private readonly client: KubeClient,
    private readonly component: string,
    private readonly log?: (message: string) => void,
    options: EventRecorderOptions = {},
  ) {
    this.concurrency = Math.max(1, options.concurrency ?? 1);
    this.queueLimit = Math.max(1, options.queueLimit ?? 1000);
    this.yieldWhile = options.yieldWhile;
    this.maxYieldMs = options.maxYieldMs ?? 30_000;
  }

  /** Queues an Event on the object and returns at once; it is written in the background (best effort). */
  record(object: KubeObject, type: EventType, reason: string, message: string): void {
    const namespace = object.metadata?.namespace ?? "default";
    const objectKey = object.metadata?.uid ?? `${namespace}/${object.metadata?.name}`;
    // join() makes one flat string; a template literal makes a tree of string pieces (six for this key), which the
    // recent map would keep, message and all, for up to RECENT_LIMIT Events: some 200 bytes more each.
    const key = [objectKey, type, reason, message].join("/");
    const now = new Date();
    const queue = this.waiting.get(objectKey);
    // The same Event still waiting (a burst): one write for all of them, with their count.
    const same = queue?.find((pending) => pending.key === key);
    if (same) {
      same.occurrences += 1;
      same.lastAt = now;
      return;
    }
    if (this.stopped || this.queued >= this.queueLimit) {
      this.dropped += 1;
      // One line per burst of drops (at most one every DROP_LOG_INTERVAL_MS), with the count, not one per Event.
      if (now.getTime() - this.droppedLoggedAt >= DROP_LOG_INTERVAL_MS) {
        const since = this.dropped - this.droppedLogged;
        this.log?.(`the event queue is full (${this.queueLimit} waiting): dropped ${since} Event${since === 1 ? "" : "s"} (${this.dropped} in all), the latest ${type} ${reason} on ${namespace}/${object.metadata?.name}`);
        this.droppedLoggedAt = now.getTime();
        this.droppedLogged = this.dropped;
      }
      return;
    }
    const pending: Pending = {
      key,
      namespace,
      // What the object was when the Event was recorded: the caller may change its copy afterwards.
      involvedObject: {
        apiVersion: object.apiVersion,
        kind: object.kind,
        name: object.metadata?.name,
        namespace,
        uid: object.metadata?.uid,
        resourceVersion: object.metadata?.resourceVersion,
      },
      objectName: object.metadata?.name ?? "",
      type,
      reason,
      message,
      occurrences: 1,
      firstAt: now,
      lastAt: now,
    };
    if (queue) queue.push(pending);
    else this.waiting.set(objectKey, [pending]);
    this.queued += 1;
    this.pump();
  }

  /** Resolves once every Event recorded so far is written (or given up), or after timeoutMs. */
  flush(timeoutMs = 10_000): Promise<void> {
    if (this.queued === 0 && this.sending.size === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      timer.unref();
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.idleWaiters.push(done);
    });
  }

  /** Events waiting to be written or being written. */
  get pending(): number {
    return this.queued + this.sending.size;
  }

  /** Shutdown: refuses new Events, then writes what waits (at most timeoutMs). */
  async stop(timeoutMs = 5_000): Promise<void> {
    this.stopped = true;
    // Drops after this are expected: not logged.
    this.droppedLoggedAt = Infinity;
    // Events that yielded to the reconciles go now.
    this.pump();
    await this.flush(timeoutMs);
    if (this.queued > 0) this.log?.(`event recorder stopped with ${this.queued} Events unwritten`);
  }

  /** Starts writes while there is room, taking the longest-waiting object that has no write in flight. */
  private pump(): void {
    if (this.sending.size >= this.concurrency) return;
    // Shutdown writes what waits at once.
    const yielding = !this.stopped && (this.yieldWhile?.() ?? false);
    const now = Date.now();
    for (const [objectKey, queue] of this.waiting) {
      if (this.sending.size >= this.concurrency) return;
      if (this.sending.has(objectKey)) continue;
      if (yielding && now - queue[0]!.firstAt.getTime() < this.maxYieldMs) {
        // Objects are (nearly) in the order they began to wait, so the rest have waited less: look again in a moment (not at
        // every Event recorded, which would walk the whole queue each time).
        this.yieldTimer ??= setTimeout(() => {
          this.yieldTimer = undefined;
          this.pump();
        }, YIELD_POLL_MS).unref();
        return;
      }
      const pending = queue.shift()!;
      this.queued -= 1;
      if (queue.length === 0) this.waiting.delete(objectKey);
      this.sending.add(objectKey);
      void this.write(pending).finally(() => {
        this.sending.delete(objectKey);
        // An object with more waiting goes to the back of the line: one busy object does not starve the others.
        const rest = this.waiting.get(objectKey);
        if (rest) {
          this.waiting.delete(objectKey);
          this.waiting.set(objectKey, rest);
        }
        this.pump();
        if (this.queued === 0 && this.sending.size === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
      });
    }
  }

  private async write(pending: Pending): Promise<void> {
    const { key, namespace } = pending;
    const lastText = pending.lastAt.toISOString();
    try {
      const previous = this.recent.get(key);
      if (previous && pending.firstAt.getTime() - previous.at < REPEAT_WINDOW_MS) {
        previous.count += pending.occurrences;
        previous.at = pending.lastAt.getTime();
        await this.client.patch<CoreEvent>(resourcePath({ group: "", version: "v1", plural: "events", namespace, name: previous.name }), {
          count: previous.count,
          lastTimestamp: lastText,
        });
        return;
      }
      const name = [pending.objectName, ".", pending.firstAt.getTime().toString(16), randomBytes(2).toString("hex")].join("");
      await this.client.create(resourcePath({ group: "", version: "v1", plural: "events", namespace }), {
        apiVersion: "v1",
        kind: "Event",
        metadata: { name, namespace },
        involvedObject: pending.involvedObject,
        type: pending.type,
        reason: pending.reason,
        message: pending.message.slice(0, 1024),
        source: { component: this.component },
        reportingComponent: this.component,
        reportingInstance: this.component,
        firstTimestamp: pending.firstAt.toISOString(),
        lastTimestamp: lastText,
        count: pending.occurrences,
      });
      this.recent.set(key, { name, namespace, count: pending.occurrences, at: pending.lastAt.getTime() });
      if (this.recent.size > RECENT_LIMIT) this.recent.delete(this.recent.keys().next().value as string);
    } catch (error) {
      // Events are best effort: a failure to write one is logged and forgotten (a 404: its namespace is gone).
      if (!(error instanceof ApiError && error.status === 404)) this.log?.(`event ${pending.reason} on ${namespace}/${pending.objectName}: ${(error as Error).message}`);
      this.recent.delete(key);
    }
  }
}
