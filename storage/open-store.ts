import path from "node:path";
import { fileURLToPath } from "node:url";
import { LocalObjectStore } from "./local-store.ts";
import { StorageError, type ObjectStore } from "./object-store.ts";
import { S3ObjectStore, type S3Options } from "./s3-store.ts";

/** A parsed storage location: an S3 bucket and prefix, or a local folder. */
export type StorageLocation = { kind: "s3"; bucket: string; prefix: string } | { kind: "local"; path: string };

/**
 * Parses s3://bucket/prefix, file:///abs/path, or a plain path. A relative plain path
 * resolves against baseDir (the manifest's folder for `kubetune run`).
 */
export function parseLocation(uri: string, baseDir = process.cwd()): StorageLocation {
  if (uri.startsWith("s3://")) {
    const rest = uri.slice("s3://".length);
    const slash = rest.indexOf("/");
    const bucket = slash === -1 ? rest : rest.slice(0, slash);
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
      throw new StorageError("InvalidUri", uri, "not a valid S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)");
    }
    return { kind: "s3", bucket, prefix: slash === -1 ? "" : rest.slice(slash + 1).replace(/\/+$/, "") };
  }
  if (uri.startsWith("file://")) return { kind: "local", path: fileURLToPath(uri) };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(uri)) {
    throw new StorageError("InvalidUri", uri, "unsupported scheme; use s3://, file:// or a path");
  }
  return { kind: "local", path: path.resolve(baseDir, uri) };
}

/** Opens the store rooted at uri. */
export function openStore(uri: string, options: S3Options & { baseDir?: string } = {}): ObjectStore {
  const location = parseLocation(uri, options.baseDir);
  return location.kind === "s3"
    ? new S3ObjectStore(location.bucket, location.prefix, options)
    : new LocalObjectStore(location.path);
}
