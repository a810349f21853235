import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, open, readdir, readFile, rename, rm, rmdir, stat, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { pathToFileURL } from "node:url";
import { StorageError, type ObjectInfo, type ObjectStore } from "./object-store.ts";

/**
 * An object store in a local folder: the embedded default of `kubetune run`.
 * Each put writes a temporary file beside the target, fsyncs it and renames it into place,
 * so a reader sees the old object or the new one, never half of one.
 */
export class LocalObjectStore implements ObjectStore {
  readonly uri: string;

  constructor(readonly root: string) {
    this.root = path.resolve(root);
    this.uri = pathToFileURL(this.root).href;
  }

  async get(key: string): Promise<Buffer> {
    try {
      return await readFile(this.pathOf(key));
    } catch (error) {
      throw this.translate(error, key);
    }
  }

  async getStream(key: string): Promise<Readable> {
    const file = this.pathOf(key);
    try {
      await stat(file);
    } catch (error) {
      throw this.translate(error, key);
    }
    return createReadStream(file);
  }

  async put(key: string, body: Buffer | string | Readable): Promise<void> {
    const file = this.pathOf(key);
    const temporary = `${file}.tmp-${randomBytes(6).toString("hex")}`;
    try {
      await mkdir(path.dirname(file), { recursive: true });
      if (body instanceof Readable) await pipeline(body, createWriteStream(temporary));
      else await writeFile(temporary, body);
      const handle = await open(temporary, "r+");
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temporary, file);
    } catch (error) {
      await rm(temporary, { force: true });
      throw this.translate(error, key);
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const info = await stat(this.pathOf(key));
      return info.isFile() ? { key, size: info.size, lastModified: info.mtime } : undefined;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw this.translate(error, key);
    }
  }

  async *list(prefix = ""): AsyncIterable<ObjectInfo> {
    const keys: ObjectInfo[] = [];
    await this.walk("", keys);
    keys.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    for (const info of keys) if (info.key.startsWith(prefix)) yield info;
  }

  async delete(keys: string[]): Promise<void> {
    for (const key of keys) {
      const file = this.pathOf(key);
      await rm(file, { force: true });
      await this.removeEmptyFolders(path.dirname(file));
    }
  }

  /** Removes `folder` and its parents while they are empty, up to the root: S3 has no empty folders either. */
  private async removeEmptyFolders(folder: string): Promise<void> {
    for (let current = folder; current !== this.root && current.startsWith(this.root + path.sep); current = path.dirname(current)) {
      try {
        await rmdir(current);
      } catch {
        return;
      }
    }
  }

  private async walk(relative: string, into: ObjectInfo[]): Promise<void> {
    let entries;
    try {
      entries = await readdir(path.join(this.root, relative), { withFileTypes: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
      throw this.translate(error, relative);
    }
    for (const entry of entries) {
      const key = relative === "" ? entry.name : `${relative}/${entry.name}`;
      if (entry.isDirectory()) await this.walk(key, into);
      else if (entry.isFile() && !/\.tmp-[0-9a-f]{12}$/.test(entry.name)) {
        const info = await stat(path.join(this.root, key));
        into.push({ key, size: info.size, lastModified: info.mtime });
      }
    }
  }

  private pathOf(key: string): string {
    const file = path.resolve(this.root, key);
    if (file !== this.root && !file.startsWith(this.root + path.sep)) {
      throw new StorageError("InvalidUri", `${this.uri}/${key}`, "key escapes the store's folder");
    }
    return file;
  }

  private translate(error: unknown, key: string): StorageError {
    if (error instanceof StorageError) return error;
    const uri = `${this.uri}/${key}`;
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return new StorageError("NotFound", uri, "no such file", { cause: error });
    if (code === "EACCES" || code === "EPERM") {
      return new StorageError("AccessDenied", uri, "permission denied; check the folder's owner and mode", { cause: error });
    }
    return new StorageError("Other", uri, (error as Error).message, { cause: error });
  }
}
