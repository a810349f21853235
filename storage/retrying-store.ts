import type { Readable } from "node:stream";
import { StorageError, type ObjectInfo, type ObjectStore } from "./object-store.ts";

export interface RetryPolicy {
  /** How long one operation keeps trying while the store is unavailable, from its first failure. */
  budgetMs: number;
  /** The first wait; each next one doubles, up to maxDelayMs. */
  baseDelayMs: number;
  maxDelayMs: number;
  /** Told of each retry of an operation, with the error, the wait and the retry's number (1 for the first). */
  onRetry?: (error: StorageError, delayMs: number, retry: number) => void;
  /** For tests. */
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
}

/**
 * The trainer's policy: an S3 endpoint restarted, failed over or briefly unreachable costs a
 * few minutes at most, not the attempt. The SDK's own retries (a few attempts within seconds)
 * cover a dropped connection; these cover an outage.
 */
export const TRAINER_RETRY_POLICY: RetryPolicy = { budgetMs: 5 * 60_000, baseDelayMs: 1000, maxDelayMs: 15_000 };

/**
 * A store whose operations are retried with exponential backoff, for a bounded time, while
 * they fail with `Unavailable` (connection refused or reset, timeouts, 5xx). Anything else
 * (NotFound, AccessDenied, Corrupt) fails at once, as it would not change by waiting. What is
 * retried is safe to repeat: reads, deletes, and puts of bytes held in memory (checkpoints,
 * adapters); a put of a stream cannot be replayed and is tried once. A stream already handed
 * out by getStream is not retried when it breaks half way; its opening is.
 */
export class RetryingObjectStore implements ObjectStore {
  readonly uri: string;

  constructor(
    private readonly inner: ObjectStore,
    private readonly policy: RetryPolicy = TRAINER_RETRY_POLICY,
  ) {
    this.uri = inner.uri;
  }

  get(key: string): Promise<Buffer> {
    return this.retry(() => this.inner.get(key));
  }

  getStream(key: string): Promise<Readable> {
    return this.retry(() => this.inner.getStream(key));
  }

  put(key: string, body: Buffer | string | Readable): Promise<void> {
    if (typeof body !== "string" && !Buffer.isBuffer(body)) return this.inner.put(key, body);
    return this.retry(() => this.inner.put(key, body));
  }

  head(key: string): Promise<ObjectInfo | undefined> {
    return this.retry(() => this.inner.head(key));
  }

  /** Lists in full before yielding, so that a listing broken part way is retried from its start, not resumed with a gap. */
  async *list(prefix?: string): AsyncIterable<ObjectInfo> {
    const objects = await this.retry(async () => {
      const all: ObjectInfo[] = [];
      for await (const object of this.inner.list(prefix)) all.push(object);
      return all;
    });
    yield* objects;
  }

  delete(keys: string[]): Promise<void> {
    return this.retry(() => this.inner.delete(keys));
  }

  private async retry<T>(operation: () => Promise<T>): Promise<T> {
    const now = this.policy.now ?? Date.now;
    const sleep = this.policy.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
    let deadline: number | undefined;
    for (let failures = 0; ; failures += 1) {
      try {
        return await operation();
      } catch (error) {
        if (!(error instanceof StorageError) || error.code !== "Unavailable") throw error;
        deadline ??= now() + this.policy.budgetMs;
        const delay = Math.min(this.policy.maxDelayMs, this.policy.baseDelayMs * 2 ** failures);
        if (now() + delay > deadline) {
          throw new StorageError("Unavailable", error.uri, `${error.message.slice(error.uri.length + 2)} (still failing after ${Math.round(this.policy.budgetMs / 1000)}s of retries)`, { cause: error });
        }
        this.policy.onRetry?.(error, delay, failures + 1);
        await sleep(delay);
      }
    }
  }
}
