import type { Readable } from "node:stream";

/** What a store knows about one object. */
export interface ObjectInfo {
  /** Key relative to the store's root, with "/" separators. */
  key: string;
  size: number;
  lastModified?: Date;
  /** The object's version tag where the store has one (S3's ETag): it changes when the object is replaced. */
  etag?: string;
}

/**
 * The one storage interface of kubetune: an S3 bucket prefix or a local folder.
 * Keys are relative to the store's root (the prefix of its URI) and use "/" separators.
 * Errors are StorageError values that say which object failed and what to do.
 */
export interface ObjectStore {
  /** The URI of the store's root, e.g. s3://bucket/prefix or file:///abs/path. */
  readonly uri: string;
  /** The whole object; throws StorageError with code NotFound if it is missing. */
  get(key: string): Promise<Buffer>;
  /** The object as a stream, for objects too large to hold in memory. */
  getStream(key: string): Promise<Readable>;
  /** Writes an object; the write is whole or absent, never partial, for a reader of that key. */
  put(key: string, body: Buffer | string | Readable): Promise<void>;
  /** Size and time of an object, or undefined if it does not exist. */
  head(key: string): Promise<ObjectInfo | undefined>;
  /** Every object whose key starts with prefix, in key order. */
  list(prefix?: string): AsyncIterable<ObjectInfo>;
  /** Deletes the objects; missing keys are not an error. */
  delete(keys: string[]): Promise<void>;
}

export type StorageErrorCode = "NotFound" | "AccessDenied" | "Unavailable" | "InvalidUri" | "Corrupt" | "Other";

/** A storage failure a user can act on: the object's URI, what went wrong and what to do. */
export class StorageError extends Error {
  constructor(
    readonly code: StorageErrorCode,
    readonly uri: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${uri}: ${message}`, options);
    this.name = "StorageError";
  }
}

/** Joins key parts with "/", dropping empty parts and duplicate separators. */
export function joinKey(...parts: string[]): string {
  return parts
    .flatMap((part) => part.split("/"))
    .filter((segment) => segment !== "")
    .join("/");
}
