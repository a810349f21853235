import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import { joinKey, StorageError, type ObjectStore } from "./object-store.ts";

/**
 * Atomic publication of a folder of files (a checkpoint, an adapter) in a store that has no
 * atomic rename, such as S3: every data file is written first and the manifest last. A folder
 * without a manifest is incomplete (a writer died part way) and readers ignore it.
 */
export const MANIFEST_FILE = "manifest.json";

export interface ManifestEntry {
  /** Path relative to the published folder. */
  name: string;
  size: number;
  sha256: string;
}

export interface Manifest {
  /** Format version of the manifest itself. */
  version: 1;
  createdAt: string;
  files: ManifestEntry[];
  /** Caller-defined facts about the folder, e.g. a checkpoint's step. */
  metadata: Record<string, unknown>;
}

export function sha256(data: Buffer | string): string {
  return createHash("sha256").update(data).digest("hex");
}

/**
 * A file too large to hold in memory (a model shard): its bytes, produced chunk by chunk while
 * the store writes them (S3: a multipart upload). `chunks` is called once.
 */
export interface StreamedFile {
  chunks(): AsyncIterable<Buffer>;
}

/** What publish writes for one file: its bytes, or a stream of them. */
export type FileContent = Buffer | string | StreamedFile;

/** Writes files under prefix, then the manifest naming each with its size and sha256. */
export async function publish(
  store: ObjectStore,
  prefix: string,
  files: Record<string, FileContent>,
  metadata: Record<string, unknown> = {},
): Promise<Manifest> {
  const entries: ManifestEntry[] = [];
  for (const [name, data] of Object.entries(files)) {
    if (name === MANIFEST_FILE) throw new Error(`${MANIFEST_FILE} is reserved for the manifest`);
    if (typeof data === "string" || Buffer.isBuffer(data)) {
      await store.put(joinKey(prefix, name), data);
      entries.push({ name, size: Buffer.byteLength(data), sha256: sha256(data) });
    } else {
      entries.push({ name, ...(await putStreamed(store, joinKey(prefix, name), data)) });
    }
  }
  const manifest: Manifest = { version: 1, createdAt: new Date().toISOString(), files: entries, metadata };
  await store.put(joinKey(prefix, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + "\n");
  return manifest;
}

/** Writes a streamed file, hashing and counting its bytes as they pass, so it is read only once. */
async function putStreamed(store: ObjectStore, key: string, file: StreamedFile): Promise<{ size: number; sha256: string }> {
  const hash = createHash("sha256");
  let size = 0;
  async function* counted(): AsyncGenerator<Buffer> {
    for await (const chunk of file.chunks()) {
      hash.update(chunk);
      size += chunk.length;
      yield chunk;
    }
  }
  // A byte stream (not object mode), pulled as the store writes: one chunk is made at a time.
  await store.put(key, Readable.from(counted(), { objectMode: false }));
  return { size, sha256: hash.digest("hex") };
}

/** The manifest of a published folder, or undefined when the folder is incomplete or absent. */
export async function readManifest(store: ObjectStore, prefix: string): Promise<Manifest | undefined> {
  const key = joinKey(prefix, MANIFEST_FILE);
  let raw: Buffer;
  try {
    raw = await store.get(key);
  } catch (error) {
    if (error instanceof StorageError && error.code === "NotFound") return undefined;
    throw error;
  }
  try {
    return JSON.parse(raw.toString("utf8")) as Manifest;
  } catch (error) {
    throw new StorageError("Corrupt", `${store.uri}/${key}`, "manifest is not valid JSON", { cause: error });
  }
}

/** Reads one file of a published folder and checks it against the manifest's sha256. */
export async function readPublishedFile(store: ObjectStore, prefix: string, manifest: Manifest, name: string): Promise<Buffer> {
  const entry = manifest.files.find((file) => file.name === name);
  const key = joinKey(prefix, name);
  if (!entry) throw new StorageError("NotFound", `${store.uri}/${key}`, "not listed in the folder's manifest");
  const data = await store.get(key);
  if (data.length !== entry.size || sha256(data) !== entry.sha256) {
    throw new StorageError("Corrupt", `${store.uri}/${key}`, "content does not match the manifest's sha256; the folder was modified after publication");
  }
  return data;
}
