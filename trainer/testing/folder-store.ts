import { createReadStream } from "node:fs";
import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { Readable } from "node:stream";
import { pathToFileURL } from "node:url";
import { StorageError, type ObjectInfo, type ObjectStore } from "../../storage/object-store.ts";

/**
 * A minimal ObjectStore over a folder, for the trainer's tests only: no atomic writes, no
 * streaming uploads. Production code uses storage/'s stores.
 */
export class TestFolderStore implements ObjectStore {
  readonly uri: string;

  constructor(private readonly root: string) {
    this.uri = pathToFileURL(root).href;
  }

  async get(key: string): Promise<Buffer> {
    try {
      return await readFile(path.join(this.root, key));
    } catch (error) {
      throw this.notFound(key, error);
    }
  }

  async getStream(key: string): Promise<Readable> {
    await this.get(key);
    return createReadStream(path.join(this.root, key));
  }

  async put(key: string, body: Buffer | string | Readable): Promise<void> {
    const file = path.join(this.root, key);
    await mkdir(path.dirname(file), { recursive: true });
    const data = body instanceof Readable ? Buffer.concat(await body.toArray()) : body;
    await writeFile(file, data);
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const info = await stat(path.join(this.root, key)).catch(() => undefined);
    return info?.isFile() ? { key, size: info.size, lastModified: info.mtime } : undefined;
  }

  async *list(prefix = ""): AsyncIterable<ObjectInfo> {
    const entries = await readdir(this.root, { recursive: true, withFileTypes: true });
    const keys = entries
      .filter((entry) => entry.isFile())
      .map((entry) => path.relative(this.root, path.join(entry.parentPath, entry.name)).split(path.sep).join("/"))
      .filter((key) => key.startsWith(prefix))
      .sort();
    for (const key of keys) {
      const info = await this.head(key);
      if (info) yield info;
    }
  }

  async delete(keys: string[]): Promise<void> {
    for (const key of keys) await rm(path.join(this.root, key), { force: true });
  }

  private notFound(key: string, error: unknown): StorageError {
    const code = (error as NodeJS.ErrnoException).code === "ENOENT" ? "NotFound" : "Other";
    return new StorageError(code, `${this.uri}/${key}`, code === "NotFound" ? "not found" : String(error), { cause: error });
  }
}
