import { Readable } from "node:stream";
import { StorageError, type ObjectInfo, type ObjectStore, type StorageErrorCode } from "../../storage/object-store.ts";

/**
 * An ObjectStore held in memory, for tests of the data pipeline, the tokenizer loader and
 * preflight. Besides stored bytes it holds generated objects (a function that makes a fresh
 * stream on each read), so a test can stream a dataset far larger than it ever holds, and
 * failing keys, to exercise how storage errors are reported.
 */
export class MemoryObjectStore implements ObjectStore {
  private readonly objects = new Map<string, { size: number; open: () => Readable }>();
  private readonly failures = new Map<string, StorageErrorCode>();

  constructor(readonly uri = "memory://test") {}

  /** Stores an object made of `chunks`; each read streams them in that order. */
  putChunks(key: string, chunks: readonly Buffer[]): void {
    const size = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    this.objects.set(key, { size, open: () => Readable.from(chunks) });
  }

  /** Stores a JSONL file: objects are written as JSON, strings as they are, one per line. */
  putLines(key: string, lines: readonly unknown[]): void {
    const text = lines.map((line) => (typeof line === "string" ? line : JSON.stringify(line))).join("\n") + "\n";
    this.putChunks(key, [Buffer.from(text, "utf8")]);
  }

  /** Stores an object whose bytes `open` generates afresh on each read; `size` is what head reports. */
  putGenerated(key: string, size: number, open: () => Readable): void {
    this.objects.set(key, { size, open });
  }

  /** Makes every read of `key` fail with a StorageError of `code`. */
  failWith(key: string, code: StorageErrorCode): void {
    this.failures.set(key, code);
  }

  async get(key: string): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of await this.getStream(key)) chunks.push(Buffer.from(chunk as Buffer));
    return Buffer.concat(chunks);
  }

  async getStream(key: string): Promise<Readable> {
    return this.lookup(key).open();
  }

  async put(key: string, body: Buffer | string | Readable): Promise<void> {
    if (typeof body === "string") body = Buffer.from(body, "utf8");
    if (body instanceof Readable) {
      const chunks: Buffer[] = [];
      for await (const chunk of body) chunks.push(Buffer.from(chunk as Buffer));
      body = Buffer.concat(chunks);
    }
    this.putChunks(key, [body]);
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    this.failIfAsked(key);
    const object = this.objects.get(key);
    return object ? { key, size: object.size } : undefined;
  }

  async *list(prefix = ""): AsyncIterable<ObjectInfo> {
    const keys = [...this.objects.keys()].filter((key) => key.startsWith(prefix)).sort();
    for (const key of keys) yield { key, size: this.objects.get(key)?.size ?? 0 };
  }

  async delete(keys: string[]): Promise<void> {
    for (const key of keys) this.objects.delete(key);
  }

  private lookup(key: string): { size: number; open: () => Readable } {
    this.failIfAsked(key);
    const object = this.objects.get(key);
    if (!object) throw new StorageError("NotFound", `${this.uri}/${key}`, "no such object");
    return object;
  }

  private failIfAsked(key: string): void {
    const code = this.failures.get(key);
    if (code) throw new StorageError(code, `${this.uri}/${key}`, `injected ${code} failure`);
  }
}
