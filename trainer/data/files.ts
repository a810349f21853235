import { StorageError, joinKey, type ObjectStore } from "../../storage/object-store.ts";

/** The URI a user sees for an object: the store's root URI and the key, e.g. s3://bucket/data/train.jsonl. */
export function objectUri(store: ObjectStore, key: string): string {
  return `${store.uri.replace(/\/+$/, "")}/${key}`;
}

/** File names that hold JSONL datasets when a dataset URI names a folder. */
const DATASET_FILE = /\.jsonl$/;

/**
 * The dataset files named by `keyOrFolder`: the object itself when it exists, else every
 * `*.jsonl` object under it as a folder, in key order. Throws StorageError NotFound when
 * there is neither.
 */
export async function resolveDatasetKeys(store: ObjectStore, keyOrFolder: string): Promise<string[]> {
  const key = joinKey(keyOrFolder);
  if (key !== "" && (await store.head(key))) return [key];
  const keys: string[] = [];
  for await (const info of store.list(key === "" ? "" : `${key}/`)) {
    if (DATASET_FILE.test(info.key)) keys.push(info.key);
  }
  if (keys.length === 0) {
    throw new StorageError("NotFound", objectUri(store, key), "no such object, and no *.jsonl files under it as a folder");
  }
  return keys;
}
